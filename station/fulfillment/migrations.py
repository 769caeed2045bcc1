"""Schema migrations of the fulfillment store: an ordered list of named steps, SQLite and
PostgreSQL alike.

A database remembers which steps it has had (table `schema_migrations`, one row per step name)
and its schema version (`schema_version`: 1 + the number of steps applied; version 1 is the
schema main created before migrations existed). `migrate()` runs in the store's opening
transaction, under a lock (SQLite's `BEGIN IMMEDIATE`; a PostgreSQL advisory lock), so two
stations starting at once never migrate twice:

- a fresh database gets the current tables (`metadata.create_all`) and every step is recorded as
  applied (the tables already have its effect);
- an existing one gets each step it lacks, in list order, then any table it still lacks;
- a database that had a step this code does not know (a newer station migrated it) is refused.

Adding a step (append it in your area's section; never edit, rename or reorder a step that has
shipped, since databases out there remember it by name):

    @step("area: what it does")
    def _what_it_does(conn: Connection) -> None:
        add_column(conn, "items", Column("attempts", Integer, nullable=False, server_default="0"))

and make the same change to the `Table` in store.py, so fresh databases get it too. Steps name
their columns themselves (not store.py's `Table` objects, which will change again later), are
idempotent (`add_column` and `create_table` skip what exists), and may move data with plain
SQLAlchemy Core statements. tests/fulfillment/test_migrations.py checks that a version-1 database
migrated on either backend ends with exactly the columns of a fresh one and keeps its rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.schema import CreateColumn

from station.errors import UsageError

#: the schema version of a database that has no `schema_migrations` table (main before migrations)
BASE_VERSION = 1
#: PostgreSQL advisory lock key held while migrating (any constant shared by all stations)
_PG_LOCK_KEY = 0x5F5E_D0C5


@dataclass(frozen=True)
class Step:
    name: str
    apply: Callable[[Connection], None]


STEPS: list[Step] = []


def step(name: str) -> Callable[[Callable[[Connection], None]], Callable[[Connection], None]]:
    """Register the decorated function as the next migration step, named `name` (unique)."""

    def register(func: Callable[[Connection], None]) -> Callable[[Connection], None]:
        if any(s.name == name for s in STEPS):
            raise ValueError(f"two migration steps are named {name!r}")
        STEPS.append(Step(name, func))
        return func

    return register


def latest_version() -> int:
    """The schema version this code creates and migrates to."""
    return BASE_VERSION + len(STEPS)


# -- helpers for steps ---------------------------------------------------------------------


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


def add_column(conn: Connection, table: str, column: Column) -> None:
    """`ALTER TABLE table ADD COLUMN column` unless the column exists. A NOT NULL column needs a
    `server_default` (existing rows get it)."""
    if column.name in _columns(conn, table):
        return
    if not column.nullable and column.server_default is None:
        raise ValueError(f"{table}.{column.name}: a NOT NULL column added later needs a server_default")
    Table(table, MetaData(), column)  # binds the column to a table so it compiles
    ddl = CreateColumn(column).compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {conn.dialect.identifier_preparer.quote(table)} ADD COLUMN {ddl}")


def create_table(conn: Connection, table: Table) -> None:
    """Create `table` (a Table on a MetaData of the step's own) and its indexes unless it exists."""
    table.create(conn, checkfirst=True)


def add_index(conn: Connection, index: Index) -> None:
    """Create `index` (bound to a Table of the step's own) unless an index of that name exists."""
    table = index.table
    if index.name not in {i["name"] for i in inspect(conn).get_indexes(table.name)}:
        index.create(conn)


# -- the runner ------------------------------------------------------------------------------

_migrations = Table(
    "schema_migrations",
    MetaData(),
    Column("name", String(200), primary_key=True),
    Column("applied", Double, nullable=False),
)


def migrate(conn: Connection, metadata: MetaData, version_table: Table) -> int:
    """Bring the database on `conn` to `latest_version()` (see the module docstring); returns
    the version it had before (0 for a fresh database). Runs inside the caller's transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    existing = set(inspect(conn).get_table_names())
    if version_table.name not in existing:
        metadata.create_all(conn)
        create_table(conn, _migrations)
        _record(conn, [s.name for s in STEPS])
        conn.execute(version_table.insert().values(version=latest_version()))
        return 0
    before = conn.execute(select(version_table.c.version)).scalar()
    if before is None:
        raise UsageError("the database has a schema_version table without a version: it is not a station's")
    create_table(conn, _migrations)
    applied = set(conn.execute(select(_migrations.c.name)).scalars())
    unknown = applied - {s.name for s in STEPS}
    if unknown or before > latest_version():
        raise UsageError(
            f"the database has schema version {before}, newer than this station's {latest_version()}"
            + (f" (steps it does not know: {', '.join(sorted(unknown))})" if unknown else "")
            + ": upgrade this station"
        )
    for s in STEPS:
        if s.name not in applied:
            s.apply(conn)
            _record(conn, [s.name])
    metadata.create_all(conn)  # tables that arrived with no step of their own
    if before != latest_version():
        conn.execute(update(version_table).values(version=latest_version()))
    return before


def _record(conn: Connection, names: list[str]) -> None:
    if names:
        now = time.time()
        conn.execute(_migrations.insert(), [{"name": n, "applied": now} for n in names])


def applied_steps(conn: Connection) -> list[str]:
    """The names of the steps this database has had, in the order they were applied (steps
    recorded at the same instant, as on a fresh database, in list order; unknown ones last)."""
    position = {s.name: i for i, s in enumerate(STEPS)}
    rows = conn.execute(select(_migrations.c.name, _migrations.c.applied)).all()
    return [r.name for r in sorted(rows, key=lambda r: (r.applied, position.get(r.name, len(position)), r.name))]


# ============================================================================ the steps
# Append new steps at the end of your area's section; never edit one that has shipped.

# -- service-ops: the shipment lifecycle (PROTOCOL.md §4) --------------------------------------


@step("service-ops: shipment state, tracking number, search columns")
def _shipment_lifecycle(conn: Connection) -> None:
    """Shipments get an operator-set state (103 shipped, 104 delivered, the error states), a
    tracking number, an `updated` time, and the recipient's names and email as columns (what
    `q` searches), carried over from each stored envelope."""
    for column in (
        Column("state_override", Integer, nullable=True),
        Column("tracking_number", String(64), nullable=True),
        Column("updated", Double, nullable=True),
        Column("recipient_firstname", String(100), nullable=True),
        Column("recipient_lastname", String(100), nullable=True),
        Column("recipient_email", String(254), nullable=True),
    ):
        add_column(conn, "shipments", column)
    shipments = Table(
        "shipments", MetaData(),
        Column("id", String(36), primary_key=True), Column("envelope", Text), Column("created", Double),
        Column("updated", Double), Column("recipient_firstname", String(100)),
        Column("recipient_lastname", String(100)), Column("recipient_email", String(254)),
    )
    rows = conn.execute(select(shipments.c.id, shipments.c.envelope, shipments.c.created)).all()
    for row in rows:
        recipient = json.loads(row.envelope).get("recipient") or {}
        conn.execute(
            update(shipments).where(shipments.c.id == row.id).values(
                updated=row.created,
                recipient_firstname=recipient.get("recipient_firstname"),
                recipient_lastname=recipient.get("recipient_lastname"),
                recipient_email=recipient.get("recipient_email"),
            )
        )
    add_index(conn, Index("shipments_listing", shipments.c.created))


@step("service-ops: station status reports")
def _station_status(conn: Connection) -> None:
    """What each station last reported about itself and its slots (the operator's floor view)."""
    create_table(conn, Table(
        "station_status", MetaData(),
        Column("token_id", Integer, primary_key=True),
        Column("reported_at", Double, nullable=False),
        Column("report", Text, nullable=False),
    ))


# -- station-robust: leases, attempts ----------------------------------------------------------
@step("station-robust: lease generation, first-write time and attempts per item")
def _lease_fencing(conn: Connection) -> None:
    """Lease fencing (a generation per claim, the time a station confirmed its first write to a
    key) and the count of keys that faulted on an item (all NULL on older rows: read as 0)."""
    add_column(conn, "items", Column("lease_generation", Integer, nullable=True))
    add_column(conn, "items", Column("written_at", Double, nullable=True))
    add_column(conn, "items", Column("attempts", Integer, nullable=True))


# -- security: tenants, tokens -------------------------------------------------------------------
@step("security: tenants, token binding, expiry and revocation")
def _tenants_and_token_lifecycle(conn: Connection) -> None:
    """Tenants as rows; a token bound to a tenant, with an expiry and a revocation time (all NULL
    on an older database's tokens: they keep working, unbound to a tenant, without expiry)."""
    create_table(conn, Table(
        "tenants", MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(200), nullable=False, unique=True),
        Column("created", Double, nullable=False),
    ))
    add_column(conn, "tokens", Column("tenant_id", Integer, nullable=True))
    add_column(conn, "tokens", Column("expires", Double, nullable=True))
    add_column(conn, "tokens", Column("revoked", Double, nullable=True))


# -- dir-service: directory-connected provisioning (issue 15) -------------------------------------
@step("directories: configurations, enrollments, audit")
def _directories(conn: Connection) -> None:
    """Directory configurations per tenant (Entra ID / PingOne; the secret and the service's
    response key sealed), the enrollments made through them, and the audit of every directory
    call."""
    from station.fulfillment.directories.tables import define_tables

    for table in define_tables(MetaData()):
        create_table(conn, table)


# -- perf-service: the queue's indexes ----------------------------------------------------------
@step("perf-service: partial indexes for the claim (queued by id, claimed by lease expiry)")
def _claim_indexes(conn: Connection) -> None:
    """The claim's two lookups (the oldest queued item; an expired lease) get partial indexes
    holding only the rows they look for, instead of (state, id) and (state, lease_expires) over
    every item: a claim and a submit no longer add entries to an index of finished items."""
    items = Table("items", MetaData(), Column("id", Integer), Column("state", String(16)),
                  Column("lease_expires", Double))
    for where, index in (("queued", Index("items_queued", items.c.id)),
                         ("claimed", Index("items_claimed_leases", items.c.lease_expires))):
        index.dialect_options["sqlite"]["where"] = text(f"state = '{where}'")
        index.dialect_options["postgresql"]["where"] = text(f"state = '{where}'")
        add_index(conn, index)
    existing = {i["name"] for i in inspect(conn).get_indexes("items")}
    for old in ("items_queue", "items_leases"):
        if old in existing:
            conn.exec_driver_sql(f"DROP INDEX {old}")


# -- dir-polish: one pending enrollment per directory user (issue 15) ----------------------------
@step("directories: one pending enrollment per user")
def _one_pending_enrollment(conn: Connection) -> None:
    """A partial unique index on (config_id, user_id) over pending enrollments, so two
    concurrent enrolls of one user cannot both queue a key. Pending duplicates made before it
    (both keys already queued) are not guessed away: the step stops and names them, for the
    operator to delete one of the shipments (the console's Delete while it is received) and
    mark its enrollment cancelled."""
    from station.fulfillment.directories.tables import ONE_PENDING, define_tables

    enrollments = define_tables(MetaData())[1]
    twice = conn.execute(text(
        "SELECT config_id, user_id, COUNT(*) FROM directory_enrollments WHERE state = 'pending' "
        "GROUP BY config_id, user_id HAVING COUNT(*) > 1")).all()
    if twice:
        named = ", ".join(f"configuration {c} user {u!r} ({n} pending)" for c, u, n in twice)
        raise UsageError(f"directory users with more than one pending enrollment: {named}; cancel all but "
                         "one of their shipments and set those enrollments' state to 'cancelled', then migrate")
    add_index(conn, next(i for i in enrollments.indexes if i.name == ONE_PENDING))

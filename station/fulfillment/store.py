"""The fulfillment queue: shipments, their items, bearer tokens and the audit trail.

SQLAlchemy Core over SQLite (the default: one file, WAL, `BEGIN IMMEDIATE` for every
transaction) or PostgreSQL (`postgresql://…`, driven by psycopg 3; a claim takes its row with
`SELECT … FOR UPDATE SKIP LOCKED`). The schema is created on first start and carries a version.

One queue item is one `shipment_item` of PROTOCOL.md §4: its PIN request JWE and its credential
request JWEs, which stay encrypted here (only a station can open them). Every request JWE's
content digest (`jose.content_digest`: over the decoded bytes of its five parts, so no
re-encoding escapes it) is kept for good, so a replayed JWE is refused at the door even after its
shipment was purged. An item moves queued → claimed → fulfilled | failed; a
claim is a lease, and a lease that expires returns the item to the queue. A shipment's state is
derived from its items. Sealed responses stay until the customer has read them (GET), and a
shipment whose every item was read longer than the retention ago is purged.

Times are seconds since the epoch (`now` parameters exist for tests); nothing secret is stored
in the clear: tokens are kept as SHA-256 hashes, requests and responses are JWEs.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from station.errors import InvalidRequest, UsageError
from station.fulfillment.errors import STALE_LEASE, Conflict, NotFound, ServiceUnavailable
from station.fulfillment.migrations import latest_version, migrate
from station.protocol.jose import content_digest, request_digest
from station.protocol.states import ERROR_STATES, READABLE_STATES, ShipmentState  # noqa: F401 (re-exported)

SCHEMA_VERSION = latest_version()
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
#: An item whose key faulted on this many keys fails with the last key's error (PROTOCOL.md §4).
DEFAULT_MAX_ATTEMPTS = 3
#: An item whose station reported a write is not handed to another station until its lease
#: expired this long ago (the first station may still be writing, cut off from the service).
DEFAULT_WRITE_GRACE_SECONDS = 600.0

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created", Double, nullable=False),
    # issue 17 (migration step "security: tenants, ..."): tenant binding, expiry, revocation
    Column("tenant_id", Integer, nullable=True),
    Column("expires", Double, nullable=True),
    Column("revoked", Double, nullable=True),
)

#: the customers (issue 17): a shipment belongs to a tenant, never to a token's free-text name
tenants = Table(
    "tenants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created", Double, nullable=False),
)

shipments = Table(
    "shipments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(200), nullable=False, index=True),
    Column("envelope", Text, nullable=False),
    Column("created", Double, nullable=False),
    # operator-set state (103, 104, error states) over the state derived from the items
    Column("state_override", Integer, nullable=True),
    Column("tracking_number", String(64), nullable=True),
    Column("updated", Double, nullable=True),
    # what `q` searches, copied from the envelope's recipient
    Column("recipient_firstname", String(100), nullable=True),
    Column("recipient_lastname", String(100), nullable=True),
    Column("recipient_email", String(254), nullable=True),
    Index("shipments_listing", "created"),
)

items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("shipment_id", String(36), ForeignKey("shipments.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("descriptor", Text, nullable=False),
    Column("pin_request", Text, nullable=False),
    Column("credential_requests", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("lease_owner", Integer, nullable=True),
    Column("lease_expires", Double, nullable=True),
    Column("result", Text, nullable=True),
    Column("finished_at", Double, nullable=True),
    Column("read_at", Double, nullable=True),
    # lease fencing and attempts (issue 12; migration step "station-robust: ..."): each claim
    # bumps the generation; a station reports its first write to a key (written_at) before
    # making it; a key's fault counts an attempt
    Column("lease_generation", Integer, nullable=True),
    Column("written_at", Double, nullable=True),
    Column("attempts", Integer, nullable=True),
    # partial indexes matching the claim's predicates (migration step "perf-service: ..."): a
    # claimed or finished item leaves the queue's index, so claims neither scan nor maintain it
    Index("items_queued", "id", sqlite_where=text("state = 'queued'"), postgresql_where=text("state = 'queued'")),
    Index("items_claimed_leases", "lease_expires", sqlite_where=text("state = 'claimed'"),
          postgresql_where=text("state = 'claimed'")),
)

request_digests = Table(
    "request_digests",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("item_id", Integer, nullable=False),
    Column("received", Double, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Double, nullable=False),
    Column("event", String(16), nullable=False),
    Column("item_id", Integer, nullable=False),
    Column("shipment_id", String(36), nullable=False),
    Column("token_id", Integer, nullable=True),
    Column("station", String(200), nullable=True),
    Column("serial_number", String(64), nullable=True),
    Column("outcome", String(64), nullable=True),
)

station_status = Table(
    "station_status",
    metadata,
    Column("token_id", Integer, primary_key=True),
    Column("reported_at", Double, nullable=False),
    Column("report", Text, nullable=False),
)

# issue 15 (migration step "directories: ..."): directory configurations, enrollments, their audit
from station.fulfillment.directories.tables import define_tables as _define_directory_tables  # noqa: E402

directory_configs, directory_enrollments, directory_audit = _define_directory_tables(metadata)


class Role(str, enum.Enum):
    """Who a bearer token speaks for."""

    CUSTOMER = "customer"
    STATION = "station"
    OPERATOR = "operator"


class ItemState(str, enum.Enum):
    """Where one shipment item stands in the queue."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    FULFILLED = "fulfilled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (ItemState.FULFILLED, ItemState.FAILED)


def derive_state(states: Sequence[ItemState]) -> ShipmentState:
    """A shipment's state from its items (before any operator's move): every item finished →
    102 (8 if one failed); any item claimed or finished → 101; otherwise 100."""
    if states and all(s.finished for s in states):
        return ShipmentState.PROCESSING_ERROR if ItemState.FAILED in states else ShipmentState.PROGRAMMED
    if any(s is not ItemState.QUEUED for s in states):
        return ShipmentState.IN_FULFILLMENT
    return ShipmentState.RECEIVED


#: a carrier's tracking number as the service keeps it
TRACKING_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 -]{0,63}")

#: what an operator may set, and from which states (`Store.set_state`). The error states of
#: before shipping stop an unprogrammed item too (it fails as `invalid_request`).
OPERATOR_TRANSITIONS: dict[ShipmentState, frozenset[ShipmentState]] = {
    ShipmentState.SHIPPED: frozenset({ShipmentState.PROGRAMMED}),
    ShipmentState.DELIVERED: frozenset({ShipmentState.SHIPPED}),
    ShipmentState.INCOMPLETE_REQUEST: frozenset({ShipmentState.RECEIVED, ShipmentState.PROGRAMMED}),
    ShipmentState.INCOMPLETE: frozenset({ShipmentState.RECEIVED, ShipmentState.PROGRAMMED}),
    ShipmentState.ADDRESS_UNDELIVERABLE: frozenset({ShipmentState.RECEIVED, ShipmentState.PROGRAMMED}),
    ShipmentState.DENIED_PARTY: frozenset({ShipmentState.RECEIVED, ShipmentState.PROGRAMMED}),
    ShipmentState.SHIPPING_ERROR: frozenset({ShipmentState.PROGRAMMED, ShipmentState.SHIPPED}),
    ShipmentState.LOST: frozenset({ShipmentState.SHIPPED}),
    ShipmentState.DELIVERY_EXCEPTION: frozenset({ShipmentState.SHIPPED}),
}


class AuditEvent(str, enum.Enum):
    """What the audit table records about an item (never a secret)."""

    CLAIMED = "claimed"
    EXPIRED = "expired"
    RELEASED = "released"
    FULFILLED = "fulfilled"
    FAILED = "failed"
    ON_SLOT = "on_slot"  # a station reported the item in one of its slots (outcome "slot N")
    EDITED = "edited"  # the customer changed recipient, address or delivery type
    DELETED = "deleted"  # the customer deleted the shipment (its rows and JWEs are purged)
    STATE = "state"  # an operator set the shipment's state (outcome: the state id)


@dataclass(frozen=True)
class Principal:
    """The holder of a bearer token: its row id, role, name (the token's label, a station's name
    in the audit) and tenant. A customer's shipments belong to its `owner`: its tenant
    (`tenant:<id>`), or, for a token made before tenants existed, its name as before."""

    id: int
    role: Role
    name: str
    tenant_id: int | None = None

    @property
    def owner(self) -> str:
        return f"tenant:{self.tenant_id}" if self.tenant_id is not None else self.name


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    created: float


@dataclass(frozen=True)
class TokenInfo:
    """A token as `station tokens list` shows it (never the token itself: only its hash is kept)."""

    id: int
    role: Role
    name: str
    tenant_id: int | None
    tenant: str | None
    created: float
    expires: float | None
    revoked: float | None

    def status(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class NewItem:
    """One `shipment_item` as posted: its descriptive members and its request JWEs."""

    descriptor: dict[str, Any]
    pin_request: str
    credential_requests: list[str]

    @property
    def jwes(self) -> list[str]:
        return [self.pin_request, *self.credential_requests]


@dataclass(frozen=True)
class ItemView:
    """One item as its customer sees it: `result` is a ProductData or an ItemError dict."""

    id: int
    position: int
    descriptor: dict[str, Any]
    state: ItemState
    result: dict[str, Any] | None


@dataclass(frozen=True)
class Shipment:
    """A shipment with its items, in the order they were posted."""

    id: str
    owner: str
    envelope: dict[str, Any]
    created: float
    items: list[ItemView] = field(default_factory=list)
    state_override: int | None = None
    tracking_number: str | None = None
    updated: float | None = None

    @property
    def state(self) -> ShipmentState:
        if self.state_override is not None:
            return ShipmentState(self.state_override)
        return derive_state([item.state for item in self.items])


@dataclass(frozen=True)
class ShipmentSummary:
    """One row of a shipment listing (no JWE)."""

    id: str
    owner: str
    envelope: dict[str, Any]
    created: float
    updated: float | None
    state: ShipmentState
    tracking_number: str | None


@dataclass(frozen=True)
class ShipmentPage:
    shipments: list[ShipmentSummary]
    total: int


@dataclass(frozen=True)
class Claim:
    """An item leased to a station until `lease_expires`."""

    item_id: int
    shipment_id: str
    pin_request: str
    credential_requests: list[str]
    lease_expires: float
    #: this claim's fencing token: every later call about the item names it
    generation: int = 1
    #: keys that already faulted on this item
    attempts: int = 0


@dataclass(frozen=True)
class ItemRelease:
    """The outcome of a release: back in the queue, or failed after too many keys faulted."""

    state: "ItemState"
    attempts: int


@dataclass(frozen=True)
class AuditRecord:
    at: float
    event: AuditEvent
    item_id: int
    shipment_id: str
    station: str | None
    serial_number: str | None
    outcome: str | None


@dataclass(frozen=True)
class FailedItem:
    """A failed item for the operator: its error and its audit trail (the keys tried)."""

    item_id: int
    shipment_id: str
    owner: str
    error_code: str
    error_message: str
    finished_at: float | None
    attempts: list[AuditRecord]


@dataclass(frozen=True)
class StationView:
    """A station as the operator sees it: its last status report (slots) and activity."""

    token_id: int
    name: str
    reported_at: float | None
    report: dict[str, Any] | None
    last_activity: float | None
    leases: int


class ReplayedRequest(InvalidRequest):
    """A request JWE whose digest the service has already received (PROTOCOL.md §5)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _search_columns(envelope: dict[str, Any]) -> dict[str, Any]:
    """The recipient's names and email, kept as columns for `q` (PROTOCOL.md §4 listing)."""
    recipient = envelope.get("recipient") or {}
    return {name: recipient.get(name) for name in
            ("recipient_firstname", "recipient_lastname", "recipient_email")}


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """A database that cannot be reached is ServiceUnavailable (503), which callers retry."""
    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[:1] or [exc.orig.__class__.__name__]
        raise ServiceUnavailable(f"database unavailable: {reason[0]}") from exc


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def default_db_url() -> str:
    """`$STATION_DB`, else a SQLite file `./var/station.db`."""
    return os.environ.get("STATION_DB") or f"sqlite:///{Path('var/station.db').resolve()}"


def _make_engine(url: str, *, pool_size: int) -> Engine:
    """An engine for `sqlite:///FILE` or `postgresql://…` (rewritten to psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(f"--db {url!r} is not a database URL") from exc
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        # No pre-ping: it costs a round trip per transaction. After a server restart the first
        # statement on a dead connection fails (ServiceUnavailable, which callers retry) and
        # SQLAlchemy invalidates the whole pool, so the retry gets a fresh connection.
        return create_engine(parsed, pool_size=pool_size, max_overflow=pool_size)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        raise UsageError(f"--db must be sqlite:///FILE or postgresql://…, not {url!r}")
    _private_database_file(Path(parsed.database))
    engine = create_engine(
        parsed.set(drivername="sqlite+pysqlite"),
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _private_database_file(path: Path) -> None:
    """The SQLite file (recipient PII, JWEs, token hashes) is 0600 before SQLite opens it, so its
    -wal, -shm and -journal files, which SQLite creates with the database's own mode, are 0600
    too; a folder the store creates is 0700, and a looser existing one is named in a warning."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    elif folder.stat().st_mode & 0o077:
        logging.getLogger(__name__).warning(
            "the database folder %s is open to other users: chmod 0700 %s (or give the database a folder of its own)",
            folder, folder)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    for companion in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        if companion.exists() and companion.stat().st_mode & 0o077:
            os.chmod(companion, 0o600)


def _sqlite_connect(dbapi_connection, _record) -> None:
    """WAL, full fsync on commit (a sealed response survives power loss), our own BEGIN."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """Every transaction takes the write lock up front, so two claims never race."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


#: PostgreSQL: claim the oldest queued item in one statement (pick with SKIP LOCKED, lease it,
#: audit it, return it): one round trip instead of four.
_PG_CLAIM_QUEUED = text("""
WITH next AS (
    SELECT id FROM items WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE items SET state = 'claimed', lease_owner = :station_id, lease_expires = :expires,
                     lease_generation = COALESCE(items.lease_generation, 0) + 1, written_at = NULL
    FROM next WHERE items.id = next.id
    RETURNING items.id, items.shipment_id, items.pin_request, items.credential_requests,
              items.lease_generation, items.attempts
), audited AS (
    INSERT INTO audit (at, event, item_id, shipment_id, token_id, station)
    SELECT :now, 'claimed', leased.id, leased.shipment_id, :station_id, :station_name FROM leased
)
SELECT id, shipment_id, pin_request, credential_requests, lease_generation, attempts FROM leased
""")

#: PostgreSQL: finish an item this station holds, with its audit record, in one statement. No
#: row back means the item is not simply held (finished already, or another's): the full checks run.
_PG_SUBMIT_HELD = text("""
WITH finished AS (
    UPDATE items SET state = :state, result = :result, finished_at = :now, lease_expires = NULL
    WHERE id = :item_id AND state = 'claimed' AND lease_owner = :station_id
      AND (CAST(:generation AS INTEGER) IS NULL OR lease_generation = :generation)
    RETURNING id, shipment_id
), audited AS (
    INSERT INTO audit (at, event, item_id, shipment_id, token_id, station, serial_number, outcome)
    SELECT :now, :event, finished.id, finished.shipment_id, :station_id, :station_name, :serial, :outcome
    FROM finished
)
SELECT id FROM finished
""")

def _dbapi_sql(statement) -> str:
    """A `text()` statement in psycopg's own parameter style (`:name` → `%(name)s`), for the
    hot path that runs on the pooled DBAPI connection directly (`Store._pg_one_row`)."""
    return re.sub(r"(?<!:):(\w+)", r"%(\1)s", statement.text)


_PG_CLAIM_QUEUED_SQL = _dbapi_sql(_PG_CLAIM_QUEUED)
_PG_SUBMIT_HELD_SQL = _dbapi_sql(_PG_SUBMIT_HELD)

#: How often (seconds of `now`) one Store looks for expired leases before claiming from the queue.
EXPIRED_PROBE_SECONDS = 1.0


class Store:
    """The queue and its tables. Open with `Store.open(url)`; every method is one transaction."""

    def __init__(self, engine: Engine, *, retention_seconds: float, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 write_grace_seconds: float = DEFAULT_WRITE_GRACE_SECONDS) -> None:
        self.engine = engine
        self.retention_seconds = retention_seconds
        self.max_attempts = max_attempts
        self.write_grace_seconds = write_grace_seconds
        self._postgresql = engine.dialect.name == "postgresql"
        #: SQLite: this process's write transactions queue here and wake when the one before
        #: commits; without it they meet at BEGIN IMMEDIATE and SQLite's busy handler sleeps
        #: 1, 2, 5 ... 100 ms between tries (8 slots' claims: up to 265 ms for 4 ms of work)
        self._writer = nullcontext() if self._postgresql else threading.RLock()
        self._last_expired_probe: float | None = None
        #: the one-statement fast paths are atomic on their own: no BEGIN/COMMIT round trips.
        #: Their own pool of connections that stay in autocommit (no isolation level set and
        #: reset per checkout), spoken to through the DBAPI (psycopg prepares a statement on its
        #: connection from its 5th execution on): a claim or a submit is one round trip.
        self._autocommit = (create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=engine.pool.size(),
                                          max_overflow=engine.pool._max_overflow)
                            if self._postgresql else None)

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        pool_size: int = 20,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        write_grace_seconds: float = DEFAULT_WRITE_GRACE_SECONDS,
    ) -> Store:
        """Connect to `url` (default `default_db_url()`) and create the schema on first start."""
        if max_attempts < 1:
            raise UsageError("--max-attempts must be at least 1")
        store = cls(_make_engine(url or default_db_url(), pool_size=pool_size),
                    retention_seconds=retention_seconds, max_attempts=max_attempts,
                    write_grace_seconds=write_grace_seconds)
        store._create_schema()
        return store

    def close(self) -> None:
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()

    def _pg_one_row(self, sql: str, params: dict[str, Any]) -> tuple | None:
        """Run one self-contained statement (PostgreSQL, autocommit) on a pooled DBAPI connection
        and return its first row. A connection the server dropped is ServiceUnavailable (503),
        and the whole pool is let go so the caller's retry connects afresh (as SQLAlchemy does)."""
        import psycopg

        conn = self._autocommit.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.execute(sql, params)
            row = cursor.fetchone()
            cursor.close()
            return row
        except psycopg.OperationalError as exc:
            conn.invalidate()
            self._autocommit.dispose()
            reason = str(exc).strip().splitlines()[:1] or [exc.__class__.__name__]
            raise ServiceUnavailable(f"database unavailable: {reason[0]}") from exc
        finally:
            conn.close()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._writer, _unavailable_as_503(), self.engine.begin() as conn:
            yield conn

    def _create_schema(self) -> None:
        """Create the schema on first start, or migrate an older one (migrations.py)."""
        with self._tx() as conn:
            migrate(conn, metadata, schema_version)

    # -- tenants and tokens ------------------------------------------------------------------
    def create_tenant(self, name: str, *, now: float | None = None) -> Tenant:
        """A new tenant (a customer); names are unique."""
        name = name.strip()
        if not name:
            raise UsageError("a tenant needs a non-empty name")
        now = _now(now)
        try:
            with self._tx() as conn:
                tenant_id = conn.execute(
                    insert(tenants).values(name=name, created=now).returning(tenants.c.id)
                ).scalar_one()
        except IntegrityError:
            raise UsageError(f"a tenant named {name!r} exists already (station tenants list)") from None
        return Tenant(tenant_id, name, now)

    def list_tenants(self) -> list[Tenant]:
        with self._tx() as conn:
            rows = conn.execute(select(tenants).order_by(tenants.c.id)).all()
        return [Tenant(r.id, r.name, r.created) for r in rows]

    def create_token(self, role: Role | str, name: str, *, tenant_id: int | None = None,
                     expires: float | None = None, now: float | None = None) -> str:
        """A new bearer token for `name` (its label), bound to `tenant_id` (which must exist), valid
        until `expires` (seconds since the epoch; None: no expiry). Only its SHA-256 hash is
        stored, so print it once."""
        role = Role(role)
        if not name.strip():
            raise UsageError("a token needs a non-empty --name")
        token = secrets.token_urlsafe(32)
        with self._tx() as conn:
            if tenant_id is not None and conn.execute(
                    select(tenants.c.id).where(tenants.c.id == tenant_id)).first() is None:
                raise UsageError(f"no tenant {tenant_id}: station tenants add NAME, then use its id")
            conn.execute(
                insert(tokens).values(
                    token_hash=hash_token(token), role=role.value, name=name, created=_now(now),
                    tenant_id=tenant_id, expires=expires,
                )
            )
        return token

    def authenticate(self, token: str, *, now: float | None = None) -> Principal | None:
        """The principal holding `token`, or None for an unknown, expired or revoked token."""
        now = _now(now)
        with self._tx() as conn:
            row = conn.execute(
                select(tokens.c.id, tokens.c.role, tokens.c.name, tokens.c.tenant_id).where(
                    tokens.c.token_hash == hash_token(token),
                    tokens.c.revoked.is_(None),
                    tokens.c.expires.is_(None) | (tokens.c.expires > now),
                )
            ).first()
        return None if row is None else Principal(row.id, Role(row.role), row.name, row.tenant_id)

    def list_tokens(self) -> list[TokenInfo]:
        """Every token (id, role, label, tenant, dates), oldest first."""
        query = (select(tokens.c.id, tokens.c.role, tokens.c.name, tokens.c.tenant_id, tenants.c.name.label("tenant"),
                        tokens.c.created, tokens.c.expires, tokens.c.revoked)
                 .select_from(tokens.outerjoin(tenants, tenants.c.id == tokens.c.tenant_id))
                 .order_by(tokens.c.id))
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [TokenInfo(r.id, Role(r.role), r.name, r.tenant_id, r.tenant, r.created, r.expires, r.revoked)
                for r in rows]

    def revoke_token(self, token_id: int, *, now: float | None = None) -> None:
        """Revoke token `token_id`: from now on it authenticates nothing (UsageError if unknown)."""
        with self._tx() as conn:
            done = conn.execute(
                update(tokens).where(tokens.c.id == token_id, tokens.c.revoked.is_(None)).values(revoked=_now(now))
            )
            if done.rowcount == 0 and conn.execute(
                    select(tokens.c.id).where(tokens.c.id == token_id)).first() is None:
                raise UsageError(f"no token {token_id} (station tokens list)")

    # -- customer side -------------------------------------------------------------------------
    def create_shipment(
        self,
        owner: str,
        envelope: dict[str, Any],
        new_items: Sequence[NewItem],
        *,
        now: float | None = None,
    ) -> str:
        """Queue a shipment's items; refuses (ReplayedRequest) any request JWE seen before."""
        now = _now(now)
        shipment_id = str(uuid.uuid4())
        digests = [[content_digest(jwe) for jwe in item.jwes] for item in new_items]
        flat = [d for ds in digests for d in ds]
        if len(set(flat)) != len(flat):
            raise ReplayedRequest("the same request JWE appears twice in this shipment")
        # rows written before the replay key became the content digest hold the string's digest
        legacy = [request_digest(jwe) for item in new_items for jwe in item.jwes]
        try:
            with self._tx() as conn:
                self._refuse_known(conn, flat + legacy)
                conn.execute(
                    insert(shipments).values(
                        id=shipment_id, owner=owner, envelope=json.dumps(envelope), created=now,
                        updated=now, **_search_columns(envelope),
                    )
                )
                for position, (item, item_digests) in enumerate(zip(new_items, digests)):
                    item_id = self._insert_item(conn, shipment_id, position, item)
                    conn.execute(
                        insert(request_digests),
                        [{"digest": d, "item_id": item_id, "received": now} for d in item_digests],
                    )
        except IntegrityError as exc:  # a concurrent POST of the same JWE won the race
            raise ReplayedRequest("a request JWE of this shipment was already received") from exc
        return shipment_id

    @staticmethod
    def _refuse_known(conn: Connection, digests: list[str]) -> None:
        known = conn.execute(
            select(request_digests.c.digest).where(request_digests.c.digest.in_(digests))
        ).first()
        if known is not None:
            raise ReplayedRequest(f"a request JWE of the same content ({known.digest}) was already received")

    @staticmethod
    def _insert_item(conn: Connection, shipment_id: str, position: int, item: NewItem) -> int:
        return conn.execute(
            insert(items)
            .values(
                shipment_id=shipment_id,
                position=position,
                descriptor=json.dumps(item.descriptor),
                pin_request=item.pin_request,
                credential_requests=json.dumps(item.credential_requests),
                state=ItemState.QUEUED.value,
            )
            .returning(items.c.id)
        ).scalar_one()

    def get_shipment(self, owner: str, shipment_id: str, *, now: float | None = None) -> Shipment:
        """`owner`'s shipment (NotFound for another's); marks its finished items as read."""
        now = _now(now)
        with self._tx() as conn:
            row = conn.execute(
                select(shipments).where(shipments.c.id == shipment_id, shipments.c.owner == owner)
            ).first()
            if row is None:
                raise NotFound(f"no shipment {shipment_id}")
            conn.execute(
                update(items)
                .where(
                    items.c.shipment_id == shipment_id,
                    items.c.state.in_([ItemState.FULFILLED.value, ItemState.FAILED.value]),
                    items.c.read_at.is_(None),
                )
                .values(read_at=now)
            )
            rows = self._item_rows(conn, shipment_id)
        return _shipment(row, rows, lambda result: None if result is None else json.loads(result))

    @staticmethod
    def _item_rows(conn: Connection, shipment_id: str):
        return conn.execute(
            select(items.c.id, items.c.position, items.c.descriptor, items.c.state, items.c.result)
            .where(items.c.shipment_id == shipment_id)
            .order_by(items.c.position)
        ).all()

    def list_shipments(self, owner: str | None, *, limit: int = 100, offset: int = 0,
                       state: int | None = None, q: str | None = None) -> ShipmentPage:
        """`owner`'s shipments (every tenant's for None: the operator), newest first, filtered by
        state and by `q` (a substring of the id, the recipient's names or email, any case)."""
        state_col = _shipment_state_column()
        where = []
        if owner is not None:
            where.append(shipments.c.owner == owner)
        if state is not None:
            where.append(state_col == int(state))
        if q:
            pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(or_(*(func.lower(c).like(pattern, escape="\\") for c in (
                shipments.c.id, shipments.c.recipient_firstname, shipments.c.recipient_lastname,
                shipments.c.recipient_email,
                shipments.c.recipient_firstname + " " + shipments.c.recipient_lastname))))
        base = select(shipments, state_col.label("derived_state")).select_from(_with_item_counts())
        for clause in where:
            base = base.where(clause)
        with self._tx() as conn:
            total = conn.execute(select(func.count()).select_from(base.subquery())).scalar_one()
            rows = conn.execute(
                base.order_by(shipments.c.created.desc(), shipments.c.id).limit(limit).offset(offset)
            ).all()
        return ShipmentPage(
            shipments=[ShipmentSummary(r.id, r.owner, json.loads(r.envelope), r.created, r.updated,
                                       ShipmentState(r.derived_state), r.tracking_number) for r in rows],
            total=total,
        )

    def _editable(self, conn: Connection, owner: str | None, shipment_id: str):
        """The shipment row, with its items locked, if it is still 100; else NotFound/Conflict."""
        query = select(shipments).where(shipments.c.id == shipment_id)
        if owner is not None:
            query = query.where(shipments.c.owner == owner)
        row = conn.execute(query.with_for_update()).first()
        if row is None:
            raise NotFound(f"no shipment {shipment_id}")
        states = conn.execute(
            select(items.c.id, items.c.state).where(items.c.shipment_id == shipment_id)
            .order_by(items.c.position).with_for_update()
        ).all()
        state = (ShipmentState(row.state_override) if row.state_override is not None
                 else derive_state([ItemState(r.state) for r in states]))
        if state is not ShipmentState.RECEIVED:
            raise Conflict(
                f"shipment {shipment_id} is in state {int(state)} ({state.meaning}): it can no longer be "
                "changed or deleted", code="shipment_locked",
                error_data={"shipment_state_id": int(state)},
            )
        return row, [r.id for r in states]

    def update_shipment(self, owner: str | None, shipment_id: str, changes: dict[str, Any], *,
                        actor: Principal | None = None, now: float | None = None) -> Shipment:
        """Replace the given envelope members (recipient, mailing_address, delivery_type) of a
        shipment still in state 100 (Conflict `shipment_locked` after)."""
        now = _now(now)
        with self._tx() as conn:
            row, item_ids = self._editable(conn, owner, shipment_id)
            envelope = json.loads(row.envelope) | changes
            conn.execute(
                update(shipments).where(shipments.c.id == shipment_id)
                .values(envelope=json.dumps(envelope), updated=now, **_search_columns(envelope))
            )
            if item_ids:
                self._audit(conn, now, AuditEvent.EDITED, item_ids[0], shipment_id,
                            token_id=actor.id if actor else None, outcome=",".join(sorted(changes)))
        if owner is None:
            return self.shipment_for_operator(shipment_id)
        return self.get_shipment(owner, shipment_id, now=now)

    def delete_shipment(self, owner: str | None, shipment_id: str, *, actor: Principal | None = None,
                        now: float | None = None) -> None:
        """Purge a shipment still in state 100, its request JWEs included; it then answers 404.
        Its request digests stay, so the same JWEs are still refused as replays."""
        now = _now(now)
        with self._tx() as conn:
            _row, item_ids = self._editable(conn, owner, shipment_id)
            conn.execute(sql_delete(items).where(items.c.shipment_id == shipment_id))
            conn.execute(sql_delete(shipments).where(shipments.c.id == shipment_id))
            if item_ids:
                self._audit(conn, now, AuditEvent.DELETED, item_ids[0], shipment_id,
                            token_id=actor.id if actor else None)

    def set_state(self, shipment_id: str, state: ShipmentState | int, *, tracking_number: str | None = None,
                  actor: Principal | None = None, now: float | None = None) -> Shipment:
        """An operator's move (OPERATOR_TRANSITIONS): 103 needs a tracking number; an error state
        set before a station took the item fails it, so no station programs it."""
        now = _now(now)
        target = ShipmentState(state)
        allowed = OPERATOR_TRANSITIONS.get(target)
        if allowed is None:
            raise InvalidRequest(f"an operator cannot set state {int(target)} ({target.meaning})")
        if target is ShipmentState.SHIPPED and not (tracking_number or "").strip():
            raise InvalidRequest("a shipped shipment needs its tracking number")
        if tracking_number is not None and not TRACKING_NUMBER.fullmatch(tracking_number.strip()):
            raise InvalidRequest("a tracking number is 1 to 64 letters, digits, spaces or dashes")
        with self._tx() as conn:
            row = conn.execute(select(shipments).where(shipments.c.id == shipment_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"no shipment {shipment_id}")
            item_rows = conn.execute(
                select(items.c.id, items.c.state, items.c.result).where(items.c.shipment_id == shipment_id)
                .order_by(items.c.position).with_for_update()
            ).all()
            current = (ShipmentState(row.state_override) if row.state_override is not None
                       else derive_state([ItemState(r.state) for r in item_rows]))
            _refuse_shipping_unregistered(shipment_id, target, item_rows)
            if current not in allowed:
                raise Conflict(
                    f"shipment {shipment_id} is {int(current)} ({current.meaning}): state {int(target)} "
                    f"({target.meaning}) can follow only {', '.join(str(int(a)) for a in sorted(allowed))}",
                    code="invalid_transition", error_data={"shipment_state_id": int(current)},
                )
            if current is ShipmentState.RECEIVED:
                stopped = _canonical({"error_code": "invalid_request",
                                      "error_message": f"stopped by an operator: {target.meaning}"})
                conn.execute(update(items).where(items.c.shipment_id == shipment_id)
                             .values(state=ItemState.FAILED.value, result=stopped, finished_at=now))
            values: dict[str, Any] = {"state_override": int(target), "updated": now}
            if tracking_number is not None and target is ShipmentState.SHIPPED:
                values["tracking_number"] = tracking_number.strip()
            conn.execute(update(shipments).where(shipments.c.id == shipment_id).values(**values))
            if item_rows:
                self._audit(conn, now, AuditEvent.STATE, item_rows[0].id, shipment_id,
                            token_id=actor.id if actor else None, outcome=str(int(target)),
                            serial_number=None)
        return self.shipment_for_operator(shipment_id)

    # -- operator views (never a request or response JWE) ----------------------------------------
    def shipment_for_operator(self, shipment_id: str) -> Shipment:
        """Any tenant's shipment, its items' results stripped of every JWE (serial and firmware
        stay); reading it does not count as the customer's read."""
        with self._tx() as conn:
            row = conn.execute(select(shipments).where(shipments.c.id == shipment_id)).first()
            if row is None:
                raise NotFound(f"no shipment {shipment_id}")
            rows = self._item_rows(conn, shipment_id)
        return _shipment(row, rows, _without_jwes)

    def shipment_audit(self, shipment_id: str) -> list[AuditRecord]:
        """The audit records of one shipment, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(select(audit).where(audit.c.shipment_id == shipment_id).order_by(audit.c.id)).all()
        return [_audit_record(r) for r in rows]

    def recent_audit(self, *, limit: int = 100, offset: int = 0, event: str | None = None) -> tuple[list[AuditRecord], int]:
        """The newest audit records first (of one event kind if given), and how many there are."""
        query = select(audit)
        if event:
            query = query.where(audit.c.event == event)
        with self._tx() as conn:
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            rows = conn.execute(query.order_by(audit.c.id.desc()).limit(limit).offset(offset)).all()
        return [_audit_record(r) for r in rows], total

    def failed_items(self, *, limit: int = 100) -> list[FailedItem]:
        """Items that failed, newest first, with their error and the keys that were tried."""
        query = (
            select(items.c.id, items.c.shipment_id, items.c.result, items.c.finished_at, shipments.c.owner,
                   shipments.c.state_override)
            .join(shipments, shipments.c.id == items.c.shipment_id)
            .where(items.c.state == ItemState.FAILED.value)
            .order_by(items.c.finished_at.desc(), items.c.id.desc()).limit(limit)
        )
        with self._tx() as conn:
            rows = conn.execute(query).all()
            ids = [r.id for r in rows]
            trail = conn.execute(select(audit).where(audit.c.item_id.in_(ids)).order_by(audit.c.id)).all() if ids else []
        by_item: dict[int, list[AuditRecord]] = {}
        for r in trail:
            by_item.setdefault(r.item_id, []).append(_audit_record(r))
        out = []
        for r in rows:
            error = json.loads(r.result) if r.result else {}
            out.append(FailedItem(item_id=r.id, shipment_id=r.shipment_id, owner=r.owner,
                                  error_code=str(error.get("error_code")), error_message=str(error.get("error_message", "")),
                                  finished_at=r.finished_at, attempts=by_item.get(r.id, [])))
        return out

    def tenant_counts(self) -> dict[str, dict[int, int]]:
        """Per tenant (shipment owner), how many shipments are in each state."""
        state_col = _shipment_state_column()
        query = (select(shipments.c.owner, state_col.label("state"), func.count().label("n"))
                 .select_from(_with_item_counts()).group_by(shipments.c.owner, state_col))
        with self._tx() as conn:
            rows = conn.execute(query).all()
        counts: dict[str, dict[int, int]] = {}
        for r in rows:
            counts.setdefault(r.owner, {})[int(r.state)] = r.n
        return counts

    # -- station status (the daemon's own report of its slots) -----------------------------------
    def record_station_status(self, station: Principal, report: dict[str, Any], *,
                              now: float | None = None) -> None:
        """Keep `station`'s latest report (its heartbeat); a slot newly holding an item this station
        has claimed is noted in that item's audit trail (`on_slot`)."""
        now = _now(now)
        with self._tx() as conn:
            previous = conn.execute(
                select(station_status.c.report).where(station_status.c.token_id == station.id).with_for_update()
            ).scalar()
            before = {(s.get("slot"), s.get("item")) for s in (json.loads(previous).get("slots", []) if previous else [])}
            if previous is None:
                conn.execute(insert(station_status).values(token_id=station.id, reported_at=now, report=_canonical(report)))
            else:
                conn.execute(update(station_status).where(station_status.c.token_id == station.id)
                             .values(reported_at=now, report=_canonical(report)))
            held = [s for s in report.get("slots", []) if s.get("item") and (s.get("slot"), s.get("item")) not in before]
            if held:
                known = dict(conn.execute(  # only what this station holds: a report cannot mark another's
                    select(items.c.id, items.c.shipment_id).where(
                        items.c.id.in_([s["item"] for s in held]), items.c.lease_owner == station.id,
                        items.c.state == ItemState.CLAIMED.value)).all())
                for s in held:
                    if s["item"] in known:
                        self._audit(conn, now, AuditEvent.ON_SLOT, s["item"], known[s["item"]], station=station,
                                    serial_number=s.get("serial"), outcome=f"slot {s.get('slot')}")

    def stations(self) -> list[StationView]:
        """Every station token, with its latest status report and its last audit activity."""
        last = (select(audit.c.token_id, func.max(audit.c.at).label("last_at"))
                .group_by(audit.c.token_id).subquery())
        query = (
            select(tokens.c.id, tokens.c.name, station_status.c.reported_at, station_status.c.report, last.c.last_at)
            .outerjoin(station_status, station_status.c.token_id == tokens.c.id)
            .outerjoin(last, last.c.token_id == tokens.c.id)
            .where(tokens.c.role == Role.STATION.value).order_by(tokens.c.name, tokens.c.id)
        )
        held = (select(items.c.lease_owner, func.count().label("n"))
                .where(items.c.state == ItemState.CLAIMED.value).group_by(items.c.lease_owner))
        with self._tx() as conn:
            rows = conn.execute(query).all()
            leases = dict(conn.execute(held).all())
        return [StationView(token_id=r.id, name=r.name, reported_at=r.reported_at,
                            report=json.loads(r.report) if r.report else None, last_activity=r.last_at,
                            leases=leases.get(r.id, 0)) for r in rows]

    # -- station side --------------------------------------------------------------------------
    def claim(self, station: Principal, lease_seconds: float, *, now: float | None = None) -> Claim | None:
        """Lease the oldest claimable item to `station`, or None when the queue is empty.

        An item whose lease expired is claimable again (it goes first); its former holder
        loses it (its heartbeat, submit or release then gets Conflict)."""
        now = _now(now)
        if self._postgresql and not self._expired_probe_due(now):
            return self._claim_queued_pg(station, lease_seconds, now)
        with self._tx() as conn:
            row = self._next_claimable(conn, now)
            if row is None:
                return None
            if row.state == ItemState.CLAIMED.value:
                self._audit(conn, now, AuditEvent.EXPIRED, row.id, row.shipment_id,
                            token_id=row.lease_owner)
            expires = now + lease_seconds
            generation = (row.lease_generation or 0) + 1
            conn.execute(
                update(items)
                .where(items.c.id == row.id)
                .values(state=ItemState.CLAIMED.value, lease_owner=station.id, lease_expires=expires,
                        lease_generation=generation, written_at=None)
            )
            self._audit(conn, now, AuditEvent.CLAIMED, row.id, row.shipment_id, station=station)
        return Claim(
            item_id=row.id,
            shipment_id=row.shipment_id,
            pin_request=row.pin_request,
            credential_requests=json.loads(row.credential_requests),
            lease_expires=expires,
            generation=generation,
            attempts=row.attempts or 0,
        )

    def _expired_probe_due(self, now: float) -> bool:
        """True when expired leases should be looked for first (at most once a second per Store;
        a `now` that went backwards, as in tests, always probes)."""
        last = self._last_expired_probe
        if last is None or not 0 <= now - last < EXPIRED_PROBE_SECONDS:
            self._last_expired_probe = now
            return True
        return False

    def _claim_queued_pg(self, station: Principal, lease_seconds: float, now: float) -> Claim | None:
        expires = now + lease_seconds
        row = self._pg_one_row(_PG_CLAIM_QUEUED_SQL, {"station_id": station.id, "station_name": station.name,
                                                      "expires": expires, "now": now})
        if row is None:
            return None
        item_id, shipment_id, pin_request, credential_requests, generation, attempts = row
        return Claim(item_id=item_id, shipment_id=shipment_id, pin_request=pin_request,
                     credential_requests=json.loads(credential_requests), lease_expires=expires,
                     generation=generation, attempts=attempts or 0)

    def _next_claimable(self, conn: Connection, now: float):
        """The next item: expired leases first, then the queue in order (SKIP LOCKED on PostgreSQL;
        on SQLite the transaction already holds the write lock). A lease whose holder reported a
        write expires only `write_grace_seconds` later: that key may still be being written."""
        columns = (items.c.id, items.c.shipment_id, items.c.state, items.c.lease_owner,
                   items.c.pin_request, items.c.credential_requests, items.c.lease_generation,
                   items.c.attempts)
        expired = (
            select(*columns)
            .where(items.c.state == ItemState.CLAIMED.value, items.c.lease_expires < now,
                   items.c.written_at.is_(None) | (items.c.lease_expires < now - self.write_grace_seconds))
            .order_by(items.c.lease_expires)
        )
        queued = select(*columns).where(items.c.state == ItemState.QUEUED.value).order_by(items.c.id)
        for query in (expired, queued):
            row = conn.execute(query.limit(1).with_for_update(skip_locked=True)).first()
            if row is not None:
                return row
        return None

    def heartbeat(self, station: Principal, item_id: int, lease_seconds: float, *,
                  generation: int | None = None, now: float | None = None) -> float:
        """Extend `station`'s lease on `item_id`; returns the new expiry."""
        now = _now(now)
        expires = now + lease_seconds
        with self._tx() as conn:
            self._held_item(conn, station, item_id, generation)
            conn.execute(update(items).where(items.c.id == item_id).values(lease_expires=expires))
        return expires

    def confirm(self, station: Principal, item_id: int, lease_seconds: float, *, generation: int,
                now: float | None = None) -> float:
        """The station is about to write a key for this claim: check that it still holds it
        (Conflict `stale_lease` otherwise) and record the write, which keeps the item from any
        other station until the lease expired `write_grace_seconds` ago. Returns the new expiry."""
        now = _now(now)
        expires = now + lease_seconds
        with self._tx() as conn:
            self._held_item(conn, station, item_id, generation)
            conn.execute(update(items).where(items.c.id == item_id)
                         .values(lease_expires=expires, written_at=func.coalesce(items.c.written_at, now)))
        return expires

    def release(self, station: Principal, item_id: int, *, generation: int | None = None,
                error: dict[str, Any] | None = None, now: float | None = None) -> ItemRelease:
        """Give an item `station` holds back to the queue. With `error` (an ItemError of the key:
        pulled, wedged, not genuine, not fresh) the release counts an attempt; the attempt that
        reaches `max_attempts` fails the item with that error instead (PROTOCOL.md §4)."""
        now = _now(now)
        with self._tx() as conn:
            row = self._held_item(conn, station, item_id, generation)
            attempts = (row.attempts or 0) + (1 if error is not None else 0)
            if error is not None and attempts >= self.max_attempts:
                conn.execute(
                    update(items).where(items.c.id == item_id)
                    .values(state=ItemState.FAILED.value, result=_canonical(error), finished_at=now,
                            lease_expires=None, attempts=attempts)
                )
                self._audit(conn, now, AuditEvent.FAILED, item_id, row.shipment_id, station=station,
                            outcome=str(error.get("error_code")))
                return ItemRelease(ItemState.FAILED, attempts)
            conn.execute(
                update(items)
                .where(items.c.id == item_id)
                .values(state=ItemState.QUEUED.value, lease_owner=None, lease_expires=None, written_at=None,
                        attempts=attempts)
            )
            self._audit(conn, now, AuditEvent.RELEASED, item_id, row.shipment_id, station=station,
                        outcome=None if error is None else str(error.get("error_code")))
        return ItemRelease(ItemState.QUEUED, attempts)

    def submit(
        self,
        station: Principal,
        item_id: int,
        *,
        product_data: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        serial_number: str | None = None,
        generation: int | None = None,
        now: float | None = None,
    ) -> ItemState:
        """Finish `item_id` with a ProductData (fulfilled) or an ItemError (failed).

        Idempotent: the same result submitted again by the same station is accepted again;
        a different result for a finished item, or a submit without the lease, is a Conflict."""
        if (product_data is None) == (error is None):
            raise InvalidRequest("submit exactly one of product_data and error")
        now = _now(now)
        result = _canonical(product_data if product_data is not None else error)
        state = ItemState.FULFILLED if product_data is not None else ItemState.FAILED
        outcome = "fulfilled" if error is None else str(error.get("error_code"))
        event_kind = AuditEvent.FULFILLED if error is None else AuditEvent.FAILED
        if self._postgresql:
            done = self._pg_one_row(_PG_SUBMIT_HELD_SQL, {
                "state": state.value, "result": result, "now": now, "item_id": item_id,
                "station_id": station.id, "station_name": station.name, "event": event_kind.value,
                "serial": serial_number, "outcome": outcome, "generation": generation})
            if done is not None:
                return state
        with self._tx() as conn:
            row = self._locked_item(conn, item_id)
            if ItemState(row.state).finished:
                if row.lease_owner == station.id and row.result == result and (
                        generation is None or row.lease_generation == generation):
                    return ItemState(row.state)
                raise Conflict(f"item {item_id} was already finished with another result",
                               code=STALE_LEASE if generation is not None else None)
            self._check_lease(row, station, generation)
            conn.execute(
                update(items)
                .where(items.c.id == item_id)
                .values(state=state.value, result=result, finished_at=now, lease_expires=None)
            )
            self._audit(conn, now, event_kind, item_id, row.shipment_id, station=station,
                        serial_number=serial_number, outcome=outcome)
        return state

    @staticmethod
    def _locked_item(conn: Connection, item_id: int):
        row = conn.execute(
            select(items.c.id, items.c.shipment_id, items.c.state, items.c.lease_owner, items.c.result,
                   items.c.lease_generation, items.c.attempts)
            .where(items.c.id == item_id)
            .with_for_update()
        ).first()
        if row is None:
            raise NotFound(f"no item {item_id}")
        return row

    @staticmethod
    def _check_lease(row, station: Principal, generation: int | None = None) -> None:
        """Conflict unless `station` holds the item; `stale_lease` when a `generation` is named and
        the item was claimed again since (by anyone, this station's token included)."""
        if row.state != ItemState.CLAIMED.value or row.lease_owner != station.id:
            raise Conflict(f"item {row.id} is not leased to this station",
                           code=STALE_LEASE if generation is not None else None)
        if generation is not None and row.lease_generation != generation:
            raise Conflict(f"item {row.id} was claimed again since this station's claim {generation}",
                           code=STALE_LEASE)

    def _held_item(self, conn: Connection, station: Principal, item_id: int, generation: int | None = None):
        row = self._locked_item(conn, item_id)
        self._check_lease(row, station, generation)
        return row

    # -- retention and audit -------------------------------------------------------------------
    def purge(self, now: float | None = None) -> int:
        """Delete every shipment whose items were all read more than the retention ago.

        Unfinished or unread items keep their shipment; request digests stay (replays stay
        refused). Returns the number of shipments purged."""
        cutoff = _now(now) - self.retention_seconds
        keep = (
            select(items.c.shipment_id)
            .where(items.c.read_at.is_(None) | (items.c.read_at > cutoff))
            .distinct()
        )
        with self._tx() as conn:
            doomed = conn.execute(
                select(shipments.c.id).where(shipments.c.id.not_in(keep))
            ).scalars().all()
            if doomed:
                conn.execute(sql_delete(items).where(items.c.shipment_id.in_(doomed)))
                conn.execute(sql_delete(shipments).where(shipments.c.id.in_(doomed)))
        return len(doomed)

    def _audit(self, conn: Connection, now: float, kind: AuditEvent, item_id: int, shipment_id: str,
               *, station: Principal | None = None, token_id: int | None = None,
               serial_number: str | None = None, outcome: str | None = None) -> None:
        if station is not None:
            token_id = station.id
        name = select(tokens.c.name).where(tokens.c.id == token_id).scalar_subquery()
        conn.execute(
            insert(audit).values(
                at=now, event=kind.value, item_id=item_id, shipment_id=shipment_id,
                token_id=token_id, station=name, serial_number=serial_number, outcome=outcome,
            )
        )

    def audit_trail(self, item_id: int | None = None) -> list[AuditRecord]:
        """The audit records, oldest first (of one item if given)."""
        query = select(audit).order_by(audit.c.id)
        if item_id is not None:
            query = query.where(audit.c.item_id == item_id)
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [_audit_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """How many items are in each state (for the bench and the operator)."""
        with self._tx() as conn:
            rows = conn.execute(select(items.c.state, func.count()).group_by(items.c.state)).all()
        return {state.value: 0 for state in ItemState} | {r[0]: r[1] for r in rows}


def _shipment(row, item_rows, result: Any) -> Shipment:
    """A Shipment from its row and its items' rows; `result` reads each stored result."""
    return Shipment(
        id=row.id, owner=row.owner, envelope=json.loads(row.envelope), created=row.created,
        state_override=row.state_override, tracking_number=row.tracking_number, updated=row.updated,
        items=[ItemView(id=r.id, position=r.position, descriptor=json.loads(r.descriptor),
                        state=ItemState(r.state), result=result(r.result)) for r in item_rows],
    )


def _refuse_shipping_unregistered(shipment_id: str, target: ShipmentState, item_rows) -> None:
    """A key whose credential its directory refused (issue 15: item error `directory_refused`)
    must not ship: the technician resets it."""
    if target is not ShipmentState.SHIPPED:
        return
    for r in item_rows:
        error = json.loads(r.result) if r.state == ItemState.FAILED.value and r.result else {}
        if error.get("error_code") == "directory_refused":
            raise Conflict(
                f"shipment {shipment_id}: {error.get('error_message', 'the directory refused the registration')}. "
                "Do not ship this key: reset it (station reset --device ... --yes) and put it back with the "
                "fresh keys", code="directory_refused", error_data={"shipment_state_id": 8})


def _audit_record(r) -> AuditRecord:
    return AuditRecord(r.at, AuditEvent(r.event), r.item_id, r.shipment_id, r.station, r.serial_number, r.outcome)


def _without_jwes(result: str | None) -> dict[str, Any] | None:
    """An item's stored result as an operator may see it: serial, firmware, error; no JWE."""
    if result is None:
        return None
    data = json.loads(result)
    return {k: v for k, v in data.items() if k in ("serial_number", "firmware_version", "error_code", "error_message")}


def _item_counts():
    """Per shipment: how many items, how many failed, finished, and no longer queued."""
    finished = (ItemState.FULFILLED.value, ItemState.FAILED.value)
    return (
        select(
            items.c.shipment_id,
            func.count().label("n"),
            func.sum(case((items.c.state == ItemState.FAILED.value, 1), else_=0)).label("failed"),
            func.sum(case((items.c.state.in_(finished), 1), else_=0)).label("done"),
            func.sum(case((items.c.state != ItemState.QUEUED.value, 1), else_=0)).label("started"),
        )
        .group_by(items.c.shipment_id)
        .subquery("item_counts")
    )


_ITEM_COUNTS = _item_counts()


def _with_item_counts():
    return shipments.outerjoin(_ITEM_COUNTS, _ITEM_COUNTS.c.shipment_id == shipments.c.id)


def _shipment_state_column():
    """derive_state in SQL (with the operator's override first), for filters and counts."""
    c = _ITEM_COUNTS.c
    return case(
        (shipments.c.state_override.is_not(None), shipments.c.state_override),
        ((c.n > 0) & (c.done == c.n) & (c.failed > 0), int(ShipmentState.PROCESSING_ERROR)),
        ((c.n > 0) & (c.done == c.n), int(ShipmentState.PROGRAMMED)),
        (c.started > 0, int(ShipmentState.IN_FULFILLMENT)),
        else_=int(ShipmentState.RECEIVED),
    )


def set_shipment_state(url: str | None, shipment_id: str, state: ShipmentState, *,
                       tracking_number: str | None = None) -> str:
    """`station ship` and `station delivered`: an operator's move in the store at `url`; the line
    to print."""
    try:
        uuid.UUID(shipment_id)
    except ValueError:
        raise UsageError(f"{shipment_id!r} is not a shipment id (a UUID)") from None
    store = Store.open(url)
    try:
        shipment = store.set_state(shipment_id, state, tracking_number=tracking_number)
    finally:
        store.close()
    line = f"shipment {shipment.id}: {int(shipment.state)} {shipment.state.meaning}"
    return line + (f", tracking {shipment.tracking_number}" if shipment.state is ShipmentState.SHIPPED else "")


def create_token(url: str | None, role: Role | str, name: str, *, tenant_id: int | None = None,
                 expires_days: float | None = None) -> str:
    """`station tokens create`: a new bearer token in the store at `url`."""
    expires = None if not expires_days else time.time() + expires_days * 86400
    store = Store.open(url)
    try:
        return store.create_token(role, name, tenant_id=tenant_id, expires=expires)
    finally:
        store.close()

"""The fulfillment queue: shipments, their items, bearer tokens and the audit trail.

SQLAlchemy Core over SQLite (the default: one file, WAL, `BEGIN IMMEDIATE` for every
transaction) or PostgreSQL (`postgresql://…`, driven by psycopg 3; a claim takes its row with
`SELECT … FOR UPDATE SKIP LOCKED`). The schema is created on first start and carries a version.

One queue item is one `shipment_item` of PROTOCOL.md §4: its PIN request JWE and its credential
request JWEs, which stay encrypted here (only a station can open them). Every request JWE's
digest (`requestDigest`, PROTOCOL.md §3) is kept for good, so a replayed JWE is refused at the
door even after its shipment was purged. An item moves queued → claimed → fulfilled | failed; a
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
import os
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from station.errors import InvalidRequest, UsageError
from station.fulfillment.errors import STALE_LEASE, Conflict, NotFound, ServiceUnavailable
from station.protocol.jose import request_digest

SCHEMA_VERSION = 1
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
)

shipments = Table(
    "shipments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(200), nullable=False, index=True),
    Column("envelope", Text, nullable=False),
    Column("created", Double, nullable=False),
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
    *(ITEM_FENCING_COLUMNS := (
        # lease fencing and attempts (issue 12): each claim bumps the generation; a station
        # reports its first write to a key (written_at) before making it; a key's fault counts
        # an attempt
        Column("lease_generation", Integer, nullable=True),
        Column("written_at", Double, nullable=True),
        Column("attempts", Integer, nullable=True),
    )),
    Index("items_queue", "state", "id"),
    Index("items_leases", "state", "lease_expires"),
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


class Role(str, enum.Enum):
    """Who a bearer token speaks for."""

    CUSTOMER = "customer"
    STATION = "station"


class ItemState(str, enum.Enum):
    """Where one shipment item stands in the queue."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    FULFILLED = "fulfilled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (ItemState.FULFILLED, ItemState.FAILED)


class ShipmentState(enum.IntEnum):
    """`shipment_state_id` of PROTOCOL.md §4 (Yubico's numbering)."""

    RECEIVED = 100
    IN_FULFILLMENT = 101
    FULFILLED = 103
    PROCESSING_ERROR = 8

    @classmethod
    def of(cls, states: Sequence[ItemState]) -> ShipmentState:
        """Derive a shipment's state from its items: every item finished → 103 (8 if one
        failed); any item claimed or finished → 101; otherwise 100."""
        if states and all(s.finished for s in states):
            return cls.PROCESSING_ERROR if ItemState.FAILED in states else cls.FULFILLED
        if any(s is not ItemState.QUEUED for s in states):
            return cls.IN_FULFILLMENT
        return cls.RECEIVED


class AuditEvent(str, enum.Enum):
    """What the audit table records about an item (never a secret)."""

    CLAIMED = "claimed"
    EXPIRED = "expired"
    RELEASED = "released"
    FULFILLED = "fulfilled"
    FAILED = "failed"


@dataclass(frozen=True)
class Principal:
    """The holder of a bearer token: its row id, role and name (a customer is its name)."""

    id: int
    role: Role
    name: str


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

    @property
    def state(self) -> ShipmentState:
        return ShipmentState.of([item.state for item in self.items])


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


class ReplayedRequest(InvalidRequest):
    """A request JWE whose digest the service has already received (PROTOCOL.md §5)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        parsed.set(drivername="sqlite+pysqlite"),
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


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
        self._last_expired_probe: float | None = None
        #: the one-statement fast paths are atomic on their own: no BEGIN/COMMIT round trips
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT") if self._postgresql else None

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

    @contextmanager
    def _statement(self) -> Iterator[Connection]:
        """A connection for one self-contained statement (PostgreSQL, autocommit)."""
        with _unavailable_as_503(), self._autocommit.connect() as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with _unavailable_as_503(), self.engine.begin() as conn:
            yield conn

    def _create_schema(self) -> None:
        with self._tx() as conn:
            metadata.create_all(conn)
            _add_missing_columns(conn, items, ITEM_FENCING_COLUMNS)
            version = conn.execute(select(schema_version.c.version)).scalar()
            if version is None:
                conn.execute(insert(schema_version).values(version=SCHEMA_VERSION))
            elif version != SCHEMA_VERSION:
                raise UsageError(
                    f"the database has schema version {version}, this station speaks {SCHEMA_VERSION}"
                )

    # -- tokens ------------------------------------------------------------------------------
    def create_token(self, role: Role | str, name: str, *, now: float | None = None) -> str:
        """A new bearer token for `name`; only its hash is stored, so print it once."""
        role = Role(role)
        if not name.strip():
            raise UsageError("a token needs a non-empty --name")
        token = secrets.token_urlsafe(32)
        with self._tx() as conn:
            conn.execute(
                insert(tokens).values(
                    token_hash=hash_token(token), role=role.value, name=name, created=_now(now)
                )
            )
        return token

    def authenticate(self, token: str) -> Principal | None:
        """The principal holding `token`, or None for an unknown token."""
        with self._tx() as conn:
            row = conn.execute(
                select(tokens.c.id, tokens.c.role, tokens.c.name).where(
                    tokens.c.token_hash == hash_token(token)
                )
            ).first()
        return None if row is None else Principal(row.id, Role(row.role), row.name)

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
        digests = [[request_digest(jwe) for jwe in item.jwes] for item in new_items]
        flat = [d for ds in digests for d in ds]
        if len(set(flat)) != len(flat):
            raise ReplayedRequest("the same request JWE appears twice in this shipment")
        try:
            with self._tx() as conn:
                self._refuse_known(conn, flat)
                conn.execute(
                    insert(shipments).values(
                        id=shipment_id, owner=owner, envelope=json.dumps(envelope), created=now
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
            raise ReplayedRequest(f"request JWE with requestDigest {known.digest} was already received")

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
            rows = conn.execute(
                select(items.c.id, items.c.position, items.c.descriptor, items.c.state, items.c.result)
                .where(items.c.shipment_id == shipment_id)
                .order_by(items.c.position)
            ).all()
        return Shipment(
            id=row.id,
            owner=row.owner,
            envelope=json.loads(row.envelope),
            created=row.created,
            items=[
                ItemView(
                    id=r.id,
                    position=r.position,
                    descriptor=json.loads(r.descriptor),
                    state=ItemState(r.state),
                    result=None if r.result is None else json.loads(r.result),
                )
                for r in rows
            ],
        )

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
        with self._statement() as conn:
            row = conn.execute(_PG_CLAIM_QUEUED, {"station_id": station.id, "station_name": station.name,
                                                  "expires": expires, "now": now}).first()
        if row is None:
            return None
        return Claim(item_id=row.id, shipment_id=row.shipment_id, pin_request=row.pin_request,
                     credential_requests=json.loads(row.credential_requests), lease_expires=expires,
                     generation=row.lease_generation, attempts=row.attempts or 0)

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
            with self._statement() as conn:
                done = conn.execute(_PG_SUBMIT_HELD, {
                    "state": state.value, "result": result, "now": now, "item_id": item_id,
                    "station_id": station.id, "station_name": station.name, "event": event_kind.value,
                    "serial": serial_number, "outcome": outcome, "generation": generation}).first()
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
        return [
            AuditRecord(r.at, AuditEvent(r.event), r.item_id, r.shipment_id, r.station,
                        r.serial_number, r.outcome)
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """How many items are in each state (for the bench and the operator)."""
        with self._tx() as conn:
            rows = conn.execute(select(items.c.state, func.count()).group_by(items.c.state)).all()
        return {state.value: 0 for state in ItemState} | {r[0]: r[1] for r in rows}


def _add_missing_columns(conn: Connection, table: Table, columns: Sequence[Column]) -> None:
    """Additive columns on a database made before they existed (nullable, so no backfill)."""
    from sqlalchemy import inspect

    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    for column in columns:
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")


def create_token(url: str | None, role: Role | str, name: str) -> str:
    """`station tokens create`: a new bearer token in the store at `url`."""
    store = Store.open(url)
    try:
        return store.create_token(role, name)
    finally:
        store.close()

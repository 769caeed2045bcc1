"""The queue store, on SQLite and on PostgreSQL (every test runs on both backends)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text, update

from station.errors import InvalidRequest, UsageError
from station.fulfillment.errors import Conflict, NotFound, ServiceUnavailable
from station.fulfillment.pgcluster import free_port
from station.fulfillment.store import (
    SCHEMA_VERSION,
    AuditEvent,
    ItemState,
    NewItem,
    ReplayedRequest,
    Role,
    ShipmentState,
    derive_state,
    Store,
    schema_version,
)

T0 = 1_800_000_000.0
ENVELOPE = {"delivery_type": 1, "recipient": {}, "mailing_address": {}}
PRODUCT_DATA = {"serial_number": "12345678", "firmware_version": "5.7.1",
                "fido_pin_response": "p.i.n.j.we", "fido_credential_responses": ["c.r.e.d.s"]}
ITEM_ERROR = {"error_code": "device_not_fresh", "error_message": "the key holds a PIN"}


@pytest.fixture
def station(store):
    return store.authenticate(store.create_token(Role.STATION, "station-1"))


@pytest.fixture
def other_station(store):
    return store.authenticate(store.create_token(Role.STATION, "station-2"))


@pytest.fixture
def new_items(make_jwe):
    def make(count: int = 1) -> list[NewItem]:
        return [NewItem({"product_id": 29, "position": i}, make_jwe(), [make_jwe(), make_jwe()])
                for i in range(count)]

    return make


def post(store, new_items, count=1, owner="acme", now=T0) -> str:
    return store.create_shipment(owner, ENVELOPE, new_items(count), now=now)


# -- schema and tokens ---------------------------------------------------------------------


def test_schema_is_versioned_and_reopens(db_url, store):
    with store.engine.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalars().all() == [SCHEMA_VERSION]
    Store.open(db_url).close()  # a second start finds the schema and keeps one version row
    with store.engine.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalars().all() == [SCHEMA_VERSION]


def test_a_newer_schema_is_refused(db_url, store):
    with store.engine.begin() as conn:
        conn.execute(update(schema_version).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(UsageError, match="schema version"):
        Store.open(db_url)


def test_tokens_are_stored_hashed_and_authenticate(store):
    token = store.create_token("customer", "acme")
    principal = store.authenticate(token)
    assert (principal.role, principal.name) == (Role.CUSTOMER, "acme")
    assert store.authenticate(token + "x") is None
    with store.engine.connect() as conn:
        dump = str(conn.execute(text("SELECT * FROM tokens")).all())
    assert token not in dump


def test_a_token_needs_a_name_and_a_role(store):
    with pytest.raises(UsageError):
        store.create_token(Role.STATION, "  ")
    with pytest.raises(ValueError):
        store.create_token("admin", "root")


def test_bad_urls_are_usage_errors(tmp_path):
    for url in ("mysql://localhost/x", "sqlite://", "sqlite:///:memory:", "not a url"):
        with pytest.raises(UsageError):
            Store.open(url)


def test_an_unreachable_postgresql_is_service_unavailable():
    with pytest.raises(ServiceUnavailable, match="database unavailable"):
        Store.open(f"postgresql://postgres@127.0.0.1:{free_port()}/none")


# -- shipments -----------------------------------------------------------------------------


def test_a_shipment_is_seen_by_its_owner_only(store, new_items):
    shipment_id = post(store, new_items, 2)
    shipment = store.get_shipment("acme", shipment_id)
    assert shipment.envelope == ENVELOPE
    assert [i.descriptor["position"] for i in shipment.items] == [0, 1]
    assert [i.state for i in shipment.items] == [ItemState.QUEUED] * 2
    assert shipment.state is ShipmentState.RECEIVED
    with pytest.raises(NotFound):
        store.get_shipment("globex", shipment_id)
    with pytest.raises(NotFound):
        store.get_shipment("acme", "00000000-0000-0000-0000-000000000000")


def test_a_replayed_jwe_is_refused(store, make_jwe):
    jwe = make_jwe()
    store.create_shipment("acme", ENVELOPE, [NewItem({}, jwe, [make_jwe()])])
    with pytest.raises(ReplayedRequest) as refused:
        store.create_shipment("globex", ENVELOPE, [NewItem({}, make_jwe(), [jwe])])
    assert isinstance(refused.value, InvalidRequest)
    with pytest.raises(ReplayedRequest, match="twice"):
        store.create_shipment("acme", ENVELOPE, [NewItem({}, make_jwe(), [make_jwe()]),
                                                 NewItem({}, make_jwe(), [jwe2 := make_jwe(), jwe2])])
    assert store.counts()["queued"] == 1  # the refused shipments left nothing behind


def test_a_concurrent_replay_loses_at_the_unique_digest(store, make_jwe, monkeypatch):
    jwe = make_jwe()
    store.create_shipment("acme", ENVELOPE, [NewItem({}, jwe, [make_jwe()])])
    monkeypatch.setattr(Store, "_refuse_known", staticmethod(lambda conn, digests: None))
    with pytest.raises(ReplayedRequest, match="already received"):
        store.create_shipment("acme", ENVELOPE, [NewItem({}, jwe, [make_jwe()])])


# -- claims and leases ---------------------------------------------------------------------


def test_claims_go_in_order_then_the_queue_is_empty(store, new_items, station):
    first = post(store, new_items, 2)
    second = post(store, new_items, 1)
    claims = [store.claim(station, 60, now=T0) for _ in range(3)]
    assert [c.shipment_id for c in claims] == [first, first, second]
    assert len({c.item_id for c in claims}) == 3
    assert store.claim(station, 60, now=T0) is None
    assert store.get_shipment("acme", first).state is ShipmentState.IN_FULFILLMENT


def test_a_claim_carries_the_request_jwes(store, make_jwe, station):
    item = NewItem({}, make_jwe(), [make_jwe(), make_jwe()])
    shipment_id = store.create_shipment("acme", ENVELOPE, [item])
    claim = store.claim(station, 30, now=T0)
    assert (claim.shipment_id, claim.pin_request, claim.credential_requests) == (
        shipment_id, item.pin_request, item.credential_requests)
    assert claim.lease_expires == T0 + 30


def test_an_expired_lease_returns_the_item_to_the_queue(store, new_items, station, other_station):
    post(store, new_items)
    claim = store.claim(station, 10, now=T0)
    assert store.claim(other_station, 10, now=T0 + 9) is None
    again = store.claim(other_station, 10, now=T0 + 11)
    assert again.item_id == claim.item_id
    with pytest.raises(Conflict):
        store.heartbeat(station, claim.item_id, 10, now=T0 + 12)
    with pytest.raises(Conflict):
        store.submit(station, claim.item_id, product_data=PRODUCT_DATA, now=T0 + 12)
    with pytest.raises(Conflict):
        store.release(station, claim.item_id, now=T0 + 12)
    events = [(r.event, r.station) for r in store.audit_trail(claim.item_id)]
    assert events == [(AuditEvent.CLAIMED, "station-1"), (AuditEvent.EXPIRED, "station-1"),
                      (AuditEvent.CLAIMED, "station-2")]


def test_a_late_submit_counts_while_nobody_else_took_the_item(store, new_items, station):
    post(store, new_items)
    claim = store.claim(station, 10, now=T0)
    assert store.submit(station, claim.item_id, product_data=PRODUCT_DATA, now=T0 + 60) is ItemState.FULFILLED


def test_a_heartbeat_extends_the_lease(store, new_items, station, other_station):
    post(store, new_items)
    claim = store.claim(station, 10, now=T0)
    assert store.heartbeat(station, claim.item_id, 10, now=T0 + 8) == T0 + 18
    assert store.claim(other_station, 10, now=T0 + 15) is None
    assert store.claim(other_station, 10, now=T0 + 19).item_id == claim.item_id


def test_only_the_holder_heartbeats_or_releases(store, new_items, station, other_station):
    post(store, new_items)
    claim = store.claim(station, 60, now=T0)
    with pytest.raises(Conflict):
        store.heartbeat(other_station, claim.item_id, 60, now=T0)
    with pytest.raises(Conflict):
        store.release(other_station, claim.item_id, now=T0)
    with pytest.raises(NotFound):
        store.heartbeat(station, claim.item_id + 1000, 60, now=T0)


def test_a_released_item_is_claimed_again(store, new_items, station, other_station):
    post(store, new_items)
    claim = store.claim(station, 60, now=T0)
    store.release(station, claim.item_id, now=T0 + 1)
    with pytest.raises(Conflict):
        store.release(station, claim.item_id, now=T0 + 1)  # not held any more
    assert store.claim(other_station, 60, now=T0 + 2).item_id == claim.item_id
    assert [r.event for r in store.audit_trail(claim.item_id)] == [
        AuditEvent.CLAIMED, AuditEvent.RELEASED, AuditEvent.CLAIMED]


# -- submit --------------------------------------------------------------------------------


def test_submit_is_idempotent_and_refuses_a_different_result(store, new_items, station, other_station):
    shipment_id = post(store, new_items)
    claim = store.claim(station, 60, now=T0)
    assert store.submit(station, claim.item_id, product_data=PRODUCT_DATA, serial_number="12345678",
                        now=T0 + 1) is ItemState.FULFILLED
    same = dict(reversed(list(PRODUCT_DATA.items())))  # same result, other member order
    assert store.submit(station, claim.item_id, product_data=same, now=T0 + 2) is ItemState.FULFILLED
    with pytest.raises(Conflict):
        store.submit(station, claim.item_id, product_data={**PRODUCT_DATA, "serial_number": "1"})
    with pytest.raises(Conflict):
        store.submit(station, claim.item_id, error=ITEM_ERROR)
    with pytest.raises(Conflict):
        store.submit(other_station, claim.item_id, product_data=PRODUCT_DATA)
    shipment = store.get_shipment("acme", shipment_id)
    assert shipment.state is ShipmentState.PROGRAMMED
    assert shipment.items[0].result == PRODUCT_DATA
    finished = [r for r in store.audit_trail(claim.item_id) if r.event is AuditEvent.FULFILLED]
    assert [(r.serial_number, r.outcome) for r in finished] == [("12345678", "fulfilled")]


def test_a_failed_item_makes_a_processing_error(store, new_items, station):
    shipment_id = post(store, new_items, 2)
    first = store.claim(station, 60, now=T0)
    assert store.submit(station, first.item_id, error=ITEM_ERROR, serial_number="42") is ItemState.FAILED
    assert store.get_shipment("acme", shipment_id).state is ShipmentState.IN_FULFILLMENT
    second = store.claim(station, 60, now=T0)
    store.submit(station, second.item_id, product_data=PRODUCT_DATA)
    shipment = store.get_shipment("acme", shipment_id)
    assert shipment.state is ShipmentState.PROCESSING_ERROR
    assert shipment.items[0].result == ITEM_ERROR
    record = store.audit_trail(first.item_id)[-1]
    assert (record.event, record.serial_number, record.outcome) == (AuditEvent.FAILED, "42", "device_not_fresh")


def test_submit_needs_a_lease_and_one_outcome(store, new_items, station):
    post(store, new_items)
    item_id = store.get_shipment("acme", store.claim(station, 60).shipment_id).items[0].id
    store.release(station, item_id)
    with pytest.raises(Conflict):
        store.submit(station, item_id, product_data=PRODUCT_DATA)  # queued, not leased
    with pytest.raises(NotFound):
        store.submit(station, item_id + 1000, product_data=PRODUCT_DATA)
    with pytest.raises(InvalidRequest):
        store.submit(station, item_id, product_data=PRODUCT_DATA, error=ITEM_ERROR)
    with pytest.raises(InvalidRequest):
        store.submit(station, item_id)


def test_the_audit_holds_no_request_or_response(store, make_jwe, station):
    item = NewItem({}, make_jwe(), [make_jwe()])
    store.create_shipment("acme", ENVELOPE, [item])
    claim = store.claim(station, 60)
    store.submit(station, claim.item_id, product_data=PRODUCT_DATA)
    with store.engine.connect() as conn:
        dump = str(conn.execute(text("SELECT * FROM audit")).all())
    for secret in (item.pin_request, *item.credential_requests, PRODUCT_DATA["fido_pin_response"]):
        assert secret not in dump


def test_shipment_state_derives_from_items():
    of = derive_state
    assert of([ItemState.QUEUED, ItemState.QUEUED]) is ShipmentState.RECEIVED
    assert of([ItemState.QUEUED, ItemState.CLAIMED]) is ShipmentState.IN_FULFILLMENT
    assert of([ItemState.FULFILLED, ItemState.QUEUED]) is ShipmentState.IN_FULFILLMENT
    assert of([ItemState.FULFILLED, ItemState.FULFILLED]) is ShipmentState.PROGRAMMED
    assert of([ItemState.FULFILLED, ItemState.FAILED]) is ShipmentState.PROCESSING_ERROR


# -- retention -----------------------------------------------------------------------------


def test_responses_stay_until_read_then_purge_after_retention(db_url, new_items):
    store = Store.open(db_url, retention_seconds=100)
    station = store.authenticate(store.create_token(Role.STATION, "s"))
    read, unread = post(store, new_items), post(store, new_items)
    for _ in range(2):
        store.submit(station, store.claim(station, 60, now=T0).item_id, product_data=PRODUCT_DATA, now=T0)
    store.get_shipment("acme", read, now=T0 + 10)
    assert store.purge(now=T0 + 109) == 0  # read, but within the retention
    assert store.purge(now=T0 + 111) == 1
    with pytest.raises(NotFound):
        store.get_shipment("acme", read)
    assert store.purge(now=T0 + 10**9) == 0  # never read: kept however old
    assert store.get_shipment("acme", unread).items[0].result == PRODUCT_DATA
    store.close()


def test_a_shipment_with_an_unfinished_item_is_never_purged(store, new_items, station):
    shipment_id = post(store, new_items, 2)
    store.submit(station, store.claim(station, 60).item_id, product_data=PRODUCT_DATA)
    store.get_shipment("acme", shipment_id, now=T0)
    assert store.purge(now=T0 + 10**9) == 0
    assert store.get_shipment("acme", shipment_id).items[0].result == PRODUCT_DATA


def test_a_purged_jwe_is_still_refused(db_url, make_jwe):
    store = Store.open(db_url, retention_seconds=0)
    station = store.authenticate(store.create_token(Role.STATION, "s"))
    jwe = make_jwe()
    shipment_id = store.create_shipment("acme", ENVELOPE, [NewItem({}, jwe, [make_jwe()])])
    store.submit(station, store.claim(station, 60).item_id, error=ITEM_ERROR)
    store.get_shipment("acme", shipment_id, now=T0)
    assert store.purge(now=T0 + 1) == 1
    with pytest.raises(ReplayedRequest):
        store.create_shipment("acme", ENVELOPE, [NewItem({}, jwe, [make_jwe()])])
    store.close()


# -- concurrency ---------------------------------------------------------------------------


def test_eight_concurrent_claimers_claim_every_item_once(db_url, store, make_jwe):
    items = [NewItem({}, f"cGlu.{i:04d}.eA.eQ.eg", [f"Y3JlZA.{i:04d}.eA.eQ.eg"]) for i in range(240)]  # canonical b64u parts
    for start in range(0, len(items), 40):
        store.create_shipment("acme", ENVELOPE, items[start:start + 40])
    claimed: list[list[int]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def claimer(slot: int) -> None:
        own = Store.open(db_url, pool_size=2)
        me = own.authenticate(own.create_token(Role.STATION, f"station-{slot}"))
        barrier.wait()
        while (claim := own.claim(me, 60)) is not None:
            claimed[slot].append(claim.item_id)
            own.submit(me, claim.item_id, product_data={**PRODUCT_DATA, "serial_number": str(claim.item_id)})
        own.close()

    threads = [threading.Thread(target=claimer, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    every = [item_id for slot in claimed for item_id in slot]
    assert len(every) == len(set(every)) == 240
    assert sum(1 for slot in claimed if slot) > 1  # the work really was shared
    assert store.counts() == {"queued": 0, "claimed": 0, "fulfilled": 240, "failed": 0}
    claims = [r for r in store.audit_trail() if r.event is AuditEvent.CLAIMED]
    assert len(claims) == 240


# -- the PostgreSQL fast path (perf-service, issue 18) --------------------------------------------
@pytest.mark.postgres
def test_a_claim_on_a_connection_the_server_dropped_is_503_and_the_retry_connects_afresh(pg_cluster, make_jwe):
    """The one-statement claim and submit run on pooled DBAPI connections: one the server killed
    is ServiceUnavailable (never a traceback), and the caller's retry gets a working one."""
    import time
    import uuid

    store = Store.open(pg_cluster.create_database(f"t_{uuid.uuid4().hex[:16]}"))
    try:
        station = store.authenticate(store.create_token(Role.STATION, "station-1"))
        store.create_shipment("acme", ENVELOPE, [NewItem({}, make_jwe(), [make_jwe()]) for _ in range(3)])
        now = time.time()
        store._last_expired_probe = now  # the expired-lease probe was just made: claims take the fast path
        first = store.claim(station, 60, now=now + 0.1)
        with store.engine.begin() as conn:  # the server drops every other connection to this database
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        with pytest.raises(ServiceUnavailable, match="database unavailable"):
            store.submit(station, first.item_id, product_data=PRODUCT_DATA, generation=first.generation, now=now + 0.2)
        assert store.submit(station, first.item_id, product_data=PRODUCT_DATA, generation=first.generation,
                            now=now + 0.3) is ItemState.FULFILLED
        second = store.claim(station, 60, now=now + 0.4)
        assert second is not None and second.item_id != first.item_id and second.generation == 1
        # a stale submit on the fast path falls through to the full checks: refused, not taken
        with pytest.raises(Conflict):
            store.submit(station, second.item_id, product_data=PRODUCT_DATA, generation=second.generation + 1,
                         now=now + 0.5)
    finally:
        store.close()

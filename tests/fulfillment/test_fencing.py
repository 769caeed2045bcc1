"""Lease fencing and attempts in the queue store (both backends) and over the station API:
every claim carries a generation, a superseded claim is refused as stale, a station that
reported a write keeps the item through a grace period, and a key's fault sends the item back
to the queue until `max_attempts` keys faulted."""

from __future__ import annotations

import pytest

from station.fulfillment.client import FulfillmentClient
from station.fulfillment.errors import Conflict
from station.fulfillment.store import STALE_LEASE, AuditEvent, ItemState, NewItem, Role, ShipmentState, Store

from test_fulfillment_store import ENVELOPE, PRODUCT_DATA, T0

KEY_ERROR = {"error_code": "device_error", "error_message": "the key was pulled out"}


@pytest.fixture
def new_item(make_jwe):
    return lambda: NewItem({"product_id": 29}, make_jwe(), [make_jwe()])


@pytest.fixture
def stations(store):
    return [store.authenticate(store.create_token(Role.STATION, f"station-{n}")) for n in (1, 2)]


def test_each_claim_of_an_item_has_a_new_generation_and_the_old_one_is_stale(store, new_item, stations):
    one, two = stations
    store.create_shipment("acme", ENVELOPE, [new_item()], now=T0)
    first = store.claim(one, 10, now=T0)
    assert first.generation == 1 and first.attempts == 0
    second = store.claim(one, 10, now=T0 + 11)  # the same token again (a restarted process)
    assert second.item_id == first.item_id and second.generation == 2
    for call in (lambda: store.heartbeat(one, first.item_id, 10, generation=1, now=T0 + 12),
                 lambda: store.confirm(one, first.item_id, 10, generation=1, now=T0 + 12),
                 lambda: store.release(one, first.item_id, generation=1, now=T0 + 12),
                 lambda: store.submit(one, first.item_id, product_data=PRODUCT_DATA, generation=1, now=T0 + 12)):
        with pytest.raises(Conflict) as refused:
            call()
        assert refused.value.code == STALE_LEASE
    assert store.submit(one, first.item_id, product_data=PRODUCT_DATA, generation=2, now=T0 + 12) is ItemState.FULFILLED
    # the same result again from the same claim is still accepted (idempotent), an older claim's is not
    assert store.submit(one, first.item_id, product_data=PRODUCT_DATA, generation=2, now=T0 + 13) is ItemState.FULFILLED
    with pytest.raises(Conflict):
        store.submit(one, first.item_id, product_data=PRODUCT_DATA, generation=1, now=T0 + 13)


def test_a_confirmed_write_keeps_the_item_from_others_through_the_grace_period(db_url, new_item):
    store = Store.open(db_url, write_grace_seconds=100)
    try:
        one, two = (store.authenticate(store.create_token(Role.STATION, n)) for n in ("s1", "s2"))
        store.create_shipment("acme", ENVELOPE, [new_item()], now=T0)
        claim = store.claim(one, 10, now=T0)
        store.confirm(one, claim.item_id, 10, generation=claim.generation, now=T0 + 1)  # lease to T0+11
        assert store.claim(two, 10, now=T0 + 50) is None  # expired, but the key may still be written
        assert store.claim(two, 10, now=T0 + 110) is None
        late = store.claim(two, 10, now=T0 + 112)  # the first station gave no sign past the grace
        assert late.item_id == claim.item_id and late.generation == claim.generation + 1
        with pytest.raises(Conflict) as stale:
            store.submit(one, claim.item_id, product_data=PRODUCT_DATA, generation=claim.generation, now=T0 + 113)
        assert stale.value.code == STALE_LEASE
    finally:
        store.close()


def test_an_unconfirmed_lease_expires_as_before(store, new_item, stations):
    one, two = stations
    store.create_shipment("acme", ENVELOPE, [new_item()], now=T0)
    claim = store.claim(one, 10, now=T0)
    assert store.claim(two, 10, now=T0 + 11).item_id == claim.item_id


def test_a_keys_fault_releases_the_item_and_the_third_fails_it(store, new_item, stations):
    one, two = stations
    shipment = store.create_shipment("acme", ENVELOPE, [new_item()], now=T0)
    for attempt in (1, 2):
        claim = store.claim(one if attempt == 1 else two, 60, now=T0 + attempt)
        assert claim.attempts == attempt - 1
        released = store.release(one if attempt == 1 else two, claim.item_id, generation=claim.generation,
                                 error=KEY_ERROR, now=T0 + attempt)
        assert released.state is ItemState.QUEUED and released.attempts == attempt
        assert store.get_shipment("acme", shipment).state is ShipmentState.RECEIVED  # back in the queue
    claim = store.claim(one, 60, now=T0 + 3)
    assert claim.attempts == 2
    released = store.release(one, claim.item_id, generation=claim.generation, error=KEY_ERROR, now=T0 + 3)
    assert released.state is ItemState.FAILED and released.attempts == 3
    view = store.get_shipment("acme", shipment)
    assert view.state is ShipmentState.PROCESSING_ERROR and view.items[0].result == KEY_ERROR
    assert [r.event for r in store.audit_trail(claim.item_id)][-1] is AuditEvent.FAILED
    assert store.claim(two, 60, now=T0 + 4) is None


def test_an_untouched_release_counts_no_attempt(store, new_item, stations):
    one, _ = stations
    store.create_shipment("acme", ENVELOPE, [new_item()], now=T0)
    for n in range(5):
        claim = store.claim(one, 60, now=T0 + n)
        assert store.release(one, claim.item_id, generation=claim.generation, now=T0 + n).attempts == 0


def test_max_attempts_is_configurable(db_url, new_item):
    store = Store.open(db_url, max_attempts=1)
    try:
        one = store.authenticate(store.create_token(Role.STATION, "s1"))
        store.create_shipment("acme", ENVELOPE, [new_item()], now=T0)
        claim = store.claim(one, 60, now=T0)
        assert store.release(one, claim.item_id, error=KEY_ERROR, now=T0).state is ItemState.FAILED
    finally:
        store.close()


def test_the_station_api_carries_generations_attempts_and_stale_refusals(service, make_jwe):
    customer = FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme"))
    station = FulfillmentClient(service.url, service.token(Role.STATION, "floor"))
    try:
        service.store.create_shipment("acme", ENVELOPE, [NewItem({"product_id": 29}, make_jwe(), [make_jwe()])])
        claim = station.claim(60)
        assert claim.generation == 1 and claim.attempts == 0
        station.confirm(claim.item_id, 60, generation=claim.generation)
        released = station.release(claim.item_id, generation=claim.generation, error=KEY_ERROR)
        assert released.item_state == "queued" and released.attempts == 1
        again = station.claim(60)
        assert again.generation == 2 and again.attempts == 1
        with pytest.raises(Conflict) as stale:
            station.heartbeat(again.item_id, 60, generation=1)
        assert stale.value.code == STALE_LEASE
        with pytest.raises(Conflict) as stale:
            station.submit(again.item_id, product_data=PRODUCT_DATA, generation=1)
        assert stale.value.code == STALE_LEASE
        assert station.submit(again.item_id, product_data=PRODUCT_DATA, generation=2).item_state == "fulfilled"
    finally:
        customer.close()
        station.close()

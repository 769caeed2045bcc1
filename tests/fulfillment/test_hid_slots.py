"""The daemon over USB-HID on ENUMERATED keys (python-fido2's own enumeration, tests/usb_hub.py):
slots that own their keys, a technician who pulls and swaps keys, keys pulled at every step, a
wedged key, a U2F-only key, a counterfeit key, a lost lease, `station devices` during a run, and
a slot that hits a bug of the station's own."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from counterfeit import self_signed_ca
from shipments import check_fulfilled, post_each
from sqlalchemy import update
from usb_hub import install

from station.cli import cli
from station.customer.orders import seal_item
from station.errors import StationError
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.errors import Conflict
from station.fulfillment.journal import Journal
from station.fulfillment.runner import RunOptions, Station, run_station
from station.fulfillment.store import Role, items

from test_runner import options


@pytest.fixture
def customer(service):
    client = FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme"))
    yield client
    client.close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("STATION_LOCK_DIR", str(tmp_path / "locks"))
    usb = install(monkeypatch, tmp_path / "usb")
    (tmp_path / "usb").mkdir()
    yield usb
    usb.close()


def order(customer, n_items=1, names=("okta",)):
    jwks = customer.jwks("transport")
    sealed = [seal_item(transport_jwks=jwks, options=[options(n) for n in names]) for _ in range(n_items)]
    ids = post_each(customer, sealed)  # one key per shipment (PROTOCOL.md §4)
    return (ids[0] if len(ids) == 1 else ids), sealed


def opts(service, keystore, tmp_path, **kw) -> RunOptions:
    base = dict(service=service.url, token=service.token(Role.STATION, "floor-1"), spec="hid",
                keys_dir=keystore.path, journal_dir=tmp_path / "journal", until_empty=True, trust_test_ca=True,
                poll_seconds=0.05, heartbeat_seconds=0.1, lease_seconds=30, step_timeout=20.0)
    base.update(kw)
    return RunOptions(**base)


class Technician:
    """The daemon's event callback: pulls a key when told to and plugs a fresh one into the same
    port (a quick swap on the same hidraw path) while spares last; `react(event)` adds faults."""

    def __init__(self, hub, spares: int = 0, react=None) -> None:
        self.hub, self.spares, self.react = hub, spares, react
        self.events: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        with self._lock:
            self.events.append(event)
        if self.react:
            self.react(event)
        if event["kind"] == "remove_key":
            path = event["spec"].removeprefix("hid:")
            self.hub.unplug(path)
            with self._lock:
                plug = self.spares > 0
                self.spares -= plug
            if plug:
                self.hub.plug(path=path)

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind]


def test_four_slots_over_hid_share_the_queue_and_never_open_a_key_twice(service, customer, keystore, hub, tmp_path):
    shipment_id, sealed = order(customer, 8)
    for _ in range(4):
        hub.plug()
    tech = Technician(hub, spares=4)
    done = Station(opts(service, keystore, tmp_path, slots=4), on_event=tech).run()
    assert done == 8, tech.events
    check_fulfilled(customer, shipment_id, sealed)
    claimed = [e["item"] for e in tech.of("claimed")]
    assert len(claimed) == len(set(claimed)) == 8  # no item programmed twice
    assert {e["slot"] for e in tech.of("fulfilled")} == {1, 2, 3, 4}
    assert hub.most_openers() == 1  # no key was ever opened by a second slot
    assert all(e["action"] == "ship" for e in tech.of("remove_key"))


@pytest.mark.parametrize("step", ["opened", "preflight", "pin_set", "credential", "configured"])
def test_a_key_pulled_at_any_step_gives_the_item_back_and_a_fresh_key_does_it(
        step, service, customer, keystore, hub, tmp_path):
    shipment_id, sealed = order(customer, 1, names=("graph", "okta"))
    first = hub.plug()
    pulled = []

    def react(event):
        if event["kind"] == "step" and event["step"] == step and not pulled:
            pulled.append(event["item"])
            hub.unplug(first)  # lifted out mid-item

    tech = Technician(hub, spares=1, react=react)
    done = Station(opts(service, keystore, tmp_path), on_event=tech).run()
    assert done == 1, tech.events
    check_fulfilled(customer, shipment_id, sealed)
    if step == "configured":  # every write was made: verify and seal need the key no more, it ships
        assert "key_fault" not in tech.kinds() and len(tech.of("claimed")) == 1
        return
    fault = tech.of("key_fault")[0]
    assert fault["error_code"] == "device_error" and "removed" in fault["message"]
    assert fault["item_state"] == "queued" and fault["attempts"] == 1  # the customer's item went back
    written = step != "opened"
    assert fault["key_touched"] is written
    assert fault["action"] == ("reset" if written else "reuse")
    assert "reset it" in fault["message"] if written else "nothing was written" in fault["message"]
    assert Journal(tmp_path / "journal").open_items() == []


def test_a_wedged_key_is_given_up_after_the_step_deadline(service, customer, keystore, hub, tmp_path):
    shipment_id, sealed = order(customer, 1)
    first = hub.plug()
    wedged = []

    def react(event):
        if event["kind"] == "step" and event["step"] == "pin_set" and not wedged:
            wedged.append(first)
            hub.wedge(first)  # the key stops answering: the next command never returns

    tech = Technician(hub, spares=1, react=react)
    done = Station(opts(service, keystore, tmp_path, step_timeout=1.0), on_event=tech).run()
    assert done == 1
    check_fulfilled(customer, shipment_id, sealed)
    fault = tech.of("key_fault")[0]
    assert "wedged" in fault["message"] and fault["action"] == "unplug" and fault["key_touched"]
    assert fault["item_state"] == "queued"


def test_a_u2f_only_key_on_the_hub_is_refused_without_touching_the_queue(service, customer, keystore, hub, tmp_path):
    shipment_id, sealed = order(customer, 1)
    hub.plug(u2f_only=True)
    good = hub.plug()
    tech = Technician(hub)
    done = Station(opts(service, keystore, tmp_path, slots=2), on_event=tech).run()
    assert done == 1
    refused = tech.of("key_refused")[0]
    assert refused["error_code"] == "device_unsupported" and "U2F" in refused["message"]
    assert refused["action"] == "set_aside" and "set it aside" in refused["message"]
    assert [e["spec"] for e in tech.of("claimed")] == [f"hid:{good}"]  # only the FIDO2 key got an item
    check_fulfilled(customer, shipment_id, sealed)


def test_a_counterfeit_key_is_named_and_set_aside_and_the_item_goes_to_a_genuine_one(
        service, customer, keystore, hub, tmp_path):
    shipment_id, sealed = order(customer, 1)
    hub.plug(attestation_ca=self_signed_ca("Counterfeit FIDO Root"))
    tech = Technician(hub, spares=1)
    assert Station(opts(service, keystore, tmp_path), on_event=tech).run() == 1
    fault = tech.of("key_fault")[0]
    assert "not genuine" in fault["message"] and fault["action"] == "set_aside" and fault["key_touched"]
    assert tech.of("remove_key")[0]["action"] == "set_aside"
    check_fulfilled(customer, shipment_id, sealed)


def test_an_item_no_key_can_do_fails_after_three_keys(service, customer, keystore, hub, tmp_path):
    # a 5.4 YubiKey cannot force a PIN change: each key refuses before writing, the item fails on the 3rd
    shipment_id, _ = order(customer, 1)
    for _ in range(3):
        hub.plug("yubikey-5-nfc-5.4")
    tech = Technician(hub)
    Station(opts(service, keystore, tmp_path), on_event=tech).run()
    faults = tech.of("key_fault")
    assert [f["attempts"] for f in faults] == [1, 2, 3]
    assert [f["item_state"] for f in faults] == ["queued", "queued", "failed"]
    assert all(f["error_code"] == "device_unsupported" and not f["key_touched"] for f in faults)
    view = customer.get_shipment(shipment_id).model_dump(mode="json")
    assert view["shipment_state"]["shipment_state_id"] == 8
    assert view["shipment_items"][0]["product_data"][0]["error_code"] == "device_unsupported"


def _supersede(service, item_id: int) -> None:
    """As if the service had handed the item to another claim (another station, past the grace)."""
    with service.store.engine.begin() as conn:
        conn.execute(update(items).where(items.c.id == item_id).values(lease_generation=items.c.lease_generation + 1))


@pytest.mark.parametrize("when", ["while writing", "at submit"])
def test_a_lost_lease_says_do_not_ship_and_submits_nothing(when, service, customer, keystore, hub, tmp_path):
    shipment_id, _ = order(customer, 1)
    hub.plug()
    beat = 0.1 if when == "while writing" else 100.0
    station = Station(opts(service, keystore, tmp_path, heartbeat_seconds=beat))
    refused = threading.Event()
    heartbeat = station.client.heartbeat

    def heard(*args, **kw):
        try:
            return heartbeat(*args, **kw)
        except Conflict:
            refused.set()
            raise

    station.client.heartbeat = heard

    def react(event):
        if event["kind"] == "step" and event["step"] == ("pin_set" if when == "while writing" else "sealed"):
            _supersede(service, event["item"])
            if when == "while writing":
                assert refused.wait(30)  # the next heartbeat hears of it

    tech = Technician(hub, react=react)
    station._emit = tech
    assert station.run() == 0
    stale = tech.of("stale")[0]
    assert "DO NOT SHIP" in stale["message"] and "reset" in stale["message"]
    assert tech.of("remove_key")[-1]["action"] == "do_not_ship"
    assert "fulfilled" not in tech.kinds()
    view = customer.get_shipment(shipment_id).model_dump(mode="json")
    assert view["shipment_items"][0]["product_data"] == []  # nothing was submitted for it
    assert Journal(tmp_path / "journal").open_items() == []  # journalled as stale, closed


def test_station_devices_during_a_run_lists_held_keys_as_in_use_and_opens_none(
        service, customer, keystore, hub, tmp_path):
    order(customer, 1)
    held = hub.plug()
    free = hub.plug("crescendo-key")  # a Crescendo Key cannot force a PIN change: we leave it free
    seen = {}

    def react(event):
        if event["kind"] == "step" and event["step"] == "pin_set":
            before = hub.opened(held)
            result = CliRunner().invoke(cli, ["devices", "--json"])
            seen.update(rows=json.loads(result.output), opened=hub.opened(held) - before, rc=result.exit_code)

    tech = Technician(hub, react=react)
    assert Station(opts(service, keystore, tmp_path), on_event=tech).run() == 1
    assert seen["rc"] == 0 and seen["opened"] == 0  # the key being written was not opened again
    rows = {r["path"]: r for r in seen["rows"]}
    assert rows[held]["in_use"] is True and rows[free]["model"].startswith("HID Crescendo")


def test_an_unexpected_error_restarts_the_slot_and_gives_the_item_back(
        service, customer, keystore, hub, tmp_path, monkeypatch):
    import station.fulfillment.runner as runner

    shipment_id, sealed = order(customer, 1)
    hub.plug()
    real = runner.provision_item
    calls = []

    def buggy(**kw):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a bug of the station's own")
        return real(**kw)

    monkeypatch.setattr(runner, "provision_item", buggy)
    tech = Technician(hub, spares=1)
    assert Station(opts(service, keystore, tmp_path), on_event=tech).run() == 1
    restarted = tech.of("slot_restarted")[0]
    assert "KeyError" in restarted["message"] and "errors.log" in restarted["message"]
    assert "Traceback" in (tmp_path / "journal" / "errors.log").read_text()
    check_fulfilled(customer, shipment_id, sealed)


def test_a_slot_that_keeps_failing_stops_the_daemon_with_an_error(
        service, customer, keystore, hub, tmp_path, monkeypatch):
    import station.fulfillment.runner as runner

    order(customer, 1)
    hub.plug()

    def always(**kw):
        raise KeyError("a bug of the station's own")

    monkeypatch.setattr(runner, "provision_item", always)
    monkeypatch.setattr(runner, "MAX_RESTARTS", 2)
    with pytest.raises(StationError) as fatal:
        run_station(opts(service, keystore, tmp_path, until_empty=False))
    assert fatal.value.code == "slot_failed" and "errors.log" in fatal.value.message
    assert service.store.counts()["queued"] == 1  # the item is back in the queue, untouched

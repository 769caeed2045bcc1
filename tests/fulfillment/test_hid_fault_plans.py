"""The daemon against the virtual keys' own fault plans (station/virtual/faults.py) on the virtual
USB bus of the faithful-virtual issue, where a second opener breaks the first one's CTAPHID
channel as on Linux: so a slot that opened a key another slot holds would fail its item."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from shipments import check_fulfilled

from station.cli import cli
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.runner import Station
from station.fulfillment.store import Role

from test_hid_slots import opts, order


@pytest.fixture
def customer(service):
    client = FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme"))
    yield client
    client.close()


@pytest.fixture
def bus(virtual_hid_bus, tmp_path, monkeypatch):
    monkeypatch.setenv("STATION_LOCK_DIR", str(tmp_path / "locks"))
    return virtual_hid_bus


class Technician:
    def __init__(self, bus, spares: int) -> None:
        self.bus, self.spares, self.events = bus, spares, []
        self._listing = threading.Lock()  # CliRunner swaps sys.stdout: one listing at a time

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        if event["kind"] == "step" and event["step"] == "pin_set" and self._listing.acquire(blocking=False):
            result = CliRunner().invoke(cli, ["devices", "--json"])  # a second process would do the same
            self.events.append({"kind": "devices", "rc": result.exit_code, "rows": json.loads(result.output)})
        if event["kind"] == "remove_key":
            self.bus.unplug(event["spec"].removeprefix("hid:"))
            if self.spares:
                self.spares -= 1
                self.bus.plug_new()

    def of(self, kind):
        return [e for e in self.events if e["kind"] == kind]


@pytest.mark.parametrize("fault", ["pull-during:setPIN", "pull-during:makeCredential", "pull-after:3",
                                   "wedge-during:makeCredential", "no-touch:0.2"])
def test_two_slots_survive_a_faulty_key_and_every_item_ships_once(fault, bus, service, customer, keystore, tmp_path):
    shipment_id, sealed = order(customer, 3)
    bus.plug_new(fault=fault)
    bus.plug_new()
    tech = Technician(bus, spares=3)
    done = Station(opts(service, keystore, tmp_path, slots=2, step_timeout=1.5), on_event=tech).run()
    if done != 3:
        pytest.fail(json.dumps([e for e in tech.events if e["kind"] not in ("step", "waiting_key", "devices")]))
    check_fulfilled(customer, shipment_id, sealed)
    faults = tech.of("key_fault")
    assert len(faults) == 1 and faults[0]["item_state"] == "queued", json.dumps(faults)
    expected = "user_presence_timeout" if fault.startswith("no-touch") else "device_error"
    assert faults[0]["error_code"] == expected, json.dumps(faults)
    listing = tech.of("devices")[0]
    assert listing["rc"] == 0 and any(r.get("in_use") for r in listing["rows"])

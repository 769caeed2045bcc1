"""The daemon reports its slots to the service (status.py), and the operator sees them."""

from __future__ import annotations

import httpx
from shipments import post_each

from station.customer.orders import seal_item
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.runner import RunOptions, run_station
from station.fulfillment.status import StatusReporter
from station.fulfillment.store import Role

OPTIONS = {"rp": {"id": "acme.okta.com", "name": "Acme"}, "user": {"id": "dXNlcg", "name": "u", "displayName": "U"},
           "challenge": "Y2hhbGxlbmdlY2hhbGxlbmdl", "pubKeyCredParams": [{"type": "public-key", "alg": -7}]}


def stations(service, token) -> dict:
    answer = httpx.get(service.url + "/v1/operator/stations", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return {s["name"]: s for s in answer.json()}


def test_the_reporter_follows_the_slots_and_marks_the_timeline(service):
    operator = service.token(Role.OPERATOR, "ops")
    with FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme")) as customer, \
            FulfillmentClient(service.url, service.token(Role.STATION, "bench-2")) as station:
        [shipment_id] = post_each(customer, [seal_item(transport_jwks=customer.jwks("transport"), options=[OPTIONS])])
        claimed = station.claim()
        forwarded = []
        reporter = StatusReporter(station, slots=2, on_event=forwarded.append, version="test")
        reporter({"kind": "waiting_key", "slot": 1})
        reporter({"kind": "claimed", "slot": 1, "item": claimed.item_id, "shipment": shipment_id,
                  "model": "YubiKey 5 NFC", "serial": "31415926", "device": "virtual:/tmp/k.json"})
        reporter({"kind": "touch", "slot": 1, "item": claimed.item_id, "device": "k"})
        reporter({"kind": "queue_empty", "slot": 2})
        assert [e["kind"] for e in forwarded] == ["waiting_key", "claimed", "touch", "queue_empty"]
        assert reporter.send()
        view = stations(service, operator)["bench-2"]
        assert [(s["slot"], s["state"], s.get("item"), s.get("serial")) for s in view["slots"]] == [
            (1, "waiting_touch", claimed.item_id, "31415926"), (2, "queue_empty", None, None)]
        assert view["version"] == "test" and view["leases"] == 1 and not view["silent"]
        reporter({"kind": "fulfilled", "slot": 1, "item": claimed.item_id, "serial": "31415926"})
        reporter({"kind": "remove_key", "slot": 1, "device": "k"})
        reporter.stop()  # sends a last report: every slot stopped
        view = stations(service, operator)["bench-2"]
        assert [s["state"] for s in view["slots"]] == ["stopped", "stopped"] and view["items_done"] == 1
    timeline = httpx.get(f"{service.url}/v1/operator/shipments/{shipment_id}",
                         headers={"Authorization": f"Bearer {operator}"}).json()["timeline"]
    assert [(e["event"], e.get("slot")) for e in timeline if e["event"] == "on_slot"] == [("on_slot", 1)]


def test_a_service_without_the_route_is_not_asked_again(service):
    class Old:
        calls = 0

        def report_status(self, report):
            from station.fulfillment.errors import NotFound

            Old.calls += 1
            raise NotFound("no route")

    reporter = StatusReporter(Old(), slots=1)
    assert not reporter.send() and not reporter.send()
    assert Old.calls == 1


def test_station_run_reports_its_slots(service, keystore, tmp_path):
    operator = service.token(Role.OPERATOR, "ops")
    with FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme")) as customer:
        post_each(customer, [seal_item(transport_jwks=customer.jwks("transport"), options=[OPTIONS]) for _ in range(2)])
    opts = RunOptions(service=service.url, token=service.token(Role.STATION, "floor-1"),
                      spec=f"virtual:{tmp_path}/vkeys/", keys_dir=keystore.path, journal_dir=tmp_path / "journal",
                      profile="yubikey-5-nfc-5.7", until_empty=True, slots=2, poll_seconds=0.05,
                      heartbeat_seconds=5)
    assert run_station(opts) == 2
    view = stations(service, operator)["floor-1"]
    assert view["items_done"] == 2 and [s["state"] for s in view["slots"]] == ["stopped", "stopped"]
    assert view["reported_at"] is not None and view["leases"] == 0

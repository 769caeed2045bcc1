"""The station daemon against a real service on loopback: round trips, replay refusal, and a
kill -9 at every step of an item followed by a restart."""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest
from shipments import check_fulfilled, merged_view, post_each

from station.customer.orders import seal_item, shipment_body
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.journal import Journal
from station.fulfillment.runner import FAULT_ENV, RunOptions, Station
from station.fulfillment.store import Role

OPTIONS = Path(__file__).resolve().parents[2] / "fixtures" / "options"


def options(name: str) -> dict:
    return json.loads((OPTIONS / f"{name}.json").read_text())


@pytest.fixture
def customer(service):
    client = FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme"))
    yield client
    client.close()


def order(customer, n_items: int = 1, names=("okta",)):
    jwks = customer.jwks("transport")
    items = [seal_item(transport_jwks=jwks, options=[options(n) for n in names]) for _ in range(n_items)]
    return post_each(customer, items), items  # one shipment per item


def station_opts(service, keystore, tmp_path, **kw) -> RunOptions:
    base = dict(service=service.url, token=service.token(Role.STATION, "bench-1"), spec=f"virtual:{tmp_path}/vkeys/",
                keys_dir=keystore.path, journal_dir=tmp_path / "journal", profile="yubikey-5-nfc-5.7",
                until_empty=True, poll_seconds=0.05, heartbeat_seconds=0.2)
    base.update(kw)
    return RunOptions(**base)


def test_the_daemon_fulfills_every_item_of_a_shipment(service, customer, keystore, tmp_path):
    shipment_id, items = order(customer, 3, names=("graph", "okta"))
    events = []
    done = Station(station_opts(service, keystore, tmp_path), on_event=events.append).run()
    assert done == 3
    check_fulfilled(customer, shipment_id, items)
    assert [e["kind"] for e in events].count("remove_key") == 3
    assert Journal(tmp_path / "journal").open_items() == []


def test_two_slots_share_the_queue_without_claiming_an_item_twice(service, customer, keystore, tmp_path):
    shipment_id, items = order(customer, 6)
    events = []
    done = Station(station_opts(service, keystore, tmp_path, slots=2), on_event=events.append).run()
    assert done == 6
    claimed = [e["item"] for e in events if e["kind"] == "claimed"]
    assert len(claimed) == len(set(claimed)) == 6
    assert {e["slot"] for e in events if e["kind"] == "fulfilled"} == {1, 2}
    check_fulfilled(customer, shipment_id, items)


def test_a_request_already_fulfilled_is_refused_when_it_comes_again(service, customer, keystore, tmp_path):
    shipment_id, items = order(customer, 1)
    opts = station_opts(service, keystore, tmp_path)
    Station(opts).run()
    # the customer seals the very same payloads again: a new JWE (passes the door), same requestIds
    again = items[0]
    from station.protocol.jose import open_request

    pin_payload = open_request(again.pin_request_jwe, keystore=keystore).model_dump(mode="json", exclude_none=True)
    cred_payload = open_request(again.credential_request_jwes[0], keystore=keystore).model_dump(mode="json", exclude_none=True)
    from station.protocol.jose import seal_request

    jwk = customer.jwks("transport")["keys"][0]
    body = shipment_body([again])
    custom = body["shipment_items"][0]["product_customizations"][0]
    custom["fido_pin_request"] = seal_request(pin_payload, transport_jwk=jwk, kid=jwk["kid"])
    custom["fido_credential_requests"] = [seal_request(cred_payload, transport_jwk=jwk, kid=jwk["kid"])]
    replay = customer.post_shipment(body).shipment_id
    events = []
    Station(opts, on_event=events.append).run()
    view = customer.get_shipment(replay).model_dump(mode="json")
    assert view["shipment_items"][0]["product_data"][0]["error_code"] == "invalid_request"
    assert not any(e["kind"] == "step" and e.get("step") == "pin_set" for e in events)  # no key written


def test_a_not_fresh_key_gives_the_item_back(service, customer, keystore, tmp_path):
    from station.virtual import new_virtual

    shipment_id, items = order(customer, 2)
    statefile = tmp_path / "one.json"
    new_virtual(statefile, "yubikey-5-nfc-5.7").close()
    opts = station_opts(service, keystore, tmp_path, spec=f"virtual:{statefile}")
    events = []
    assert Station(opts, on_event=events.append).run() == 1  # the second item finds the key used
    fault = next(e for e in events if e["kind"] == "key_fault")
    assert fault["error_code"] == "device_not_fresh" and fault["action"] == "reset"
    assert fault["item_state"] == "queued" and fault["attempts"] == 1  # back in the queue for another key
    view = merged_view(customer, shipment_id)
    assert view["shipment_state"]["shipment_state_id"] == [100, 102]  # one item back in the queue
    done = Station(station_opts(service, keystore, tmp_path)).run()  # fresh keys finish it
    assert done == 1
    check_fulfilled(customer, shipment_id, items)


# --------------------------------------------------------------------------- kill -9 matrix
CRASH_POINTS = ["claimed", "confirmed", "touching", "credential-1", "credential-2", "sealed", "submitting", "acknowledged"]


def run_station_process(service, keystore, tmp_path, token, *extra, fault=None):
    env = dict(os.environ)
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "station.cli", "run", "--service", service.url, "--token", token,
           "--device", f"virtual:{tmp_path}/vkeys/", "--profile", "yubikey-5-nfc-5.7", "--keys", str(keystore.path),
           "--journal", str(tmp_path / "journal"), "--json", "--lease", "10", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_station_killed_at_any_step_loses_nothing_and_fulfills_once(point, service, customer, keystore, tmp_path):
    shipment_id, items = order(customer, 1, names=("graph", "okta"))
    token = service.token(Role.STATION, "crashy")
    crashed = run_station_process(service, keystore, tmp_path, token, "--once", fault=point)
    assert crashed.returncode == -9, crashed.stderr
    restarted = run_station_process(service, keystore, tmp_path, token, "--until-empty")
    assert restarted.returncode == 0, restarted.stderr
    events = [json.loads(line) for line in restarted.stdout.splitlines() if line.startswith("{")]
    kinds = [e["kind"] for e in events]
    check_fulfilled(customer, shipment_id, items)
    if point in ("touching", "credential-1", "credential-2"):
        assert "interrupted_key" in kinds  # the written key is reported for a reset
        assert kinds.count("fulfilled") == 1  # and the item was done again on a fresh key
    elif point in ("sealed", "submitting"):
        assert "resubmitted" in kinds and "fulfilled" not in kinds  # not programmed twice
    elif point == "acknowledged":
        assert "resubmitted" in kinds and "fulfilled" not in kinds and "conflict" not in kinds
    else:  # claimed: released untouched, then done
        assert "interrupted_key" not in kinds and kinds.count("fulfilled") == 1
    assert Journal(tmp_path / "journal").open_items() == []
    store_items = service.store.counts()
    assert store_items.get("fulfilled", 0) >= 1


def test_a_station_killed_after_writing_keeps_its_item_from_other_stations_until_it_gives_up(
        service, customer, keystore, tmp_path):
    # lease fencing in the kill -9 matrix: the first station confirmed its claim (a write) and
    # died; its lease runs out, yet no other station may program a second key for the item
    # until the first one comes back and gives the item up (or the grace period passes)
    shipment_id, items = order(customer, 1)
    token = service.token(Role.STATION, "first")
    crashed = run_station_process(service, keystore, tmp_path, token, "--once", fault="touching")
    assert crashed.returncode == -9, crashed.stderr
    other = FulfillmentClient(service.url, service.token(Role.STATION, "second"))
    try:
        with service.store.engine.begin() as conn:  # the first station's 10 s lease ran out long ago
            from sqlalchemy import update

            from station.fulfillment.store import items as item_rows
            conn.execute(update(item_rows).values(lease_expires=time.time() - 1))
        assert other.claim(30) is None  # a write was reported: not handed to a second station
        restarted = run_station_process(service, keystore, tmp_path, token, "--until-empty")
        assert restarted.returncode == 0, restarted.stderr
        kinds = [json.loads(line)["kind"] for line in restarted.stdout.splitlines() if line.startswith("{")]
        assert "interrupted_key" in kinds and kinds.count("fulfilled") == 1  # given up, then done on a fresh key
    finally:
        other.close()
    check_fulfilled(customer, shipment_id, items)


def test_a_bad_token_stops_the_daemon_with_one_line(service, keystore, tmp_path):
    result = run_station_process(service, keystore, tmp_path, "not-a-token", "--until-empty")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("unauthorized") or "401" in last or "token" in last.lower(), result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_service_is_retried_until_stopped(keystore, tmp_path):
    import signal
    import socket
    import time

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "station.cli", "run", "--service", f"http://127.0.0.1:{port}", "--token", "t",
           "--device", f"virtual:{tmp_path}/vkeys/", "--profile", "yubikey-5-nfc-5.7", "--keys", str(keystore.path),
           "--journal", str(tmp_path / "journal"), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kinds = []
    while kinds.count("service_error") < 2:  # it keeps trying (the start-up time depends on the load)
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        kinds.append(json.loads(line)["kind"])
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    kinds += [json.loads(line)["kind"] for line in out.splitlines() if line.startswith("{")]
    assert "stopping" in kinds
    assert proc.returncode == 0, err


def test_a_stop_before_the_key_is_written_gives_the_item_back_untouched(service, customer, keystore, tmp_path):
    shipment_id, items = order(customer, 2)
    station = Station(station_opts(service, keystore, tmp_path))
    events = []

    def on_event(event):
        events.append(event)
        if event.get("step") == "opened":  # SIGTERM arrives while the requests are being opened
            station.stop.set()

    station._emit = on_event
    assert station.run() == 0
    kinds = [e["kind"] for e in events]
    assert "abandoned" in kinds and "fulfilled" not in kinds
    assert not any(e.get("step") == "pin_set" for e in events)
    assert service.store.counts()["queued"] == 2  # both items still in the queue, none claimed
    assert Journal(tmp_path / "journal").open_items() == []


def test_a_stop_after_the_key_is_written_finishes_that_item_first(service, customer, keystore, tmp_path):
    shipment_id, items = order(customer, 2)
    station = Station(station_opts(service, keystore, tmp_path))
    events = []

    def on_event(event):
        events.append(event)
        if event.get("step") == "pin_set":
            station.stop.set()

    station._emit = on_event
    assert station.run() == 1  # the item in hand is finished, the next one is not started
    assert [e["kind"] for e in events].count("fulfilled") == 1
    counts = service.store.counts()
    assert counts["fulfilled"] == 1 and counts["queued"] == 1

"""`station run --device pcsc --slots 2` over the real pcscd with two vpcd readers, each holding a
card served by `station virtual serve` (as two Crescendo cards or NFC YubiKeys on two readers).

The opening scenario of issue 12: both slots died in the first second (one polling the other's
card, the other with "Card was reset"), and the daemon exited 0 with the queue stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from pcsc_cards import start_serve, stop_serve
from shipments import check_fulfilled, post_each

from station.customer.orders import seal_item
from station.device.discovery import reader_states
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.runner import FAULT_ENV
from station.fulfillment.store import Role
from station.virtual import new_virtual

from test_runner import options

pytestmark = pytest.mark.pcscd

READERS = {"Virtual PCD 00 00": 35963, "Virtual PCD 00 01": 35964}


@pytest.fixture
def customer(service):
    client = FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme"))
    yield client
    client.close()


class Readers:
    """The two vpcd readers; insert(reader) puts a fresh virtual key's card in one, pull(reader)
    takes it out (the serve process ends, as a card lifted from the reader)."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.serving: dict[str, subprocess.Popen] = {}
        self.processes: list[subprocess.Popen] = []
        self.inserted = 0

    def insert(self, reader: str, profile: str = "yubikey-5-nfc-5.7", fault: str | None = None) -> None:
        self.inserted += 1
        statefile = self.tmp_path / f"card-{self.inserted}.json"
        new_virtual(statefile, profile).close()
        self.serving[reader] = start_serve(statefile, self.processes, port=READERS[reader], fault=fault)
        self.wait(reader, present=True)

    def pull(self, reader: str) -> None:
        process = self.serving.pop(reader, None)
        if process is not None:
            stop_serve(process)
            self.wait(reader, present=False)

    @staticmethod
    def wait(reader: str, *, present: bool, seconds: float = 15.0) -> None:
        """Until pcscd's reader state shows the card in (or out), connecting to nothing: as a
        technician's hand, it never touches a card a slot may be opening."""
        deadline = time.monotonic() + seconds
        while reader_states([reader]).get(reader, (None, 0))[0] is not present:
            assert time.monotonic() < deadline, f"pcscd did not see the card {'in' if present else 'out of'} {reader}"
            time.sleep(0.05)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                stop_serve(process)


@pytest.fixture
def readers(pcscd, tmp_path):
    assert set(READERS) <= set(pcscd), pcscd
    board = Readers(tmp_path)
    yield board
    board.close()


def station_cmd(service, keystore, tmp_path, token, *extra):
    return [sys.executable, "-m", "station.cli", "run", "--service", service.url, "--token", token,
            "--keys", str(keystore.path), "--journal", str(tmp_path / "journal"), "--json",
            "--trust-test-ca", "--lease", "30", *extra]


class Technician:
    """Reads the daemon's JSON event lines; pulls a card when told to remove it and (while
    `spare` keys last) puts a fresh one in that reader."""

    def __init__(self, process: subprocess.Popen, readers: Readers, spare: int = 0) -> None:
        self.process, self.readers, self.spare = process, readers, spare
        self.events: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            self.events.append(event)
            reader = (event.get("spec") or "").removeprefix("pcsc:")
            if event["kind"] == "remove_key" and reader in READERS:
                self.readers.pull(reader)
                if self.spare > 0:
                    self.spare -= 1
                    self.readers.insert(reader)

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]


def finish(process, technician, timeout: float):
    """(exit status, stderr) of the daemon; a daemon still running after `timeout` fails the
    test with what it said so far."""
    try:
        rc = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the daemon did not finish: {technician.events} {process.stderr.read()[-3000:]}")
    technician.thread.join(timeout=30)
    return rc, process.stderr.read()


def test_two_slots_on_two_readers_program_both_cards_and_exit_0(service, customer, keystore, readers, tmp_path):
    jwks = customer.jwks("transport")
    items = [seal_item(transport_jwks=jwks, options=[options("okta")]) for _ in range(4)]
    shipment_id = post_each(customer, items)  # one key per shipment (PROTOCOL.md §4)
    for reader in READERS:
        readers.insert(reader)
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    process = subprocess.Popen(
        station_cmd(service, keystore, tmp_path, service.token(Role.STATION, "floor-1"),
                    "--device", "pcsc", "--slots", "2", "--until-empty"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    technician = Technician(process, readers, spare=2)
    rc, stderr = finish(process, technician, timeout=150)
    assert "Traceback" not in stderr, stderr
    assert rc == 0, (stderr, technician.kinds())
    assert technician.kinds().count("fulfilled") == 4, technician.events
    check_fulfilled(customer, shipment_id, items)
    fulfilled_on = {e["spec"] for e in technician.events if e["kind"] == "claimed"}
    assert fulfilled_on == {f"pcsc:{r}" for r in READERS}  # both readers worked, side by side


def test_a_card_pulled_mid_item_on_one_reader_gives_the_item_back_while_the_other_reader_works(
        service, customer, keystore, readers, tmp_path):
    """Two slots on two readers; the first card of reader 00 00 leaves the field while its
    makeCredential runs (its credential is written, no answer comes). The item goes back to the
    queue, the technician is told to reset that card, and every item ships from a good card."""
    jwks = customer.jwks("transport")
    items = [seal_item(transport_jwks=jwks, options=[options("okta")]) for _ in range(3)]
    shipment_id = post_each(customer, items)
    faulty, other = READERS
    readers.insert(faulty, fault="pull-during:makeCredential")
    readers.insert(other)
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    process = subprocess.Popen(
        station_cmd(service, keystore, tmp_path, service.token(Role.STATION, "floor-1"),
                    "--device", "pcsc", "--slots", "2", "--until-empty"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    technician = Technician(process, readers, spare=3)
    rc, stderr = finish(process, technician, timeout=150)
    assert "Traceback" not in stderr, stderr
    assert rc == 0, (stderr, technician.kinds())
    faults = [e for e in technician.events if e["kind"] == "key_fault"]
    assert len(faults) == 1, technician.events
    assert faults[0]["spec"] == f"pcsc:{faulty}" and faults[0]["error_code"] == "device_error"
    assert faults[0]["item_state"] == "queued" and faults[0]["key_touched"] is True  # back for another key
    assert faults[0]["action"] == "reset" and "reset it" in faults[0]["message"]
    assert technician.kinds().count("fulfilled") == 3, technician.events
    check_fulfilled(customer, shipment_id, items)

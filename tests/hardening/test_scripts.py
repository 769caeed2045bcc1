"""The hardening scripts: secret_scan.py (unit and command line), a provisioning round trip and
the kill -9 matrix scanned for PINs, and a short run of fuzz_atheris.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from station.customer.orders import seal_item
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.runner import RunOptions, Station
from station.fulfillment.store import Role
from station.protocol.jose import open_response

from shipments import merged_view, post_each

from .conftest import ROOT, load_script

secret_scan = load_script("secret_scan")
fault_matrix = load_script("fault_matrix")
fuzz_atheris = load_script("fuzz_atheris")

OPTIONS = [json.loads((ROOT / "fixtures" / "options" / f"{n}.json").read_text()) for n in ("graph", "okta")]

# -- secret_scan.py ----------------------------------------------------------------------------


@pytest.mark.parametrize("content, form", [
    (b'{"pin": "048215"}', "plain"),
    (b"PIN=048215\n", "plain"),
    ("pin 048215".encode("utf-16-le"), "utf16-le"),
    ("pin 048215".encode("utf-16-be"), "utf16-be"),
    (b'{"pin": 48215}', "json-number"),
    (b"[1, 48215]", "json-number"),
])  # fmt: skip
def test_scan_finds_each_form(tmp_path, content, form):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leak.bin").write_bytes(b"\x00junk" + content + b"junk")
    findings = secret_scan.scan([tmp_path], ["048215"])
    assert form in {f.form for f in findings}
    assert all(f.pin_index == 1 and f.path.name == "leak.bin" for f in findings)


@pytest.mark.parametrize("content", [
    b"issuedAt 1700482150123",  # inside a longer run of digits: a coincidence
    b"serial 90482159",
    b'{"n": 48215.5}',
    "x 1048215".encode("utf-16-le"),
    b"nothing here",
])  # fmt: skip
def test_scan_ignores_digits_that_are_not_the_pin(tmp_path, content):
    (tmp_path / "f").write_bytes(content)
    assert secret_scan.scan([tmp_path], ["048215"]) == []


def test_scan_finds_a_match_across_a_chunk_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(secret_scan, "CHUNK_BYTES", 64)
    (tmp_path / "big").write_bytes(b"a" * 60 + b" 048215 " + b"b" * 200)
    assert [f.offset for f in secret_scan.scan([tmp_path], ["048215"])] == [61]


def test_scan_refuses_a_pin_that_is_not_digits_without_echoing_it():
    with pytest.raises(ValueError) as refused:
        secret_scan.patterns("12ab56")
    assert "12ab56" not in str(refused.value)


def _scan_cli(*paths, stdin: str):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "secret_scan.py"), *map(str, paths)],
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_scan_command_reads_pins_from_stdin_and_never_prints_them(tmp_path):
    (tmp_path / "log.txt").write_text("set PIN 731902 on key\n")
    (tmp_path / "db").write_bytes(b"clean")
    found = _scan_cli(tmp_path, stdin="555123\n731902\n")
    assert found.returncode == 1
    assert "PIN #2 (plain)" in found.stdout and "log.txt" in found.stdout
    assert "731902" not in found.stdout + found.stderr
    clean = _scan_cli(tmp_path / "db", stdin="731902\n")
    assert clean.returncode == 0 and "0 findings" in clean.stdout
    assert _scan_cli(tmp_path, stdin="").returncode == 2  # nothing to look for is a usage error
    assert _scan_cli(tmp_path / "missing", stdin="731902\n").returncode == 2


# -- a provisioning round trip, scanned ----------------------------------------------------------


def test_a_provisioning_round_trip_leaves_no_pin_anywhere(tmp_path, caplog):
    """The daemon fulfills two items through a real service; the customer opens the responses
    (so the test knows the PINs); nothing the run wrote holds one: database, journal, virtual key
    files, key store, the station's events and every log record."""
    caplog.set_level(logging.DEBUG)
    with fault_matrix.Service(tmp_path / "service") as service, \
            FulfillmentClient(service.url, service.store.create_token(Role.CUSTOMER, "acme")) as customer:
        items = [seal_item(transport_jwks=customer.jwks("transport"), options=OPTIONS) for _ in range(2)]
        shipment_id = post_each(customer, items)
        events: list[dict] = []
        opts = RunOptions(service=service.url, token=service.store.create_token(Role.STATION, "s1"),
                          spec=f"virtual:{tmp_path}/vkeys/", keys_dir=service.keystore.path,
                          journal_dir=tmp_path / "journal", profile="yubikey-5-nfc-5.7", until_empty=True,
                          poll_seconds=0.05, heartbeat_seconds=0.5)
        assert Station(opts, on_event=events.append).run() == 2
        view = merged_view(customer, shipment_id)
        pins = []
        for item_view, item in zip(view["shipment_items"], items):
            opened = open_response(item_view["product_data"][0]["fido_pin_response"],
                                   response_private_key=item.response_key,
                                   signing_jwks=customer.jwks("signing"), request_jwe=item.pin_request_jwe)
            pins.append(opened.pin)
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    (tmp_path / "log.txt").write_text("\n".join(r.getMessage() for r in caplog.records))
    assert len(pins) == 2 and all(p.isdigit() for p in pins)
    assert {p.name for p in (tmp_path / "service").iterdir()} >= {"service.db", "keys"}
    assert len(list((tmp_path / "vkeys").glob("*.json"))) >= 2  # (a fresh key waits for the next item)
    assert secret_scan.scan([tmp_path], pins) == []
    planted = tmp_path / "journal" / "planted"  # the scan over this very tree does see a PIN
    planted.write_text(f'{{"pin": "{pins[0]}"}}')
    assert [f.path for f in secret_scan.scan([tmp_path], pins)] == [planted]


# -- fault_matrix.py ---------------------------------------------------------------------------


def test_the_fault_matrix_over_two_points_loses_nothing_and_leaks_no_pin(tmp_path, capsys):
    """One repeat over a crash before the key is written and one after it is sealed."""
    assert fault_matrix.main(["--repeats", "1", "--points", "touching,sealed", "--scan", "--json",
                              "--keep", str(tmp_path / "matrix")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["secret_findings"] == [] and report["pins_scanned"] == 2
    cells = {c["point"]: c for c in report["cells"]}
    assert set(cells) == {"touching", "sealed"}
    for cell in cells.values():
        assert (cell["crashed_rc"], cell["restart_rc"]) == (-9, 0)
        assert cell["lost"] == cell["duplicated"] == cell["orphaned"] == 0
    assert cells["touching"]["reported"] == 1  # the half-written key is named for a reset
    assert cells["sealed"]["reported"] == 0  # the sealed result was resubmitted, no key redone
    written = [p for p in (tmp_path / "matrix").rglob("*") if p.is_file()]
    assert any(p.name == "service.db" for p in written) and any(p.name == "journal.jsonl" for p in written)


def test_the_fault_matrix_counts_an_unreported_key_as_orphaned(tmp_path):
    """The checker itself: a written key that nobody reported, and one holding a full copy."""
    vkeys = tmp_path / "vkeys"
    vkeys.mkdir()
    (vkeys / "a.json").write_text(json.dumps({"serial": 1, "pin_hash": "x", "credentials": [{}]}))
    (vkeys / "b.json").write_text(json.dumps({"serial": 2, "pin_hash": "x", "credentials": [{}, {}]}))
    (vkeys / "c.json").write_text(json.dumps({"serial": 3, "pin_hash": None, "credentials": []}))
    (vkeys / "d.json").write_text(json.dumps({"serial": 4, "pin_hash": "x", "credentials": []}))
    cell = fault_matrix.Cell("touching", 1, crashed_rc=-9, restart_rc=0)
    fault_matrix.Matrix._count_keys(cell, vkeys, [{"kind": "interrupted_key", "serial": "4"}], shipped="9")
    assert (cell.orphaned, cell.duplicated, cell.reported) == (1, 1, 1)
    assert not cell.ok


def test_the_fault_matrix_refuses_unknown_points():
    with pytest.raises(SystemExit):
        fault_matrix.main(["--points", "nowhere"])


# -- fuzz_atheris.py ---------------------------------------------------------------------------


def test_the_fuzz_script_runs_every_target_without_failures(capsys):
    assert fuzz_atheris.main(["--engine", "hypothesis", "--runs", "25", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["target"] for r in report["results"]} == set(fuzz_atheris.SHARES)
    assert all(r["runs"] >= 25 and not r["failures"] for r in report["results"])


def test_the_fuzz_recorder_records_an_escaping_exception_and_goes_on(tmp_path):
    def target(data: bytes) -> None:
        if data.startswith(b"!"):
            raise KeyError("boom")

    recorder = fuzz_atheris.Recorder(target, tmp_path / "record.json")
    for data in (b"ok", b"!1", b"!2", b"fine"):
        recorder(data)
    recorder.save()
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["runs"] == 4
    assert list(record["failures"].values()) == [2] and "KeyError" in next(iter(record["failures"]))
    assert (tmp_path / "crash-1.bin").read_bytes() == b"!1"


def test_no_pin_anywhere_a_demo_run_wrote(tmp_path):
    from station.demo import DemoOptions, run_demo

    kept = tmp_path / "demo"
    result = run_demo(DemoOptions(keys=4, workdir=kept))
    assert result.ok
    pins = [row.pin.reveal() for row in result.rows]
    written = [p for p in kept.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in written) and any("journal" in p.parts for p in written)
    assert secret_scan.scan([kept], pins) == []

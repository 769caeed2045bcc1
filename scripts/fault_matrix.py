#!/usr/bin/env python3
"""The kill -9 matrix (issue 8, item 3): crash the station daemon at every journal point, restart
it, and check that nothing was lost, programmed twice, or left on a key nobody was told about.

    .venv/bin/python scripts/fault_matrix.py [--repeats 3] [--points claimed,sealed] [--json]
                                             [--scan] [--keep DIR]

A fulfillment service (create_app + uvicorn on 127.0.0.1, SQLite in a temporary folder) serves
the whole matrix. For each crash point x repeat, a customer posts a shipment of one item (1 PIN
request + 2 credential requests: Microsoft Graph's and Okta's options), then
`python -m station.cli run ... --once` runs with STATION_FAULT_KILL_AFTER=<point> and must die of
SIGKILL, then `... --until-empty` runs without it and must exit 0. Each cell then counts:

- lost: the item is not programmed (state 102) with every response opening for the customer
  (decrypt with its response key, ES384 against the signing JWKS, requestDigest), or the
  station's journal still holds an open item;
- duplicated: a virtual key programmed completely (PIN + both credentials) for the item, other
  than the one shipped, that no `interrupted_key` event reported;
- orphaned: a key written partly (PIN or a credential) that is neither shipped nor reported;
- reported: keys the restart reported as interrupted (they need a reset: expected, not a loss).

Prints a table (point x repeats) and exits 1 on any loss, duplicate, orphan or unexpected exit
status. `--scan` then runs scripts/secret_scan.py over everything the run wrote (database,
journals, virtual keys, key store, station output) with the PINs the customer opened.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from station.customer.orders import SealedItem, seal_item, shipment_body  # noqa: E402
from station.fulfillment.embedded import EmbeddedService  # noqa: E402
from station.fulfillment.client import FulfillmentClient  # noqa: E402
from station.fulfillment.journal import Journal  # noqa: E402
from station.fulfillment.runner import FAULT_ENV  # noqa: E402
from station.fulfillment.store import Role, Store  # noqa: E402
from station.protocol.jose import open_response  # noqa: E402
from station.protocol.keys import KeyStore  # noqa: E402
from station.protocol.messages import PinResponse  # noqa: E402
from station.errors import StationError  # noqa: E402

POINTS = ("claimed", "confirmed", "touching", "credential-1", "credential-2", "sealed", "submitting", "acknowledged")
OPTIONS = ROOT / "fixtures" / "options"
PROFILE = "yubikey-5-nfc-5.7"
CREDENTIALS_PER_ITEM = 2
STATION_TIMEOUT_SECONDS = 120


@dataclass
class Cell:
    """One crash point x repeat."""

    point: str
    repeat: int
    crashed_rc: int | None = None
    restart_rc: int | None = None
    lost: int = 0
    duplicated: int = 0
    orphaned: int = 0
    reported: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.crashed_rc == -9 and self.restart_rc == 0
                and not (self.lost or self.duplicated or self.orphaned))


class Service(EmbeddedService):
    """The fulfillment service under uvicorn in a thread on 127.0.0.1, over a fresh key store and
    SQLite file in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.keystore = KeyStore.init(folder / "keys")
        super().__init__(Store.open(f"sqlite:///{folder}/service.db"), self.keystore, purge_interval=None)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.store.close()


class Matrix:
    """Runs the cells against one service; `pins` collects every PIN the customer opened."""

    def __init__(self, folder: Path, service: Service) -> None:
        self.folder = folder
        self.service = service
        self.customer = FulfillmentClient(service.url, service.store.create_token(Role.CUSTOMER, "matrix-customer"))
        self.token = service.store.create_token(Role.STATION, "matrix-station")
        self.options = [json.loads((OPTIONS / f"{name}.json").read_text()) for name in ("graph", "okta")]
        self.pins: list[str] = []

    def run_cell(self, point: str, repeat: int) -> Cell:
        cell = Cell(point, repeat)
        started = time.monotonic()
        work = self.folder / f"{point}-{repeat}"
        item = seal_item(transport_jwks=self.customer.jwks("transport"), options=self.options)
        shipment_id = self.customer.post_shipment(shipment_body([item])).shipment_id
        crashed = self._station(work, "crashed", "--once", fault=point)
        cell.crashed_rc = crashed.returncode
        restarted = self._station(work, "restarted", "--until-empty")
        cell.restart_rc = restarted.returncode
        events = _events(crashed.stdout) + _events(restarted.stdout)
        shipped = self._check_shipment(cell, shipment_id, item)
        if Journal(work / "journal").open_items():
            cell.lost += 1
            cell.notes.append("the journal still holds an open item")
        self._count_keys(cell, work / "vkeys", events, shipped)
        cell.seconds = round(time.monotonic() - started, 2)
        return cell

    def _station(self, work: Path, name: str, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items()
               if k != FAULT_ENV and not k.startswith("STATION_RUN_") and k != "STATION_CONFIG"}
        if fault:
            env[FAULT_ENV] = fault
        cmd = [sys.executable, "-m", "station.cli", "run", "--service", self.service.url,
               "--device", f"virtual:{work}/vkeys/", "--profile", PROFILE, "--keys", str(self.service.keystore.path),
               "--journal", str(work / "journal"), "--json", "--lease", "10", *extra]
        env["STATION_RUN_TOKEN"] = self.token  # never on argv
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=STATION_TIMEOUT_SECONDS,
                                cwd=ROOT)
        work.mkdir(parents=True, exist_ok=True)
        (work / f"{name}.out").write_text(result.stdout)
        (work / f"{name}.err").write_text(result.stderr)
        return result

    def _check_shipment(self, cell: Cell, shipment_id: str, item: SealedItem) -> str | None:
        """The serial the customer received, or None (and a loss) when anything is missing."""
        view = self.customer.get_shipment(shipment_id).model_dump(mode="json")
        if view["shipment_state"]["shipment_state_id"] != 102:  # programmed
            cell.lost += 1
            cell.notes.append(f"shipment state {view['shipment_state']['shipment_state_id']}, not 102")
            return None
        product = view["shipment_items"][0]["product_data"][0]
        signing = self.customer.jwks("signing")
        responses = [(product.get("fido_pin_response"), item.pin_request_jwe)]
        responses += list(zip(product.get("fido_credential_responses") or [], item.credential_request_jwes))
        if len(responses) != 1 + len(item.credential_request_jwes):
            cell.lost += 1
            cell.notes.append("a credential response is missing")
        serial = None
        for sealed, request in responses:
            try:
                opened = open_response(sealed, response_private_key=item.response_key, signing_jwks=signing,
                                       request_jwe=request)
            except StationError as exc:  # ResponseRejected: this response is lost to the customer
                cell.lost += 1
                cell.notes.append(f"a response does not open: {exc.__class__.__name__}")
                continue
            serial = opened.serial_number
            if isinstance(opened, PinResponse):
                self.pins.append(opened.pin)
        return serial

    @staticmethod
    def _count_keys(cell: Cell, vkeys: Path, events: list[dict], shipped: str | None) -> None:
        reported = {str(e.get("serial")) for e in events if e.get("kind") == "interrupted_key"}
        reported |= {str(e.get("device")) for e in events if e.get("kind") == "interrupted_key"}
        cell.reported = sum(1 for e in events if e.get("kind") == "interrupted_key")
        for statefile in sorted(vkeys.glob("*.json")) if vkeys.is_dir() else []:
            state = json.loads(statefile.read_text())
            credentials = len(state.get("credentials") or [])
            if state.get("pin_hash") is None and not credentials:
                continue  # never written
            serial = str(state.get("serial"))
            if serial == shipped or serial in reported or any(statefile.name in r for r in reported):
                continue
            if credentials >= CREDENTIALS_PER_ITEM:
                cell.duplicated += 1
                cell.notes.append(f"key {serial} holds a full copy of the item and was not reported")
            else:
                cell.orphaned += 1
                cell.notes.append(f"key {serial} was written and not reported")


def _events(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def run_matrix(points: list[str], repeats: int, folder: Path) -> tuple[list[Cell], list[str]]:
    """Every point x repeat against one service in `folder`: the cells and the PINs opened."""
    with Service(folder) as service:
        matrix = Matrix(folder, service)
        try:
            cells = [matrix.run_cell(point, r + 1) for point in points for r in range(repeats)]
        finally:
            matrix.customer.close()
    return cells, matrix.pins


def table(cells: list[Cell]) -> str:
    """The summary: one row per point, the sums over its repeats."""
    rows = ["point          repeats  crash-9  restart-0  lost  duplicated  orphaned  reported  seconds"]
    for point in dict.fromkeys(c.point for c in cells):
        mine = [c for c in cells if c.point == point]
        rows.append(
            f"{point:<14} {len(mine):>7}  {sum(c.crashed_rc == -9 for c in mine):>7}  "
            f"{sum(c.restart_rc == 0 for c in mine):>9}  {sum(c.lost for c in mine):>4}  "
            f"{sum(c.duplicated for c in mine):>10}  {sum(c.orphaned for c in mine):>8}  "
            f"{sum(c.reported for c in mine):>8}  {sum(c.seconds for c in mine):>7.1f}"
        )
    bad = [c for c in cells if not c.ok]
    rows.append(f"{len(cells)} runs, {len(bad)} failed")
    rows += [f"  {c.point} #{c.repeat}: rc {c.crashed_rc}/{c.restart_rc}; {'; '.join(c.notes)}" for c in bad]
    return "\n".join(rows)


def scan_folder(folder: Path, pins: list[str]) -> list:
    """scripts/secret_scan.py over everything under `folder`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from secret_scan import scan

    return scan([folder], pins)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", default=",".join(POINTS), help="comma-separated crash points")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    parser.add_argument("--scan", action="store_true", help="secret-scan everything the run wrote")
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it")
    args = parser.parse_args(argv)
    points = [p for p in args.points.split(",") if p]
    unknown = sorted(set(points) - set(POINTS))
    if unknown or args.repeats < 1:
        parser.error(f"unknown points {unknown}; choose from {','.join(POINTS)}" if unknown else "--repeats >= 1")
    with tempfile.TemporaryDirectory(prefix="fault-matrix-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        cells, pins = run_matrix(points, args.repeats, folder)
        findings = scan_folder(folder, pins) if args.scan else []
    failed = any(not c.ok for c in cells) or bool(findings)
    if args.json:
        print(json.dumps({"cells": [asdict(c) for c in cells], "pins_scanned": len(pins) if args.scan else None,
                          "secret_findings": [str(f) for f in findings], "ok": not failed}, indent=2))
    else:
        print(table(cells))
        if args.scan:
            print(f"secret scan: {len(pins)} PINs, {len(findings)} findings")
            for finding in findings:
                print(f"  {finding}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

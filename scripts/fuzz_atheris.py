#!/usr/bin/env python3
"""The long fuzz run (issue 8, item 2): coverage-guided atheris over the station's parsers.

    .venv/bin/python scripts/fuzz_atheris.py                  # every target, 100,000 inputs in all
    .venv/bin/python scripts/fuzz_atheris.py --target ctap --runs 50000
    .venv/bin/python scripts/fuzz_atheris.py --engine hypothesis   # without atheris

Targets and the property each must keep for any input:

- `open_request`: a request payload or a StationError (the project's own errors), nothing else;
- `ctap`: VirtualAuthenticator.process answers a status byte (+ CBOR), never raises;
- `apdu`: FidoApplet.apdu answers >= 2 bytes ending in a status word, never raises;
- `ctaphid`: 64-byte output reports to the device side of CTAPHID never raise, and every input
  report it answers is 64 bytes on a channel the host used (or broadcast);
- `service`: POST bodies to /v1/fpr/shipments and the station routes never answer 5xx.

Each target runs in its own child process (libFuzzer ends its process when done), seeded with a
valid input of its kind; a hang over --timeout seconds counts as a failure. A disallowed
exception is recorded (type and the line it came from) and the run goes on. Prints per target
the inputs run and the failures found; exits 1 on any failure. `atheris` is installed with
`.venv/bin/pip install atheris`; without it `--engine auto` falls back to hypothesis with the
same counts (random, not coverage-guided).
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The default share of --total per target (the slower targets get fewer inputs).
SHARES = {"open_request": 0.3, "ctap": 0.3, "apdu": 0.2, "ctaphid": 0.1, "service": 0.1}
DEFAULT_TOTAL = 100_000
OPTIONS = ROOT / "fixtures" / "options"


class Harness:
    """The fuzz targets over one temporary folder (key store, virtual keys, SQLite)."""

    def __init__(self, folder: Path) -> None:
        from station.protocol.keys import KeyStore
        from station.virtual import VirtualAuthenticator

        self.folder = folder
        self.keystore = KeyStore.init(folder / "keys")
        self.key = VirtualAuthenticator.create(folder / "key.json", "yubikey-5-nfc-5.7")
        self._client = None

    # -- targets ---------------------------------------------------------------------------
    def open_request(self, data: bytes) -> None:
        from station.errors import StationError
        from station.protocol.jose import open_request

        try:
            open_request(data.decode("latin-1"), keystore=self.keystore)
        except StationError:
            pass

    def ctap(self, data: bytes) -> None:
        answer = self.key.process(data)
        assert isinstance(answer, bytes) and len(answer) >= 1, "no status byte"

    def apdu(self, data: bytes) -> None:
        from station.virtual.apdu import FidoApplet

        applet = FidoApplet(self.key)
        applet.apdu(bytes.fromhex("00A4040008A0000006472F0001"))
        for command in _split(data):
            answer = applet.apdu(command)
            assert len(answer) >= 2, "no status word"

    def ctaphid(self, data: bytes) -> None:
        from station.virtual.hid import BROADCAST_CID, PACKET_SIZE, VirtualHidDevice

        device = VirtualHidDevice(self.key)
        connection = device.connect()
        used = {BROADCAST_CID}
        try:
            for start in range(0, len(data), PACKET_SIZE):
                packet = data[start : start + PACKET_SIZE].ljust(PACKET_SIZE, b"\0")
                used.add(struct.unpack_from(">I", packet)[0])
                connection.write_packet(packet)
                for report in _drain(connection):
                    assert len(report) == PACKET_SIZE, "an input report is not 64 bytes"
                    assert struct.unpack_from(">I", report)[0] in used, "an answer on a channel nobody used"
        finally:
            connection.close()

    def service(self, data: bytes) -> None:
        routes = ["/v1/fpr/shipments", "/v1/station/claim", "/v1/station/items/1/submit",
                  "/v1/station/items/1/heartbeat", "/v1/station/items/1/release"]
        client, tokens = self._service_client()
        path = routes[data[0] % len(routes)] if data else routes[0]
        token = tokens["customer" if path.startswith("/v1/fpr") else "station"]
        answer = client.post(path, content=data[1:],
                             headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})
        assert answer.status_code < 500, f"{path} answered {answer.status_code}"

    def _service_client(self):
        if self._client is None:
            from fastapi.testclient import TestClient

            from station.fulfillment.api import create_app
            from station.fulfillment.store import Role, Store

            store = Store.open(f"sqlite:///{self.folder}/service.db")
            app = create_app(store, self.keystore, purge_interval=None, failed_token_limit=1_000_000_000)
            tokens = {"customer": store.create_token(Role.CUSTOMER, "fuzz"),
                      "station": store.create_token(Role.STATION, "fuzz")}
            self._client = (TestClient(app, raise_server_exceptions=False), tokens)
        return self._client

    # -- seeds ------------------------------------------------------------------------------
    def seeds(self, target: str) -> list[bytes]:
        """Valid inputs of each kind, so the fuzzer starts past the first checks."""
        from fido2 import cbor

        from station.customer.orders import seal_item, shipment_body

        options = [json.loads((OPTIONS / f"{n}.json").read_text()) for n in ("graph", "okta")]
        item = seal_item(transport_jwks=self.keystore.jwks("transport"), options=options)
        make_credential = b"\x01" + cbor.encode({
            1: b"\x01" * 32, 2: {"id": "example.com", "name": "Example"},
            3: {"id": b"\x02" * 16, "name": "ada", "displayName": "Ada"},
            4: [{"alg": -7, "type": "public-key"}], 7: {"rk": True},
        })
        get_info = b"\x04"
        if target == "open_request":
            return [item.pin_request_jwe.encode(), item.credential_request_jwes[0].encode()]
        if target == "ctap":
            return [get_info, make_credential, b"\x06" + cbor.encode({1: 2, 2: 2})]
        if target == "apdu":
            msg = bytes.fromhex("80100000") + bytes([len(make_credential)]) + make_credential + b"\x00"
            return [_join([bytes.fromhex("80100000010400")]), _join([msg])]
        if target == "ctaphid":
            init = struct.pack(">IBH", 0xFFFFFFFF, 0x86, 8) + b"\x11" * 8
            cbor_msg = struct.pack(">IBH", 0xFFFFFFFF, 0x90, 1) + b"\x04"
            return [init.ljust(64, b"\0"), init.ljust(64, b"\0") + cbor_msg.ljust(64, b"\0")]
        if target == "service":
            body = json.dumps(shipment_body([item])).encode()
            return [b"\x00" + body, b"\x01" + b'{"lease_seconds": 60}']
        raise ValueError(target)


def _split(data: bytes) -> list[bytes]:
    """APDUs from fuzz data: each is a length byte then that many bytes."""
    commands, i = [], 0
    while i < len(data):
        n = data[i]
        commands.append(data[i + 1 : i + 1 + n])
        i += 1 + n
    return commands


def _join(commands: list[bytes]) -> bytes:
    return b"".join(bytes([len(c)]) + c for c in commands)


def _drain(connection) -> list[bytes]:
    reports = []
    while True:
        try:
            reports.append(connection.read_packet(timeout=0))
        except TimeoutError:
            return reports


# -- recording failures -------------------------------------------------------------------------
class Recorder:
    """Calls a target; a disallowed exception is recorded by signature and the run goes on."""

    def __init__(self, target: Callable[[bytes], None], path: Path) -> None:
        self.target = target
        self.path = path
        self.runs = 0
        self.failures: dict[str, int] = {}

    def __call__(self, data: bytes) -> None:
        self.runs += 1
        try:
            self.target(data)
        except Exception as exc:  # the property under test: anything escaping is a finding
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            signature = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(exc)[:120]}"
            self.failures[signature] = self.failures.get(signature, 0) + 1
            if self.failures[signature] == 1:
                (self.path.parent / f"crash-{len(self.failures)}.bin").write_bytes(data)
                self.save()
        if self.runs % 1000 == 0:
            self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps({"runs": self.runs, "failures": self.failures}))


# -- engines ------------------------------------------------------------------------------------
def child(target: str, runs: int, timeout: int, workdir: Path, engine: str) -> None:
    """Run one target in this process (called in the child) and write its record."""
    harness = Harness(workdir)
    recorder = Recorder(getattr(harness, target), workdir / "record.json")
    if engine == "atheris":
        import atheris

        corpus = workdir / "corpus"
        corpus.mkdir()
        for n, seed in enumerate(harness.seeds(target)):
            (corpus / f"seed-{n}").write_bytes(seed)
        atheris.instrument_all()
        atexit_save(recorder)
        atheris.Setup([sys.argv[0], f"-runs={runs}", f"-timeout={timeout}", "-max_len=4096",
                       "-print_final_stats=1", str(corpus)], recorder)
        atheris.Fuzz()
    else:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        seeds = harness.seeds(target)
        inputs = st.binary(max_size=2048) | st.sampled_from(seeds).flatmap(_mutations)

        @settings(max_examples=runs, deadline=timeout * 1000, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=inputs)
        def run(data: bytes) -> None:
            recorder(data)

        run()
        recorder.save()


def _mutations(seed: bytes):
    from hypothesis import strategies as st

    return st.tuples(st.integers(0, len(seed)), st.integers(0, 8), st.binary(max_size=8)).map(
        lambda t: seed[: t[0]] + t[2] + seed[t[0] + t[1] :]
    )


def atexit_save(recorder: Recorder) -> None:
    import atexit

    atexit.register(recorder.save)


def run_target(target: str, runs: int, timeout: int, engine: str) -> dict:
    """One target in a child process; its inputs run, failures and seconds."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        workdir = Path(scratch)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", target, "--runs", str(runs), "--timeout", str(timeout),
             "--engine", engine, "--workdir", str(workdir)],
            capture_output=True, text=True, cwd=ROOT,
        )
        seconds = round(time.monotonic() - started, 1)
        record = json.loads((workdir / "record.json").read_text()) if (workdir / "record.json").exists() else {}
        done = re.search(r"Done (\d+) runs", proc.stderr)
        result = {
            "target": target,
            "engine": engine,
            "runs": int(done.group(1)) if done else record.get("runs", 0),
            "failures": record.get("failures", {}),
            "seconds": seconds,
            "exit": proc.returncode,
        }
        if proc.returncode != 0 and not result["failures"]:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            result["failures"] = {f"the fuzz process exited {proc.returncode} (timeout or crash): {tail}": 1}
        return result


def pick_engine(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "hypothesis"
    return "atheris"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=list(SHARES), help="default: every target")
    parser.add_argument("--runs", type=int, help="inputs per target (default: the target's share of --total)")
    parser.add_argument("--total", type=int, default=DEFAULT_TOTAL, help="inputs over all targets")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=list(SHARES), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.runs, args.timeout, args.workdir, args.engine)
        return 0
    engine = pick_engine(args.engine)
    targets = args.target or list(SHARES)
    results = []
    for target in targets:
        runs = args.runs or max(1, int(args.total * SHARES[target] / sum(SHARES[t] for t in targets)))
        results.append(run_target(target, runs, args.timeout, engine))
        if not args.json:
            r = results[-1]
            print(f"{r['target']:<13} {r['engine']:<10} {r['runs']:>8} inputs  {len(r['failures'])} failures  "
                  f"{r['seconds']:>7.1f} s", flush=True)
            for signature, count in r["failures"].items():
                print(f"    {count} x {signature}")
    failed = any(r["failures"] for r in results)
    if args.json:
        print(json.dumps({"results": results, "total_inputs": sum(r["runs"] for r in results), "ok": not failed},
                         indent=2))
    else:
        print(f"total {sum(r['runs'] for r in results)} inputs, {'FAILURES' if failed else 'no failures'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

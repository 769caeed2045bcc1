"""Run python-fido2's own device test suite (tests/device of its PyPI sdist, written by Yubico
against real YubiKeys) over the real pcscd against `station virtual serve`.

The suite drives the key through a small HTTP "controller" (its tests/device/__init__.py,
class PicoController, written for a USB power switch): GET `/` must answer, GET
`/usb{port}/power/off` and `/power/on` cut and restore the key's power, `/usb{port}/touch/on`
and `/touch/off` press and release the button. Given `--reader NAME` without `--ccid` it talks
to the card as an NFC key: at start it asks for a removal, waits until pyscard raises
NoCardException, asks for an insertion and connects.

Here power/off stops the `station virtual serve` process (the card leaves vpcd's reader) and
answers only once pcscd no longer sees a card in the reader; power/on starts a new serve of the
same state file and answers once pcscd sees the card. Touches need nothing: the key is served
with a presence policy (by default "delay:0.15": the simulated user presses the button 0.15 s after
the key asks, while the key sends keepalives), so the controller's touch calls only get counted.

The suite runs in ONE pytest session in a subprocess; its JUnit XML is parsed into counts.

    .venv/bin/python tests/independent/fido2_suite.py --profile yubikey-5-nfc-5.7 [-- PYTEST ARGS]

takes the tests' pcscd lock and starts pcscd (with vsmartcard-vpcd) if none runs; the suite must
have been unpacked by `scripts/setup --test` (see SUITE_DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from importlib.metadata import version

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
#: Where scripts/setup --test unpacks the sdist's tests/ for the installed fido2 version.
SUITE_DIR = VENV / "cache" / f"fido2-{version('fido2')}-tests"
READER = "Virtual PCD 00 00"
VPCD = "127.0.0.1:35963"
#: The simulated user touches 0.15 s after the key asks. The card answers a request still running
#: after 100 ms with keepalive UPNEEDED (SW 9100, apdu.py), so every touch reaches the suite's
#: prompt and keepalive paths (and its controller's /touch/on). "approve" is faster.
PRESENCE = "delay:0.15"
#: How long a power change may take before the controller gives up (pcscd polls every ~0.4 s).
POWER_TIMEOUT = 20.0


def suite_path() -> Path:
    return SUITE_DIR / "tests" / "device"


# ---------------------------------------------------------------- what pcscd sees
def card_present(reader: str = READER) -> bool:
    """Whether pcscd reports a card in `reader` (SCardGetStatusChange, state PRESENT)."""
    from smartcard import scard

    rc, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if rc != scard.SCARD_S_SUCCESS:
        raise RuntimeError(f"pcscd not reachable: {scard.SCardGetErrorMessage(rc)}")
    try:
        rc, states = scard.SCardGetStatusChange(context, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        if rc != scard.SCARD_S_SUCCESS:
            raise RuntimeError(f"reader {reader!r}: {scard.SCardGetErrorMessage(rc)}")
        return bool(states[0][1] & scard.SCARD_STATE_PRESENT)
    finally:
        scard.SCardReleaseContext(context)


def wait_card(present: bool, reader: str = READER, timeout: float = POWER_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while card_present(reader) != present:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pcscd still {'lacks' if present else 'sees'} the card after {timeout} s")
        time.sleep(0.05)


# ---------------------------------------------------------------- the key in the reader
class ServedKey:
    """`station virtual serve STATEFILE` as a process: running = card in the reader."""

    def __init__(self, statefile: Path, log: Path, vpcd: str = VPCD, reader: str = READER,
                 presence: str = "approve") -> None:
        self.statefile = statefile
        self.presence = presence
        self.log = log
        self.vpcd = vpcd
        self.reader = reader
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def insert(self) -> None:
        with self.lock:
            if self.process is not None:
                return
            with open(self.log, "ab") as out:
                self.process = subprocess.Popen(
                    [str(VENV / "bin" / "station"), "virtual", "serve", str(self.statefile), "--vpcd", self.vpcd,
                     "--presence", self.presence],
                    stdout=out, stderr=subprocess.STDOUT,
                )
            wait_card(True, self.reader)

    def remove(self) -> None:
        with self.lock:
            if self.process is None:
                return
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=POWER_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            wait_card(False, self.reader)  # never reinsert before pcscd saw the card leave


class Controller(http.server.ThreadingHTTPServer):
    """The suite's PicoController API on loopback, driving one ServedKey."""

    daemon_threads = True

    def __init__(self, key: ServedKey) -> None:
        self.key = key
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _ControllerHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ControllerHandler(http.server.BaseHTTPRequestHandler):
    server: Controller

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        parts = self.path.strip("/").split("/")
        self.server.requests.append(self.path)
        try:
            if parts == [""]:
                pass
            elif len(parts) == 3 and parts[0].startswith("usb") and parts[1] == "power" and parts[2] in ("on", "off"):
                (self.server.key.insert if parts[2] == "on" else self.server.key.remove)()
            elif len(parts) == 3 and parts[0].startswith("usb") and parts[1] == "touch" and parts[2] in ("on", "off"):
                pass  # the served key's presence policy is the simulated user's finger
            else:
                self._reply(404, b"unknown controller path\n")
                return
        except (TimeoutError, RuntimeError) as exc:
            self._reply(500, f"{exc}\n".encode())
            return
        self._reply(200, b"ok\n")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's signature)
        pass


# ---------------------------------------------------------------- one suite session
@dataclass
class SuiteResult:
    profile: str
    returncode: int
    seconds: float
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (test, message)
    skips: Counter = field(default_factory=Counter)  # reason → count
    output: str = ""
    touches: int = 0  # /touch/on requests: the suite saw keepalive UPNEEDED and prompted
    power_cycles: int = 0  # card removals the suite asked for (/power/off)

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"{self.profile}: {c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
            f"{c['skipped']} skipped in {self.seconds:.0f} s (pytest rc {self.returncode}); "
            f"{self.touches} touches, {self.power_cycles} removals"
        ]
        lines += [f"  FAILED {name}: {msg}" for name, msg in self.failures]
        lines += [f"  skipped x{n}: {reason}" for reason, n in sorted(self.skips.items())]
        return "\n".join(lines)


def _parse_junit(path: Path, result: SuiteResult) -> None:
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag == "skipped":
                outcome = "skipped"
                result.skips[(child.get("message") or "").strip()] += 1
            elif child.tag in ("failure", "error"):
                # pytest reports a teardown error as an extra <error> on a passed case
                kind = "failed" if child.tag == "failure" else "errors"
                result.counts[kind] += 1
                result.failures.append((name, (child.get("message") or "").splitlines()[0][:300] if child.get("message") else child.tag))
                outcome = None
        if outcome:
            result.counts[outcome] += 1


def run_suite(profile: str, workdir: Path, *, reader: str = READER, vpcd: str = VPCD,
              presence: str = PRESENCE, extra_args: tuple[str, ...] = (), timeout: float = 900) -> SuiteResult:
    """A fresh key of `profile`, served into `reader`; the whole device suite in one session."""
    if not suite_path().is_dir():
        raise FileNotFoundError(f"{suite_path()} is missing: run scripts/setup --test")
    workdir.mkdir(parents=True, exist_ok=True)
    statefile = workdir / f"{profile}.json"
    subprocess.run([str(VENV / "bin" / "station"), "virtual", "new", "--profile", profile, str(statefile)],
                   check=True, capture_output=True)
    key = ServedKey(statefile, workdir / "serve.log", vpcd, reader, presence)
    controller = Controller(key)
    thread = threading.Thread(target=controller.serve_forever, daemon=True)
    thread.start()
    # An empty pytest.ini keeps pytest from taking this repository's pyproject.toml (found by
    # walking up from .venv/cache) as the suite's configuration.
    ini = SUITE_DIR / "pytest.ini"
    if not ini.exists():
        ini.write_text("[pytest]\n")
    junit = workdir / "junit.xml"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    command = [
        sys.executable, "-m", "pytest", str(suite_path()),
        "-p", "no:cacheprovider", "-c", str(ini), "--rootdir", str(SUITE_DIR),
        "--reader", reader, "--controller", controller.url, "--junitxml", str(junit),
        "-q", "-rs", "--timeout", "120", *extra_args,
    ]
    start = time.monotonic()
    try:
        key.insert()
        proc = subprocess.run(command, cwd=SUITE_DIR, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        controller.shutdown()
        controller.server_close()
        key.remove()
    result = SuiteResult(profile, proc.returncode, time.monotonic() - start, output=proc.stdout + proc.stderr,
                         touches=sum(r.endswith("/touch/on") for r in controller.requests),
                         power_cycles=sum(r.endswith("/power/off") for r in controller.requests))
    if junit.exists():
        _parse_junit(junit, result)
    return result


@contextlib.contextmanager
def pcscd_for_script(lock_path: Path = Path("/tmp/station-tests-pcscd.lock")):
    """For the script: take the tests' machine-wide pcscd lock, start `pcscd -f` if none runs
    (stopped by its PID at the end), and wait until it lists the reader."""
    import fcntl

    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for any test session using pcscd
        process = None
        if not _pcscd_running():
            process = subprocess.Popen(["pcscd", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    card_present()
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=10)


def _pcscd_running() -> bool:
    try:
        os.kill(int(Path("/run/pcscd/pcscd.pid").read_text().strip("\0\n ")), 0)
    except (OSError, ValueError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="append", help="repeatable; default: the YubiKey profiles")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp") / f"fido2-suite-{os.getpid()}")
    parser.add_argument("--output", action="store_true", help="print the suite's own pytest output")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    profiles = args.profile or YUBIKEY_PROFILES
    worst = 0
    with pcscd_for_script():
        for profile in profiles:
            result = run_suite(profile, args.workdir / profile, extra_args=tuple(args.pytest_args))
            if args.output:
                print(result.output)
            print(result.summary())
            worst = max(worst, int(result.counts["failed"] + result.counts["errors"] > 0 or result.returncode != 0))
    return worst


#: The profiles the suite (written against YubiKeys) runs on in CI.
YUBIKEY_PROFILES = ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.7-pin-complexity", "yubikey-5-nfc-5.4"]

if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

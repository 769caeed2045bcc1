"""Virtual cards in pcscd's vpcd reader for tests: `station virtual serve` in a subprocess, and
waiting for pcscd to see the card arrive or leave. Shared by the transport and provisioning tests."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path

from smartcard.Exceptions import CardConnectionException, NoCardException
from smartcard.System import readers

#: Tests use vpcd's second reader so they never take a card slot other suites may use.
TEST_READER = "Virtual PCD 00 01"
TEST_PORT = 35964


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, so no card outlives its session."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_serve(statefile: Path, processes: list, presence: str = "approve", *, port: int = TEST_PORT,
                fault: str | None = None) -> subprocess.Popen:
    """`station virtual serve` in a subprocess (registered in `processes` at once); returns once
    it said the card is inserted."""
    process = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "virtual", "serve", str(statefile),
         "--vpcd", f"127.0.0.1:{port}", "--presence", presence, *(["--fault", fault] if fault else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,
    )
    processes.append(process)
    line = process.stdout.readline()
    if line.startswith("waiting for vpcd"):
        line = process.stdout.readline()
    assert line.startswith(f"inserted {statefile}"), (line, process.stderr.read() if process.poll() else "")
    return process


def stop_serve(process: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _reader(name: str = TEST_READER):
    return next(r for r in readers() if str(r) == name)


def _try_connect(name: str = TEST_READER) -> bool | None:
    """True: a card answered; False: pcscd says no card; None: in between (link gone, pcscd
    not polled yet, or still powering the card up)."""
    connection = _reader(name).createConnection()
    try:
        connection.connect()
        connection.disconnect()
        return True
    except NoCardException:
        return False
    except CardConnectionException:
        return None
    finally:
        connection.release()


def wait_for_card(seconds: float = 10.0, name: str = TEST_READER):
    """The reader once pcscd sees a card in it (pcscd polls presence a few times a second)."""
    deadline = time.monotonic() + seconds
    while not _try_connect(name):
        assert time.monotonic() < deadline, "pcscd sees no card"
        time.sleep(0.1)
    return _reader(name)


def wait_for_removal(seconds: float = 10.0, name: str = TEST_READER) -> None:
    """Until pcscd noticed the card left (so the next insertion is seen as a new card)."""
    deadline = time.monotonic() + seconds
    while _try_connect(name) is not False:
        assert time.monotonic() < deadline, "pcscd still sees a card"
        time.sleep(0.1)



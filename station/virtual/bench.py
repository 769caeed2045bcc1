"""makeCredential and getAssertion operations per second over each transport of the virtual key.

Transports: "direct" (VirtualCtapDevice), "hid" (python-fido2's CtapHidDevice over the virtual
CTAPHID interface), "pcsc" (CtapPcscDevice over the applet in the in-process reader) and, when
pcscd with vsmartcard's vpcd is running, "pcscd" (CtapPcscDevice through pcscd to the card,
served by a thread of this process into reader BENCH_READER).

Each case is one fresh YubiKey 5.7 key without a PIN: makeCredential of a non-discoverable ES256
credential, then getAssertion with that credential in the allowList, for `seconds_per_case`
each. User presence is approved at once, so the figures are transport + CTAP + crypto cost.

    .venv/bin/python -m station.virtual.bench [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fido2.ctap import CtapDevice
from fido2.ctap2 import Ctap2
from fido2.pcsc import CtapPcscDevice

from . import open_virtual
from .authenticator import VirtualAuthenticator

PROFILE = "yubikey-5-nfc-5.7"
BENCH_READER = "Virtual PCD 00 01"
BENCH_VPCD_PORT = 35964
IN_PROCESS = ("direct", "hid", "pcsc")


def bench_virtual(seconds_per_case: float = 2.0) -> dict:
    """Operations per second of makeCredential and getAssertion over every transport."""
    results: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="station-bench-") as folder:
        for transport in IN_PROCESS:
            statefile = _fresh_key(Path(folder), transport)
            device = open_virtual(statefile, transport=transport)
            try:
                results[transport] = _measure(device, seconds_per_case)
            finally:
                device.close()
        if _pcscd_reader_present():
            with _served_through_pcscd(_fresh_key(Path(folder), "pcscd")) as device:
                results["pcscd"] = _measure(device, seconds_per_case)
        else:
            skipped["pcscd"] = f"pcscd with the vpcd reader {BENCH_READER!r} is not running"
    return {
        "profile": PROFILE,
        "seconds_per_case": seconds_per_case,
        "ops_per_second": results,
        "skipped": skipped,
    }


def _fresh_key(folder: Path, name: str) -> Path:
    statefile = folder / f"{name}.json"
    VirtualAuthenticator.create(statefile, PROFILE).close()
    return statefile


def _measure(device: CtapDevice, seconds: float) -> dict[str, float]:
    ctap = Ctap2(device)
    rp = {"id": "bench.example", "name": "Bench"}
    user = {"id": b"bench-user", "name": "bench"}
    params = [{"type": "public-key", "alg": -7}]
    created: list = []

    def make_credential() -> None:
        created.append(ctap.make_credential(os.urandom(32), rp, user, params))

    make_rate = _rate(make_credential, seconds)
    credential_id = created[0].auth_data.credential_data.credential_id
    allow = [{"type": "public-key", "id": credential_id}]
    assert_rate = _rate(lambda: ctap.get_assertion(rp["id"], os.urandom(32), allow), seconds)
    return {"makeCredential": make_rate, "getAssertion": assert_rate}


def _rate(operation: Callable[[], object], seconds: float) -> float:
    """Calls per second of `operation`, run back to back for `seconds` after one warm-up call."""
    operation()
    count, started = 0, time.perf_counter()
    while True:
        operation()
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return round(count / elapsed, 1)


def _pcscd_reader_present() -> bool:
    from smartcard.Exceptions import SmartcardException
    from smartcard.pcsc.PCSCExceptions import BaseSCardException
    from smartcard.System import readers

    try:
        return any(str(reader) == BENCH_READER for reader in readers())
    except (SmartcardException, BaseSCardException):  # no pcscd
        return False


@contextmanager
def _served_through_pcscd(statefile: Path, seconds: float = 10.0) -> Iterator[CtapPcscDevice]:
    """The key inserted into BENCH_READER by a vpcd.serve thread; the CtapPcscDevice on it."""
    from .vpcd import serve

    authenticator = VirtualAuthenticator.open(statefile)
    stop = threading.Event()
    link = threading.Thread(
        target=serve, args=(authenticator, "127.0.0.1", BENCH_VPCD_PORT, stop), daemon=True
    )
    link.start()
    try:
        device = _wait_for_device(seconds)
        try:
            yield device
        finally:
            device.close(release=True)
    finally:
        stop.set()
        link.join()
        authenticator.close()


def _wait_for_device(seconds: float) -> CtapPcscDevice:
    deadline = time.monotonic() + seconds
    while True:
        device = next(iter(CtapPcscDevice.list_devices(BENCH_READER)), None)
        if device is not None:
            return device
        if time.monotonic() > deadline:
            raise TimeoutError(f"pcscd showed no card in {BENCH_READER!r} within {seconds:.0f} s")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per case")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = bench_virtual(args.seconds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"virtual {result['profile']}, {result['seconds_per_case']} s per case (ops/s)")
    print(f"{'transport':<10}{'makeCredential':>16}{'getAssertion':>14}")
    for transport, rates in result["ops_per_second"].items():
        print(f"{transport:<10}{rates['makeCredential']:>16}{rates['getAssertion']:>14}")
    for transport, reason in result["skipped"].items():
        print(f"{transport:<10}skipped: {reason}")


if __name__ == "__main__":
    main()

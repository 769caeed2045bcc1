"""authenticatorReset (CTAP 2.1 §6.6): only within a few seconds of power-up, and only with a touch.

CTAP 2.1 allows a reset within 10 s of power-up; a YubiKey allows 5 s (Yubico: "the FIDO
applications can only be reset within 5 seconds after the YubiKey is inserted"). `--wait`
takes the race away: the station waits for the key's next insertion and sends the reset at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fido2.ctap import CtapError

from station.device.discovery import Device, candidates, check_spec, open_device
from station.device.faults import TRANSPORT_ERRORS, key_fault
from station.errors import DeviceError, UsageError, UserPresenceTimeout
from station.vendors import YUBICO

#: Seconds after power-up within which a key accepts authenticatorReset, by vendor.
RESET_WINDOW = {YUBICO: 5}
CTAP_RESET_WINDOW = 10


def reset_window(vendor: str | None) -> int:
    return RESET_WINDOW.get(vendor or "", CTAP_RESET_WINDOW)


def reset_device(spec: str, *, virtual_transport: str = "direct",
                 on_touch: Callable[[Device], None] | None = None,
                 wait: bool = False, on_waiting: Callable[[str], None] | None = None,
                 stop: threading.Event | None = None, poll_seconds: float = 0.2) -> str:
    """Factory-reset the key SPEC names; its label. Without `wait` the key must have been plugged
    in (or the card placed on the reader) within its model's window; with `wait` the station
    waits for the next insertion of a key SPEC matches and resets it at once."""
    device = _next_insertion(spec, on_waiting, stop or threading.Event(), poll_seconds) if wait else \
        open_device(spec, virtual_transport=virtual_transport)
    try:
        prompted = False

        def keepalive(status: int) -> None:
            nonlocal prompted
            if status == 2 and not prompted and on_touch:  # STATUS.UPNEEDED
                prompted = True
                on_touch(device)

        window = reset_window(device.vendor)
        try:
            device.ctap2().reset(on_keepalive=keepalive)
        except CtapError as exc:
            if exc.code == CtapError.ERR.NOT_ALLOWED:
                raise DeviceError(f"{device.label}: reset is only allowed within {window} s of plugging this "
                                  f"model in: run `station reset --wait`, then remove the key and insert it "
                                  f"again") from None
            if exc.code == CtapError.ERR.USER_ACTION_TIMEOUT:
                raise UserPresenceTimeout(f"{device.label}: the key was not touched in time: nothing was erased") from None
            raise DeviceError(f"{device.label}: reset failed: {exc.code.name}") from None
        except TRANSPORT_ERRORS as exc:
            raise key_fault(exc, label=device.label, written=False, doing="resetting it") from None
        return device.label
    finally:
        device.close()


def _next_insertion(spec: str, on_waiting, stop: threading.Event, poll_seconds: float) -> Device:
    """The next key inserted where SPEC looks, opened at once: its reset window has just begun.
    Keys already there are held open first, so their removal is seen on their own handles (a
    key taken out and put back into the same port between two looks counts as inserted)."""
    from station.device.pool import KeyPool, try_lock

    kind, arg = check_spec(spec)
    if kind == "virtual":
        raise UsageError("--wait watches for a key being inserted: use auto, hid[:PATH] or pcsc[:READER]")
    pool = KeyPool(spec, poll_seconds=poll_seconds)
    held = []
    for candidate in candidates(kind, arg):
        lock = try_lock(candidate.spec)
        if lock is not None:
            held.append(pool._open_locked(candidate, lock))
    if on_waiting:
        windows = sorted({reset_window(getattr(d, "vendor", None)) for d in held}) or [CTAP_RESET_WINDOW]
        on_waiting(f"remove the key and insert it again: it is reset as soon as it arrives (its model allows "
                   f"a reset within {windows[0]} s of insertion only)")
    try:
        while not stop.is_set():
            for device in list(held):
                if not pool.present(device):
                    held.remove(device)
                    device.close()
            busy = {d.spec for d in held}
            for candidate in candidates(kind, arg):
                if candidate.spec in busy:
                    continue
                lock = try_lock(candidate.spec)
                if lock is None:
                    continue  # a station slot holds it
                got = pool._open_locked(candidate, lock)
                if isinstance(got, Device):
                    return got
                got.device.close()
                raise got.error
            stop.wait(poll_seconds)
        raise UsageError("stopped while waiting for the key")
    finally:
        for device in held:
            device.close()

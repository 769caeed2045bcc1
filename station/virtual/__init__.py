"""station.virtual: a software CTAP 2.1 authenticator that behaves like a YubiKey 5 or an HID
Crescendo (issue 3). It imports nothing else of the station: it is an authenticator, as a
YubiKey is, and reaches the station only as a python-fido2 `CtapDevice`.

    key = new_virtual("key.json", "yubikey-5-nfc-5.7"); key.close()
    device = open_virtual("key.json")               # transport "direct", "hid" or "pcsc"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fido2.ctap import CtapDevice

from .authenticator import VirtualAuthenticator
from .device import VirtualCtapDevice
from .errors import KeyBusy, VirtualError
from .faults import FaultPlan, KeyPulled, KeyWedged, injector, set_plan
from .presence import LatencyModel, PresencePolicy
from .profiles import PROFILES, Profile

TRANSPORTS = ("direct", "hid", "pcsc")


def open_virtual(
    statefile: str | Path,
    *,
    transport: str = "direct",
    presence: PresencePolicy | None = None,
    latency: LatencyModel | None = None,
    fault: FaultPlan | str | None = None,
) -> CtapDevice:
    """Power up the key in `statefile` and return it as a CtapDevice over `transport`.
    `fault` (a FaultPlan or PLAN text) replaces the plan kept in STATEFILE.fault for this opening."""
    if transport not in TRANSPORTS:
        raise VirtualError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
    plan = FaultPlan.parse(fault) if isinstance(fault, str) else fault
    authenticator = VirtualAuthenticator.open(Path(statefile), presence=presence, latency=latency)
    try:
        if plan is not None:
            set_plan(authenticator, plan)
        else:
            injector(authenticator)  # a bad STATEFILE.fault is refused here, not mid-command
    except VirtualError:
        authenticator.close()
        raise
    if transport == "hid":
        from .hid import open_hid

        return open_hid(authenticator)
    if transport == "pcsc":
        from .apdu import open_pcsc

        return open_pcsc(authenticator)
    return VirtualCtapDevice(authenticator)


def new_virtual(
    statefile: str | Path, profile: str, *, fault: FaultPlan | str | None = None, **kw: Any
) -> VirtualAuthenticator:
    """A fresh, never-programmed key (see VirtualAuthenticator.create); returned open.
    `fault` is kept with the key (STATEFILE.fault) and applies whenever it is opened."""
    plan = FaultPlan.parse(fault) if isinstance(fault, str) else fault
    key = VirtualAuthenticator.create(Path(statefile), profile, **kw)
    if plan:
        set_plan(key, plan, persist=True)
    return key


__all__ = [
    "PROFILES",
    "FaultPlan",
    "KeyPulled",
    "KeyWedged",
    "KeyBusy",
    "LatencyModel",
    "PresencePolicy",
    "Profile",
    "VirtualAuthenticator",
    "VirtualCtapDevice",
    "VirtualError",
    "new_virtual",
    "open_virtual",
    "set_plan",
]

"""Finding authenticators and naming them: a device SPEC in, an open `Device` out.

SPEC (shared/CLI.md): `auto` (the only attached authenticator), `hid` or `hid:PATH`, `pcsc` or
`pcsc:READER` (a substring of the reader name), `virtual:STATEFILE`.

Everything downstream (preflight, PIN, credentials) sees only the python-fido2 `CtapDevice`
inside a `Device`; only this module knows how a `virtual:` spec is opened.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2 import Ctap2, Info
from fido2.hid import CAPABILITY, CtapHidDevice

from station.vendors import USB_VENDORS, lookup
from station.device.identity import Identity, read_identity
from station.errors import DeviceError, DeviceUnsupported, UsageError

TRANSPORT_HID = "usb-hid"
TRANSPORT_PCSC = "pcsc"
TRANSPORT_VIRTUAL = "virtual"
VIRTUAL_TRANSPORTS = ("direct", "hid", "pcsc")


@dataclass
class Device:
    """An open authenticator and what the station knows of it."""

    spec: str  # reopens this key: "hid:/dev/hidraw3", "pcsc:Reader 00 00", "virtual:/x.json"
    transport: str  # usb-hid | pcsc | virtual
    path: str  # hidraw path, reader name, or state file
    ctap_device: CtapDevice = field(repr=False)
    info: Info = field(repr=False)
    _ctap2: Ctap2 = field(repr=False)
    identity: Identity
    vendor: str | None
    model: str
    short_model: str = ""

    @property
    def aaguid(self) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(self.info.aaguid))

    @property
    def pin_set(self) -> bool:
        return bool(self.info.options.get("clientPin"))

    @property
    def versions(self) -> list[str]:
        return list(self.info.versions)

    @property
    def can_force_pin_change(self) -> bool:
        """authenticatorConfig with setMinPINLength, which carries forceChangePin (CTAP 2.1 §6.11.4)."""
        opts = self.info.options
        return bool(opts.get("authnrCfg") and opts.get("setMinPINLength"))

    @property
    def label(self) -> str:
        serial = f" #{self.identity.serial}" if self.identity.serial else ""
        return f"{self.short_model}{serial} ({self.transport} {self.path})"

    def ctap2(self) -> Ctap2:
        """The one python-fido2 Ctap2 session on this key (its getInfo read once, at discovery)."""
        return self._ctap2

    def refresh(self) -> None:
        """Read getInfo again (after the PIN or the configuration changed)."""
        self.info = self._ctap2.get_info()

    def close(self) -> None:
        close = getattr(self.ctap_device, "close", None)
        if close:
            close()

    def as_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "transport": self.transport,
            "path": self.path,
            "aaguid": str(self.aaguid),
            "vendor": self.vendor,
            "model": self.model,
            "firmware_version": self.identity.firmware,
            "serial_number": self.identity.serial,
            "serial_note": self.identity.serial_note,
            "pin_set": self.pin_set,
            "ctap_versions": self.versions,
            "can_force_pin_change": self.can_force_pin_change,
        }


def describe(ctap_device: CtapDevice, *, spec: str, transport: str, path: str) -> Device:
    """Read getInfo, the catalogue and the vendor identity of an open CtapDevice."""
    if not ctap_device.capabilities & CAPABILITY.CBOR:  # python-fido2's Ctap2 would raise ValueError
        raise DeviceUnsupported(f"{path}: a CTAP1/U2F-only key (no CTAP2): it cannot hold a PIN or a "
                                "discoverable credential; set it aside")
    try:
        ctap2 = Ctap2(ctap_device)
        info = ctap2.info
    except (CtapError, OSError) as exc:
        raise DeviceError(f"{path}: the key did not answer authenticatorGetInfo ({exc})") from exc
    entry = lookup(bytes(info.aaguid))
    vendor = entry.vendor if entry else _vendor_from_usb(ctap_device)
    model = entry.name if entry else f"unknown model (AAGUID {uuid.UUID(bytes=bytes(info.aaguid))})"
    identity = read_identity(ctap_device, vendor, info)
    return Device(spec=spec, transport=transport, path=path, ctap_device=ctap_device, info=info, _ctap2=ctap2,
                  identity=identity, vendor=vendor, model=model,
                  short_model=entry.short_name if entry else "unknown model")


def _vendor_from_usb(ctap_device: CtapDevice) -> str | None:
    descriptor = getattr(ctap_device, "descriptor", None)
    return USB_VENDORS.get(getattr(descriptor, "vid", None))


# ------------------------------------------------------------------------------- transports
def _hid_devices(path: str | None) -> list[Device]:
    devices = []
    for dev in CtapHidDevice.list_devices():
        dev_path = str(dev.descriptor.path)
        if path and dev_path != path:
            continue
        devices.append(describe(dev, spec=f"hid:{dev_path}", transport=TRANSPORT_HID, path=dev_path))
    return devices


def _pcsc_devices(reader: str | None) -> list[Device]:
    """Cards answering the FIDO applet in readers whose name contains `reader`."""
    try:
        from fido2.pcsc import CtapPcscDevice
        from smartcard.Exceptions import SmartcardException
        from smartcard.pcsc.PCSCExceptions import BaseSCardException
        from smartcard.System import readers
    except ImportError as exc:  # pyscard missing
        raise UsageError("PC/SC support needs pyscard: run scripts/setup") from exc
    try:
        names = [r for r in readers() if (reader or "") in r.name]
    except (SmartcardException, BaseSCardException) as exc:  # pcscd not running
        raise UsageError(f"PC/SC is not available ({exc}): start pcscd") from exc
    devices = []
    for r in names:
        try:
            ctap_device = CtapPcscDevice(r.createConnection(), r.name)
        except (SmartcardException, BaseSCardException, CtapError, ValueError, OSError):
            continue  # an empty reader, or a card without the FIDO applet
        devices.append(describe(ctap_device, spec=f"pcsc:{r.name}", transport=TRANSPORT_PCSC, path=r.name))
    return devices


def _virtual_device(statefile: str, transport: str, **options) -> Device:
    from station.virtual import VirtualError, open_virtual  # only this module opens virtual keys

    if transport not in VIRTUAL_TRANSPORTS:
        raise UsageError(f"unknown virtual transport {transport!r}: use one of {', '.join(VIRTUAL_TRANSPORTS)}")
    path = Path(statefile)
    if not path.is_file():
        raise UsageError(f"{statefile}: no virtual key there; make one with `station virtual new {statefile}`")
    try:
        ctap_device = open_virtual(path, transport=transport, **options)
    except VirtualError as exc:  # busy (another process holds it) or unreadable
        raise UsageError(f"{statefile}: {exc}") from None
    return describe(ctap_device, spec=f"virtual:{statefile}", transport=TRANSPORT_VIRTUAL, path=str(path))


def new_virtual_key(statefile: Path, profile: str) -> str:
    """Make a fresh, never-programmed virtual key of `profile` in `statefile`; its device spec."""
    from station.virtual import PROFILES, VirtualError, new_virtual

    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}: see `station virtual profiles`")
    try:
        new_virtual(statefile, profile).close()
    except VirtualError as exc:
        raise UsageError(str(exc)) from None
    return f"virtual:{statefile}"


def list_devices(*, include_pcsc: bool = True) -> list[Device]:
    """Every attached authenticator: USB-HID, then PC/SC (PC/SC skipped quietly if no pcscd)."""
    devices = _hid_devices(None)
    if include_pcsc:
        try:
            devices += _pcsc_devices(None)
        except UsageError:
            pass
    return devices


def check_spec(spec: str) -> tuple[str, str]:
    """(kind, argument) of a device SPEC, or UsageError naming the forms it may take."""
    kind, _, arg = spec.partition(":")
    if kind not in ("auto", "hid", "pcsc", "virtual") or (kind == "auto" and arg):
        raise UsageError(f"unknown device spec {spec!r}: use auto, hid[:PATH], pcsc[:READER] or virtual:STATEFILE")
    if kind == "virtual" and not arg:
        raise UsageError("virtual needs a state file: --device virtual:STATEFILE")
    return kind, arg


def open_device(spec: str, *, virtual_transport: str = "direct", **virtual_options) -> Device:
    """Open the one authenticator a SPEC names, or raise UsageError saying what to do."""
    kind, arg = check_spec(spec)
    if kind == "virtual":
        return _virtual_device(arg, virtual_transport, **virtual_options)
    if kind == "hid":
        found = _hid_devices(arg or None)
    elif kind == "pcsc":
        found = _pcsc_devices(arg or None)
    else:
        found = list_devices()
    if not found:
        raise UsageError(f"no authenticator found for {spec!r}: insert a key (see `station devices`)")
    if len(found) > 1:
        for device in found:
            device.close()
        names = ", ".join(d.spec for d in found)
        raise UsageError(f"{len(found)} authenticators match {spec!r} ({names}): name one with --device")
    return found[0]

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
from station.device.faults import TRANSPORT_ERRORS, key_fault
from station.device.session import SessionCtap2
from station.errors import DeviceUnsupported, StationError, UsageError

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
    #: the device's lock file (station.device.pool), released when the device is closed
    lock: Any = field(default=None, repr=False)
    #: set by the watchdog when the key stopped answering
    wedged: bool = False

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
        """The one python-fido2 Ctap2 session on this key (a `SessionCtap2`: its get_info()
        reuses the last getInfo answer until a command could have changed it)."""
        return self._ctap2

    def refresh(self) -> None:
        """Read getInfo again (after the PIN or the configuration changed)."""
        if isinstance(self._ctap2, SessionCtap2):
            self._ctap2.forget_info()
        self.info = self._ctap2.get_info()

    @property
    def transports(self) -> list[str]:
        """WebAuthn transports for the credential response (PROTOCOL.md §3.2): what the key
        reports in getInfo (CTAP 2.1 `transports`), else how the station reaches it: USB-HID is
        "usb"; a card on a PC/SC reader is "nfc" unless the reader is the key's own USB CCID
        interface (a YubiKey's reader is named after it)."""
        reported = [str(t) for t in (self.info.transports or [])]
        if reported:
            return reported
        if self.transport == TRANSPORT_PCSC:
            return ["usb"] if "yubikey" in self.path.lower() else ["nfc"]
        return ["usb"]

    @property
    def key_id(self) -> tuple[str, str | None]:
        """The physical key: AAGUID and serial (the path is only where it was last seen)."""
        return (str(self.aaguid), self.identity.serial)

    def close(self) -> None:
        try:
            _close_quietly(self.ctap_device)
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

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
        ctap2 = SessionCtap2(ctap_device)
        info = ctap2.info
    except TRANSPORT_ERRORS as exc:
        label = f"{_usb_name(ctap_device) or 'key'} ({transport} {path})"
        raise key_fault(exc, label=label, written=False, doing="reading its authenticatorGetInfo") from None
    entry = lookup(bytes(info.aaguid))
    vendor = entry.vendor if entry else _vendor_from_usb(ctap_device)
    model = entry.name if entry else f"unknown model (AAGUID {uuid.UUID(bytes=bytes(info.aaguid))})"
    identity = read_identity(ctap_device, vendor, info)
    return Device(spec=spec, transport=transport, path=path, ctap_device=ctap_device, info=info, _ctap2=ctap2,
                  identity=identity, vendor=vendor, model=model,
                  short_model=entry.short_name if entry else "unknown model")


def _usb_name(ctap_device: CtapDevice) -> str | None:
    descriptor = getattr(ctap_device, "descriptor", None)
    return getattr(descriptor, "product_name", None)


def _vendor_from_usb(ctap_device: CtapDevice) -> str | None:
    descriptor = getattr(ctap_device, "descriptor", None)
    return USB_VENDORS.get(getattr(descriptor, "vid", None))


# ------------------------------------------------------------------------------- transports
@dataclass(frozen=True)
class Candidate:
    """An attached key found by listing hidraw nodes or reader names, not yet opened: opening
    it is what disturbs a key another slot or process holds (a second CTAPHID opener; a PC/SC
    disconnect that powers the card down), so the pool locks a candidate first."""

    spec: str
    transport: str
    path: str
    descriptor: Any = field(default=None, compare=False, repr=False)

    def open(self) -> Device:
        """Open and describe the key; a StationError naming the key if it cannot be used."""
        ctap_device = None
        try:
            if self.transport == TRANSPORT_HID:
                from fido2 import hid as fido2_hid

                connection = fido2_hid.open_connection(self.descriptor)
                try:
                    ctap_device = CtapHidDevice(self.descriptor, connection)  # sends CTAPHID_INIT
                except BaseException:
                    connection.close()
                    raise
            else:
                ctap_device = _connect_pcsc(self.path)
            return describe(ctap_device, spec=self.spec, transport=self.transport, path=self.path)
        except StationError:
            _close_quietly(ctap_device)
            raise
        except TRANSPORT_ERRORS as exc:
            _close_quietly(ctap_device)
            raise key_fault(exc, label=f"{self.transport} {self.path}", written=False, doing="opening it") from None


def _close_quietly(ctap_device) -> None:
    if ctap_device is None:
        return
    try:
        ctap_device.close()
    except TRANSPORT_ERRORS:
        pass


def _hid_candidates(path: str | None) -> list[Candidate]:
    """hidraw nodes with the FIDO usage page, read from their descriptors (nothing is sent)."""
    from fido2 import hid as fido2_hid

    found = []
    for descriptor in fido2_hid.list_descriptors():
        dev_path = str(descriptor.path)
        if path and dev_path != path:
            continue
        found.append(Candidate(f"hid:{dev_path}", TRANSPORT_HID, dev_path, descriptor))
    return found


def _pyscard():
    try:
        from smartcard.Exceptions import SmartcardException
        from smartcard.pcsc.PCSCExceptions import BaseSCardException
        from smartcard.System import readers
    except ImportError as exc:  # pyscard missing
        raise UsageError("PC/SC support needs pyscard: run scripts/setup") from exc
    return readers, (SmartcardException, BaseSCardException)


def reader_states(names: list[str]) -> dict[str, tuple[bool, int]]:
    """{reader: (card present, card event count)} from pcscd's reader states, connecting to no
    card (SCardGetStatusChange with a zero timeout). pcsc-lite counts insertions and removals in
    the upper 16 bits of the event state, so a card swapped between two looks shows as a new
    count. Empty when pcscd does not answer."""
    from smartcard import scard

    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        return {}
    try:
        hresult, states = scard.SCardGetStatusChange(context, 0, [(n, scard.SCARD_STATE_UNAWARE) for n in names])
        if hresult != scard.SCARD_S_SUCCESS:
            return {}
        return {name: (bool(event & scard.SCARD_STATE_PRESENT), event >> 16) for name, event, _atr in states}
    finally:
        scard.SCardReleaseContext(context)


def _pcsc_candidates(reader: str | None) -> list[Candidate]:
    """Readers whose name contains `reader` and that hold a card."""
    readers, errors = _pyscard()
    try:
        names = [r.name for r in readers() if (reader or "") in r.name]
    except errors as exc:  # pcscd not running
        raise UsageError(f"PC/SC is not available ({exc}): start pcscd") from exc
    states = reader_states(names) if names else {}
    return [Candidate(f"pcsc:{n}", TRANSPORT_PCSC, n) for n in names if states.get(n, (True, 0))[0]]


def _connect_pcsc(name: str) -> CtapDevice:
    from fido2.pcsc import CtapPcscDevice

    readers, _ = _pyscard()
    match = [r for r in readers() if r.name == name]
    if not match:
        raise OSError(f"reader {name} is gone")
    connection = match[0].createConnection()
    try:
        return CtapPcscDevice(connection, name)
    except BaseException:
        try:
            connection.release()
        except Exception:  # noqa: BLE001 - the connection may already be gone with the card
            pass
        raise


def candidates(kind: str = "auto", arg: str = "", *, include_pcsc: bool = True) -> list[Candidate]:
    """Every attached key a spec kind could mean, without opening any: USB-HID, then PC/SC (in
    `auto`, PC/SC is skipped quietly when pcscd is not running)."""
    if kind == "hid":
        return _hid_candidates(arg or None)
    if kind == "pcsc":
        return _pcsc_candidates(arg or None)
    found = _hid_candidates(None)
    if include_pcsc:
        try:
            found += _pcsc_candidates(None)
        except UsageError:
            pass
    return found


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


@dataclass
class Scan:
    """What `station devices` sees: keys it opened, keys it left alone because another slot or
    process holds them (their lock files), and keys it opened but cannot use (with why)."""

    devices: list[Device]
    busy: list[Candidate]
    refused: list[tuple[Candidate, StationError]]

    def close(self) -> None:
        for device in self.devices:
            device.close()


def scan(*, include_pcsc: bool = True, lock_dir: Path | None = None) -> Scan:
    """Open every attached key no one else holds (each under its lock while open)."""
    from station.device.pool import try_lock

    result = Scan([], [], [])
    for candidate in candidates(include_pcsc=include_pcsc):
        lock = try_lock(candidate.spec, lock_dir)
        if lock is None:
            result.busy.append(candidate)
            continue
        try:
            device = candidate.open()
        except StationError as exc:
            lock.release()
            result.refused.append((candidate, exc))
            continue
        device.lock = lock
        result.devices.append(device)
    return result


def list_devices(*, include_pcsc: bool = True) -> list[Device]:
    """Every attached authenticator no one else holds: USB-HID, then PC/SC (PC/SC skipped
    quietly if no pcscd). Close each Device (it releases its lock)."""
    return scan(include_pcsc=include_pcsc).devices


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
    from station.device.pool import try_lock

    found = candidates(kind, arg)
    if not found:
        raise UsageError(f"no authenticator found for {spec!r}: insert a key (see `station devices`)")
    if len(found) > 1:
        names = ", ".join(c.spec for c in found)
        raise UsageError(f"{len(found)} authenticators match {spec!r} ({names}): name one with --device")
    lock = try_lock(found[0].spec)
    if lock is None:
        raise UsageError(f"{found[0].spec} is in use by a station slot or another `station` command: "
                         "wait for it, or name another key")
    try:
        device = found[0].open()
    except BaseException:
        lock.release()
        raise
    device.lock = lock
    return device

"""Serial number and firmware version of a key, read the way its vendor exposes them.

- YubiKey: yubikit's ManagementSession over the same transport the station uses: over CTAPHID the
  vendor command READ_CONFIG (0xC2); over PC/SC the management applet (SELECT A000000527471117,
  then READ_CONFIG), after which the FIDO applet is selected again.
- HID Crescendo card (PC/SC): the IC serial number of the GlobalPlatform CPLC data
  (GET DATA 9F7F), which the card manager of Java Card platforms such as the Crescendo answers
  (selected first; the FIDO applet is selected again after).
- HID Crescendo Key over USB: FIDO HID exposes no serial number; it is reported as null with
  that reason.
Firmware falls back to getInfo's firmwareVersion (CTAP 2.1), decoded per vendor
(`firmware_from_info`: 0x00MMmmpp only for Yubico).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fido2.ctap import CtapDevice
from fido2.pcsc import AID_FIDO, CtapPcscDevice

from station.vendors import HID_GLOBAL, YUBICO

log = logging.getLogger(__name__)

SW_OK = 0x9000
CPLC_GET_DATA = bytes.fromhex("80CA9F7F00")
#: SELECT of the GlobalPlatform card manager (issuer security domain): a Java Card FIDO applet
#: refuses GET DATA, the CPLC lives in the card manager.
SELECT_CARD_MANAGER = bytes.fromhex("00A4040008A00000015100000000")
CPLC_TAG = b"\x9f\x7f"
#: Offset of the 4-byte IC serial number inside the 42-byte CPLC value (GlobalPlatform Card Spec,
#: GET DATA CPLC: fabricator 2, type 2, OS id 2, OS date 2, OS level 2, fab date 2, serial 4, ...).
CPLC_SERIAL_OFFSET = 12


@dataclass(frozen=True)
class Identity:
    serial: str | None
    firmware: str | None
    #: why serial is None, for the technician ("Crescendo Key: FIDO HID exposes no serial")
    serial_note: str | None = None


def firmware_from_info(value: int | None, vendor: str | None = YUBICO) -> str | None:
    """getInfo firmwareVersion (CTAP 2.1: a vendor-defined integer) as its vendor writes it.

    Yubico packs major.minor.patch as 0x00MMmmpp (yubikit reads 5.7.1 as 0x050701). Other
    vendors use their own packing: pico-fido sends major << 8 | minor (0x0800 is 8.0, not
    "0.8.0"), so a value below 0x10000 of another vendor reads as "major.minor"; a larger one as
    the three bytes of the YubiKey packing, which others borrow; beyond 24 bits, the number."""
    if value is None or value < 0:
        return None
    if vendor != YUBICO and value < 1 << 16:
        return f"{value >> 8}.{value & 0xFF}"
    if value < 1 << 24:
        return f"{value >> 16}.{(value >> 8) & 0xFF}.{value & 0xFF}"
    return None if vendor == YUBICO else str(value)


class _PcscManagementConnection:
    """A yubikit SmartCardConnection over the APDU channel of an open CtapPcscDevice, so that the
    management applet is read without opening the card a second time."""

    def __init__(self, device: CtapPcscDevice) -> None:
        self._device = device

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw1, sw2 = self._device.apdu_exchange(apdu)
        return data, sw1 << 8 | sw2

    def close(self) -> None:  # the FIDO device stays open
        pass


def _as_smartcard_connection(device: CtapPcscDevice):
    from yubikit.core import TRANSPORT
    from yubikit.core.smartcard import SmartCardConnection

    class Conn(_PcscManagementConnection, SmartCardConnection):
        transport = TRANSPORT.NFC

    return Conn(device)


def _reselect_fido(device: CtapPcscDevice) -> None:
    apdu = b"\x00\xa4\x04\x00" + bytes([len(AID_FIDO)]) + AID_FIDO
    _, sw1, sw2 = device.apdu_exchange(apdu)
    if (sw1, sw2) != (0x90, 0x00):
        raise OSError(f"the FIDO applet did not answer SELECT again ({sw1:02X}{sw2:02X})")


def read_yubikey(device: CtapDevice) -> Identity:
    """Serial and firmware of a YubiKey through yubikit's management interface."""
    from yubikit.management import ManagementSession

    if isinstance(device, CtapPcscDevice):
        try:
            info = ManagementSession(_as_smartcard_connection(device)).read_device_info()
        finally:
            _reselect_fido(device)
    else:
        info = ManagementSession(device).read_device_info()
    firmware = ".".join(str(p) for p in tuple(info.version)[:3])
    if info.serial is None:
        return Identity(None, firmware, "the YubiKey does not expose its serial (disabled in its configuration)")
    return Identity(str(info.serial), firmware)


def parse_cplc_serial(reply: bytes) -> str | None:
    """The IC serial number of a CPLC reply (with or without its 9F7F tag and length)."""
    value = reply[3:] if reply.startswith(CPLC_TAG) else reply
    if len(value) < CPLC_SERIAL_OFFSET + 4:
        return None
    return str(int.from_bytes(value[CPLC_SERIAL_OFFSET : CPLC_SERIAL_OFFSET + 4], "big"))


def read_crescendo(device: CtapDevice) -> Identity:
    if not isinstance(device, CtapPcscDevice):
        return Identity(None, None, "a Crescendo Key exposes no serial number over FIDO HID")
    try:
        device.apdu_exchange(SELECT_CARD_MANAGER)
        data, sw1, sw2 = device.apdu_exchange(CPLC_GET_DATA)
    finally:
        _reselect_fido(device)
    if (sw1 << 8 | sw2) != SW_OK:
        return Identity(None, None, f"the card refused GET DATA CPLC ({sw1:02X}{sw2:02X})")
    serial = parse_cplc_serial(data)
    return Identity(serial, None, None if serial else "the card's CPLC data holds no IC serial number")


def read_identity(device: CtapDevice, vendor: str | None, info) -> Identity:
    """Serial and firmware of any key; never raises for a key that simply does not tell."""
    fallback_fw = firmware_from_info(getattr(info, "firmware_version", None), vendor)
    try:
        if vendor == YUBICO:
            ident = read_yubikey(device)
        elif vendor == HID_GLOBAL:
            ident = read_crescendo(device)
        else:
            ident = Identity(None, None, "unknown vendor: no serial number interface")
    except Exception as exc:  # a vendor interface that fails must not stop discovery
        log.warning("could not read the serial number: %s", type(exc).__name__)
        ident = Identity(None, None, f"reading the serial failed ({type(exc).__name__})")
    return Identity(ident.serial, ident.firmware or fallback_fw, ident.serial_note)

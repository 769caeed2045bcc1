"""The device models the virtual authenticator imitates.

Each `Profile` is what a real key of that model reports in authenticatorGetInfo, plus how the
station reads its serial number and firmware version (yubikit's management interface for a
YubiKey, GlobalPlatform CPLC for a Crescendo).

Sources and assumptions (each field's public source: station/data/SOURCES.md):
- AAGUIDs are copied from station/data/aaguids.json (public FIDO metadata via yubi.co/aaguids and
  Microsoft's FIDO2 hardware vendor table); a CTAP1-only key has none (all zero).
- YubiKey 5 NFC 5.7.1: the real key's getInfo (issue 11): FIDO_2_1, largeBlobs (4096 bytes),
  credBlob (32), largeBlobKey, minPinLength, ES256 + EdDSA + ES384, maxMsgSize 1280, PIN
  protocols [2, 1], 100 discoverable credentials; no `ep` (retail keys have no enterprise
  attestation). The PIN-complexity profile is the same key ordered with Yubico's PIN
  complexity on. 5.4.3: FIDO_2_1_PRE, credentialMgmtPreview, maxMsgSize 1200, PIN protocols
  [2, 1], 25 discoverable credentials. YubiKeys refuse reset 5 s after power-up.
- CTAP1/U2F ("U2F_V2" in versions, property `u2f`): the YubiKey 5 series has it; HID documents
  FIDO U2F for the Crescendo Key series (docs.hidglobal.com/crescendo/key-series/fidou2f.htm,
  USB and contactless). The Crescendo 4000's public FIDO metadata (AAGUID aa79f476-...) is
  protocolFamily fido2 with upv 1.0 / 1.1 only and no HID document mentions U2F for it, so that
  profile has none. yubico-u2f-security-key is CTAP1 only (ASSUMED: firmware 4.1.8, USB pid
  0x0120).
- Crescendo 4000 and Crescendo Key: no public getInfo dump and no published ATR was found.
  ASSUMED: FIDO_2_0 + FIDO_2_1 with authenticatorConfig, PIN protocols [2, 1], ES256 only, 25
  discoverable credentials, firmware 1.0.0 (Crescendo 4000) / 2.0.0 (Crescendo Key), Crescendo
  Key USB product id 0x0028 under HID Global's vendor id 0x09C3, and a generic PC/SC part 3
  contactless ATR; CTAP 2.1's 10 s reset window.
- The YubiKey ATR is the contactless one a YubiKey 5 NFC presents to a PC/SC reader.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fido2.cose import ES256, ES384, EdDSA

#: Options every profile reports (when present in `Profile.options`) with a fixed value.
STATIC_OPTIONS = (
    "rk",
    "up",
    "plat",
    "credMgmt",
    "credentialMgmtPreview",
    "authnrCfg",
    "setMinPINLength",
    "pinUvAuthToken",
    "largeBlobs",
)


@dataclass(frozen=True)
class UsbIdentity:
    """The USB descriptor a CTAPHID transport presents."""

    vid: int
    pid: int
    product: str


def contactless_atr(historical: bytes) -> bytes:
    """An ISO 14443-4 card ATR as PC/SC part 3 builds it: 3B 8n 80 01 <historical> TCK."""
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


@dataclass(frozen=True)
class Profile:
    """A device model: what its authenticatorGetInfo says and how it is identified."""

    name: str
    vendor: str  # "Yubico" | "HID Global"
    model: str
    aaguid: bytes
    firmware: tuple[int, int, int]
    versions: tuple[str, ...]
    options: frozenset[str]  # the STATIC_OPTIONS this model reports as true
    extensions: tuple[str, ...]
    algorithms: tuple[int, ...]  # COSE algorithm identifiers, preferred first
    transports: tuple[str, ...]
    usb: UsbIdentity | None
    pcsc: bool
    atr: bytes
    serial_source: str | None  # "yubikit" | "cplc" | None
    pin_uv_protocols: tuple[int, ...] = (2, 1)
    min_pin_length: int = 4
    max_discoverable: int = 25
    max_msg_size: int = 1200
    max_creds_in_list: int = 8
    max_cred_id_length: int = 128
    max_rpids_for_min_pin: int = 1
    enterprise_attestation: bool = False  # "ep" option present (authenticatorConfig enables it)
    form_factor: int = 1  # yubikit FORM_FACTOR.USB_A_KEYCHAIN
    #: authenticatorReset is refused this long after power-up (CTAP 2.1 §6.6 says 10 s).
    reset_window: float = 10.0
    #: maxSerializedLargeBlobArray (0: no authenticatorLargeBlobs, no largeBlobs option).
    max_large_blob: int = 0
    #: maxCredBlobLength (meaningful only with the credBlob extension).
    max_cred_blob_length: int = 0
    #: Yubico's PIN complexity policy (refuses trivial PINs with PIN_POLICY_VIOLATION).
    pin_complexity: bool = False

    @property
    def force_pin_change(self) -> bool:
        """Whether setMinPINLength with forceChangePin is available (needs authnrCfg)."""
        return "authnrCfg" in self.options and "setMinPINLength" in self.options

    @property
    def ctap2(self) -> bool:
        """Any FIDO_2_x version: a U2F-only key answers no CTAP2 command at all."""
        return any(v.startswith("FIDO_2") for v in self.versions)

    @property
    def u2f(self) -> bool:
        """CTAP1/U2F: CTAPHID_MSG, U2F APDUs, SELECT answering "U2F_V2" (CTAP 2.1 §11)."""
        return "U2F_V2" in self.versions

    @property
    def ctap21(self) -> bool:
        """FIDO_2_1 semantics: permissions on pinUvAuthTokens (option pinUvAuthToken)."""
        return "pinUvAuthToken" in self.options

    @property
    def firmware_int(self) -> int:
        """getInfo firmwareVersion: major << 16 | minor << 8 | patch, as YubiKeys encode it."""
        major, minor, patch = self.firmware
        return major << 16 | minor << 8 | patch


def _aaguid(text: str) -> bytes:
    return uuid.UUID(text).bytes


_YUBICO_ATR = contactless_atr(bytes.fromhex("8073C021C057597562694B6579"))
_GENERIC_ATR = contactless_atr(b"")
#: ASSUMED (no public ATR found for either HID card): the generic PC/SC part 3 contactless ATR.
_CRESCENDO_4000_ATR = _GENERIC_ATR
_CRESCENDO_KEY_ATR = _GENERIC_ATR
#: YubiKeys refuse authenticatorReset more than 5 s after power-up (ykman's `fido reset` help,
#: libfido2's fido_dev_reset(3)); CTAP 2.1 §6.6 allows up to 10 s.
YUBIKEY_RESET_WINDOW = 5.0

#: What both Crescendo profiles assume of CTAP 2.1 (no public getInfo dump of either: assumed).
_CRESCENDO_CTAP21 = dict(
    options=frozenset({"rk", "up", "plat", "credMgmt", "authnrCfg", "setMinPINLength", "pinUvAuthToken"}),
    extensions=("credProtect", "hmac-secret", "minPinLength"),
    algorithms=(ES256.ALGORITHM,),
)

_YUBIKEY_57 = dict(
    vendor="Yubico",
    model="YubiKey 5 NFC",
    aaguid=_aaguid("a25342c0-3cdc-4414-8e46-f4807fca511c"),
    firmware=(5, 7, 1),
    versions=("U2F_V2", "FIDO_2_0", "FIDO_2_1_PRE", "FIDO_2_1"),
    options=frozenset(
        {"rk", "up", "plat", "credMgmt", "credentialMgmtPreview", "authnrCfg", "largeBlobs",
         "setMinPINLength", "pinUvAuthToken"}
    ),
    extensions=("credProtect", "hmac-secret", "largeBlobKey", "credBlob", "minPinLength"),
    algorithms=(ES256.ALGORITHM, EdDSA.ALGORITHM, ES384.ALGORITHM),
    transports=("nfc", "usb"),
    usb=UsbIdentity(0x1050, 0x0407, "YubiKey OTP+FIDO+CCID"),
    pcsc=True,
    atr=_YUBICO_ATR,
    serial_source="yubikit",
    max_discoverable=100,
    max_msg_size=1280,
    reset_window=YUBIKEY_RESET_WINDOW,
    max_large_blob=4096,
    max_cred_blob_length=32,
)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(name="yubikey-5-nfc-5.7", **_YUBIKEY_57),
        # The same key ordered with PIN complexity on (Yubico's 5.7 pre-configuration option).
        Profile(name="yubikey-5-nfc-5.7-pin-complexity", **_YUBIKEY_57, pin_complexity=True),
        Profile(
            name="yubikey-5-nfc-5.4",
            vendor="Yubico",
            model="YubiKey 5 NFC",
            aaguid=_aaguid("2fc0579f-8113-47ea-b116-bb5a8db9202a"),
            firmware=(5, 4, 3),
            versions=("U2F_V2", "FIDO_2_0", "FIDO_2_1_PRE"),
            options=frozenset({"rk", "up", "plat", "credentialMgmtPreview"}),
            extensions=("credProtect", "hmac-secret"),
            algorithms=(ES256.ALGORITHM, EdDSA.ALGORITHM),
            transports=("nfc", "usb"),
            usb=UsbIdentity(0x1050, 0x0407, "YubiKey OTP+FIDO+CCID"),
            pcsc=True,
            atr=_YUBICO_ATR,
            serial_source="yubikit",
            pin_uv_protocols=(2, 1),
            max_discoverable=25,
            max_msg_size=1200,
            reset_window=YUBIKEY_RESET_WINDOW,
        ),
        # An old CTAP1-only key: Yubico's blue "FIDO U2F Security Key" (USB only, no CTAP2).
        Profile(
            name="yubico-u2f-security-key",
            vendor="Yubico",
            model="FIDO U2F Security Key",
            aaguid=bytes(16),  # U2F keys have no AAGUID
            firmware=(4, 1, 8),
            versions=("U2F_V2",),
            options=frozenset(),
            extensions=(),
            algorithms=(ES256.ALGORITHM,),
            transports=("usb",),
            usb=UsbIdentity(0x1050, 0x0120, "Security Key by Yubico"),
            pcsc=False,
            atr=_GENERIC_ATR,
            serial_source=None,
            reset_window=YUBIKEY_RESET_WINDOW,
        ),
        Profile(
            name="crescendo-4000",
            vendor="HID Global",
            model="HID Crescendo 4000",
            aaguid=_aaguid("0b8b05a4-ebd4-4b0b-8f5f-33d7b6e606ab"),
            firmware=(1, 0, 0),
            versions=("FIDO_2_0", "FIDO_2_1"),
            **_CRESCENDO_CTAP21,
            transports=("nfc",),
            usb=None,
            pcsc=True,
            atr=_CRESCENDO_4000_ATR,
            serial_source="cplc",
            form_factor=0,
        ),
        Profile(
            name="crescendo-key",
            vendor="HID Global",
            model="HID Crescendo Key",
            aaguid=_aaguid("692db549-7ae5-44d5-a1e5-dd20a493b723"),
            firmware=(2, 0, 0),
            versions=("U2F_V2", "FIDO_2_0", "FIDO_2_1"),
            **_CRESCENDO_CTAP21,
            transports=("usb",),
            usb=UsbIdentity(0x09C3, 0x0028, "HID Crescendo Key"),
            pcsc=True,
            atr=_CRESCENDO_KEY_ATR,
            serial_source="cplc",
        ),
    )
}

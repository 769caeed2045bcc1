"""CTAP1/U2F raw messages (FIDO U2F Raw Message Formats v1.2; CTAP 2.1 §10, §11.2.9.1.1
CTAPHID_MSG and §11.3 NFC): U2F_REGISTER, U2F_AUTHENTICATE and U2F_VERSION.

A request is an ISO 7816-4 command APDU, extended length (as U2F over HID sends it) or short
(as NFC readers may); the reply is the response data followed by SW1 SW2.

Key handles are this key's credential IDs (see credentials.wrap): an ES256 credential with the
application parameter as its rpIdHash, credProtect userVerificationOptional, not discoverable.
So a U2F registration is a non-discoverable credential like any other, usable through
authenticatorGetAssertion with an rpId whose SHA-256 is the application parameter (the
WebAuthn appid extension, CTAP 2.1 §10.2), and a CTAP2 credential is usable through
U2F_AUTHENTICATE if it is ES256 and not credProtect userVerificationRequired (§12.1). Every
signature, U2F or CTAP2, advances the one signature counter.

User presence in U2F is not waited for: a command needing it answers 6985 until the user has
touched the key, and the client repeats it. Under `PresencePolicy` "approve" the touch is
there at once, under "never" it never comes, and under "delay" it comes `seconds` after the
first request that needed it.

Assumptions (not fixed by the specs): an unknown AUTHENTICATE control byte is WRONG_DATA
(6A80); with alwaysUv on, every U2F command answers 6986 (command not allowed), since U2F cannot
verify the user; the latency model's entry for byte 0x03 (CTAPHID_MSG, which no CTAP2 command
byte uses) applies to U2F messages, and a cancel during it answers 6985.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import IntEnum, unique
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.ctap import CtapError
from fido2.hid import CTAPHID

from . import attestation
from .credentials import CredProtect, new_credential, wrap
from .presence import Keepalive

if TYPE_CHECKING:
    from .authenticator import VirtualAuthenticator
    from .credentials import Credential


class U2fStatus(Exception):
    """Ends a U2F request with a bare status word."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


@dataclass(frozen=True)
class U2fRequest:
    """A U2F request message: the APDU header and its data (Le is not needed over U2F)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes

    @classmethod
    def parse(cls, message: bytes) -> U2fRequest:
        """Header, then Lc and data in extended (00 Lc1 Lc2) or short form, then Le; an
        extended Lc of zero is taken as no data (python-fido2 and libu2f-host send U2F_VERSION
        so). A length that fits no form is WRONG_LENGTH."""
        if len(message) < 4:
            raise U2fStatus(U2fCommands.SW.WRONG_LENGTH)
        cla, ins, p1, p2 = message[:4]
        body = message[4:]
        if len(body) <= 1:  # no data; maybe a short Le
            return cls(cla, ins, p1, p2, b"")
        if body[0]:  # short Lc
            data = body[1 : 1 + body[0]]
            if len(body) - 1 - len(data) not in (0, 1) or len(data) != body[0]:
                raise U2fStatus(U2fCommands.SW.WRONG_LENGTH)
            return cls(cla, ins, p1, p2, data)
        if len(body) == 3:  # extended Le only
            return cls(cla, ins, p1, p2, b"")
        lc = int.from_bytes(body[1:3], "big")
        if len(body) not in (3 + lc, 5 + lc):
            raise U2fStatus(U2fCommands.SW.WRONG_LENGTH)
        return cls(cla, ins, p1, p2, body[3 : 3 + lc])


class U2fCommands:
    """The U2F commands of one virtual authenticator."""

    VERSION = b"U2F_V2"
    #: The latency model's key for a U2F message (the CTAPHID_MSG command byte).
    LATENCY_KEY = CTAPHID.MSG
    #: challenge parameter (32) || application parameter (32)
    REGISTER_LENGTH = 64
    #: U2F_REGISTER response reserved byte.
    REGISTER_RESERVED = 0x05
    #: U2F_REGISTER signature prefix (reserved for future use, 0x00).
    REGISTER_SIGNATURE_PREFIX = b"\x00"

    @unique
    class INS(IntEnum):
        REGISTER = 0x01
        AUTHENTICATE = 0x02
        VERSION = 0x03

    @unique
    class CONTROL(IntEnum):
        """U2F_AUTHENTICATE control byte (P1)."""

        ENFORCE_USER_PRESENCE_AND_SIGN = 0x03
        CHECK_ONLY = 0x07
        DONT_ENFORCE_USER_PRESENCE_AND_SIGN = 0x08

    @unique
    class SW(IntEnum):
        NO_ERROR = 0x9000
        WRONG_LENGTH = 0x6700
        CONDITIONS_NOT_SATISFIED = 0x6985  # test of user presence required
        COMMAND_NOT_ALLOWED = 0x6986
        WRONG_DATA = 0x6A80  # invalid key handle
        INS_NOT_SUPPORTED = 0x6D00
        CLA_NOT_SUPPORTED = 0x6E00

    def __init__(self, key: VirtualAuthenticator) -> None:
        self.key = key
        self._touch_requested: float | None = None

    def process(
        self, message: bytes, keepalive: Keepalive | None, cancel: threading.Event | None
    ) -> bytes:
        """A U2F request message in; response data + SW1 SW2 out. Never raises for bad input."""
        try:
            data = self._dispatch(U2fRequest.parse(message), keepalive, cancel)
            sw = self.SW.NO_ERROR
        except U2fStatus as status:
            data, sw = b"", status.sw
        return data + sw.to_bytes(2, "big")

    def forget_presence(self) -> None:
        """Power loss: a pending touch request is gone."""
        self._touch_requested = None

    def _dispatch(
        self, request: U2fRequest, keepalive: Keepalive | None, cancel: threading.Event | None
    ) -> bytes:
        if request.cla != 0x00:
            raise U2fStatus(self.SW.CLA_NOT_SUPPORTED)
        handler = {
            self.INS.REGISTER: self.register,
            self.INS.AUTHENTICATE: self.authenticate,
            self.INS.VERSION: self.version,
        }.get(request.ins)
        if handler is None:
            raise U2fStatus(self.SW.INS_NOT_SUPPORTED)
        if self.key.state.always_uv:
            raise U2fStatus(self.SW.COMMAND_NOT_ALLOWED)
        try:
            self.key.latency.delay(self.LATENCY_KEY, keepalive, cancel)
        except CtapError:
            raise U2fStatus(self.SW.CONDITIONS_NOT_SATISFIED) from None
        return handler(request)

    # -- U2F_VERSION ------------------------------------------------------------------------
    def version(self, request: U2fRequest) -> bytes:
        """U2F_VERSION: "U2F_V2"; no request data."""
        if request.data:
            raise U2fStatus(self.SW.WRONG_LENGTH)
        return self.VERSION

    # -- U2F_REGISTER -----------------------------------------------------------------------
    def register(self, request: U2fRequest) -> bytes:
        """U2F_REGISTER: a new ES256 credential for the application parameter, attested with
        the attestation key over 0x00 || appParam || challenge || keyHandle || publicKey."""
        if len(request.data) != self.REGISTER_LENGTH:
            raise U2fStatus(self.SW.WRONG_LENGTH)
        challenge, app_param = request.data[:32], request.data[32:]
        self._require_user_presence()
        cred = new_credential(ES256.ALGORITHM, app_param, CredProtect.UV_OPTIONAL, False, False)
        cred.credential_id = wrap(self.key.credential_commands.wrapping_key, cred)
        public_key = _uncompressed_point(cred)
        signed = self.REGISTER_SIGNATURE_PREFIX + app_param + challenge + cred.credential_id + public_key
        signature = self.key.attestation_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return (
            bytes([self.REGISTER_RESERVED])
            + public_key
            + bytes([len(cred.credential_id)])
            + cred.credential_id
            + self.key.attestation_cert_der
            + signature
        )

    # -- U2F_AUTHENTICATE -------------------------------------------------------------------
    def authenticate(self, request: U2fRequest) -> bytes:
        """U2F_AUTHENTICATE: check-only answers 6985 for a key handle of ours (6A80 if not);
        otherwise sign appParam || user presence || counter || challenge."""
        data = request.data
        if len(data) < 65 or len(data) != 65 + data[64]:
            raise U2fStatus(self.SW.WRONG_LENGTH)
        challenge, app_param, key_handle = data[:32], data[32:64], data[65:]
        if request.p1 not in tuple(self.CONTROL):
            raise U2fStatus(self.SW.WRONG_DATA)
        cred = self._credential(app_param, key_handle)
        if request.p1 == self.CONTROL.CHECK_ONLY:
            raise U2fStatus(self.SW.CONDITIONS_NOT_SATISFIED)
        user_presence = 0
        if request.p1 == self.CONTROL.ENFORCE_USER_PRESENCE_AND_SIGN:
            self._require_user_presence()
            user_presence = 0x01
        counter = self.key.next_counter()  # the one counter CTAP2 also advances (durable there)
        signed_part = bytes([user_presence]) + counter.to_bytes(4, "big")
        return signed_part + cred.sign(app_param + signed_part + challenge)

    def _credential(self, app_param: bytes, key_handle: bytes) -> Credential:
        """The ES256 credential behind `key_handle` for `app_param`, usable without UV."""
        cred = self.key.credential_commands.lookup(app_param, key_handle)  # None if deleted via credMgmt
        if cred is None or cred.alg != ES256.ALGORITHM or cred.cred_protect == CredProtect.UV_REQUIRED:
            raise U2fStatus(self.SW.WRONG_DATA)
        return cred

    # -- user presence ----------------------------------------------------------------------
    def _require_user_presence(self) -> None:
        """CONDITIONS_NOT_SATISFIED unless the user has touched the key (a touch is used up)."""
        policy = self.key.presence
        if policy.mode == "approve":
            return
        now = time.monotonic()
        if self._touch_requested is None:
            self._touch_requested = now
        if policy.mode == "never" or now - self._touch_requested < policy.seconds:
            raise U2fStatus(self.SW.CONDITIONS_NOT_SATISFIED)
        self._touch_requested = None


def _uncompressed_point(cred: Credential) -> bytes:
    """The credential public key as U2F sends it: 0x04 || X || Y (65 bytes)."""
    return cred.signing_key().public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


"""The virtual CTAP 2.1 authenticator: command dispatch, power-up state, getInfo, reset,
selection, and the vendor identity hooks (yubikit management config, GlobalPlatform CPLC).

`process()` takes what a CTAPHID_CBOR / NFCCTAP_MSG frame carries (command byte + CBOR map)
and returns the status byte + canonical CBOR, exactly as a real key answers; `process_u2f()`
takes a CTAP1/U2F request message (CTAPHID_MSG, or an ISO 7816 U2F APDU) on a profile with U2F.
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2.base import Ctap2
from fido2.utils import websafe_decode, websafe_encode

from . import attestation
from .client_pin import ClientPinCommand, PinUvAuth
from .config import ConfigCommand
from .credentials import CredentialCommands
from .credman import CredentialManagementCommand
from .errors import VirtualError
from .large_blobs import LargeBlobsCommand
from .presence import Keepalive, LatencyModel, PresencePolicy
from .profiles import PROFILES, STATIC_OPTIONS, Profile
from .state import KeyState, StateFile
from .u2f import U2fCommands

ERR = CtapError.ERR
CMD = Ctap2.CMD
#: Signature counter values reserved by one durable write (see next_counter).
COUNTER_RESERVE = 256


class INFO:
    """authenticatorGetInfo response keys."""

    VERSIONS = 0x01
    EXTENSIONS = 0x02
    AAGUID = 0x03
    OPTIONS = 0x04
    MAX_MSG_SIZE = 0x05
    PIN_UV_AUTH_PROTOCOLS = 0x06
    MAX_CREDENTIAL_COUNT_IN_LIST = 0x07
    MAX_CREDENTIAL_ID_LENGTH = 0x08
    TRANSPORTS = 0x09
    ALGORITHMS = 0x0A
    FORCE_PIN_CHANGE = 0x0C
    MIN_PIN_LENGTH = 0x0D
    FIRMWARE_VERSION = 0x0E
    MAX_SERIALIZED_LARGE_BLOB_ARRAY = 0x0B
    MAX_CRED_BLOB_LENGTH = 0x0F
    MAX_RPIDS_FOR_SET_MIN_PIN_LENGTH = 0x10
    REMAINING_DISCOVERABLE_CREDENTIALS = 0x14


@dataclass
class Request:
    """One CTAP command as the handlers see it: its parameters and the user-presence hook."""

    command: int
    params: dict[Any, Any]
    key: VirtualAuthenticator
    keepalive: Keepalive | None
    cancel: threading.Event | None

    def user_presence(self) -> None:
        """Test of user presence under the key's PresencePolicy (may raise CtapError)."""
        self.key.presence.test_user_presence(self.keepalive, self.cancel)


class VirtualAuthenticator:
    """A software CTAP 2.1 authenticator with the identity of a real key model."""

    profile: Profile
    aaguid: bytes

    def __init__(
        self,
        statefile: StateFile,
        state: KeyState,
        *,
        presence: PresencePolicy | None = None,
        latency: LatencyModel | None = None,
    ) -> None:
        try:
            self.profile = PROFILES[state.profile]
        except KeyError:
            raise VirtualError(f"state file names unknown profile {state.profile!r}") from None
        self.aaguid = bytes.fromhex(state.aaguid)
        self.state = state
        self.presence = presence or PresencePolicy.approve()
        self.latency = latency or LatencyModel()
        self._file = statefile
        self._lock = threading.Lock()
        self.winks = 0
        self.pin_command = ClientPinCommand(self)
        self.credential_commands = CredentialCommands(self)
        self.config_command = ConfigCommand(self)
        self.credman_command = CredentialManagementCommand(self)
        self.u2f_commands = U2fCommands(self)
        self.large_blobs_command = LargeBlobsCommand(self)
        self.pin_uv = PinUvAuth()
        self.powered_up = time.monotonic()
        self._handlers = self._dispatch_table()
        #: the last signature counter value handed out; state.sign_count is its durable ceiling
        self._counter = state.sign_count
        #: the attestation key, parsed once: it is made at `create` and survives every reset
        self.attestation_key = attestation.key_from_pem(state.attestation_key)
        self.attestation_cert_der = websafe_decode(state.attestation_cert)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        statefile: Path,
        profile: str,
        *,
        attestation_ca: tuple[x509.Certificate, Any] | None = None,
        cert_aaguid: bytes | None = None,
        presence: PresencePolicy | None = None,
    ) -> VirtualAuthenticator:
        """A fresh, never-programmed key of `profile`, saved to `statefile` (which must not
        exist) and returned open. `attestation_ca` / `cert_aaguid` make counterfeit keys."""
        model = PROFILES.get(profile)
        if model is None:
            raise VirtualError(f"unknown profile {profile!r}; one of: {', '.join(PROFILES)}")
        file = StateFile(Path(statefile))
        if file.path.exists():
            raise VirtualError(f"{file.path} already exists; refusing to overwrite a virtual key")
        file.lock()
        try:
            serial = _new_serial(model)
            att_key, cert = attestation.issue_attestation_certificate(
                attestation_ca or attestation.load_test_ca(),
                aaguid=cert_aaguid if cert_aaguid is not None else model.aaguid,
                vendor=model.vendor,
                model=model.model,
                serial=serial,
            )
            state = KeyState(
                profile=model.name,
                aaguid=model.aaguid.hex(),
                serial=serial,
                attestation_key=attestation.key_to_pem(att_key),
                attestation_cert=websafe_encode(cert.public_bytes(serialization.Encoding.DER)),
                device_secret=websafe_encode(os.urandom(32)),
                credential_key=websafe_encode(os.urandom(32)),
                min_pin_length=model.min_pin_length,
            )
            file.save(state)
        except BaseException:
            file.unlock()
            raise
        return cls(file, state, presence=presence)

    @classmethod
    def open(
        cls,
        statefile: Path,
        *,
        presence: PresencePolicy | None = None,
        latency: LatencyModel | None = None,
    ) -> VirtualAuthenticator:
        """Open (power up) the key kept in `statefile`; KeyBusy if another process holds it."""
        file = StateFile(Path(statefile))
        file.lock()
        try:
            state = file.load()
            return cls(file, state, presence=presence, latency=latency)
        except BaseException:
            file.unlock()
            raise

    def close(self) -> None:
        """Release the state file. Every change is already durable; a clean close also folds
        the journal into one snapshot, with the signature counter's ceiling brought down to the
        last value handed out (so the next power-up goes on from it, as a real key's does).
        While a command still runs (a wedged key) nothing is written: the next power-up folds
        the journal, and the ceiling stays, which is just as safe."""
        if self._lock.acquire(blocking=False):
            try:
                if self._file.is_locked():
                    self.state.sign_count = self._counter
                    self._file.fold(self.state)
            finally:
                self._lock.release()
        self._file.unlock()

    def __enter__(self) -> VirtualAuthenticator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<VirtualAuthenticator {self.profile.name} serial={self.state.serial}>"

    # -- the CTAP entry point -----------------------------------------------------------
    def process(
        self,
        request: bytes,
        *,
        keepalive: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """Command byte + CBOR in; status byte + canonical CBOR out."""
        with self._lock:
            try:
                response = self._process(request, keepalive, cancel)
            except CtapError as exc:
                return bytes([exc.code])
        if response is None:
            return b"\x00"
        return b"\x00" + (response if isinstance(response, _Encoded) else cbor.encode(response))

    def process_u2f(
        self,
        request: bytes,
        *,
        keepalive: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """A U2F request message (ISO 7816-4 APDU) in; response data + SW1 SW2 out.
        Only for a profile with U2F (the transports route CTAPHID_MSG and U2F APDUs here)."""
        if not self.profile.u2f:
            raise VirtualError(f"{self.profile.model} does not speak CTAP1/U2F")
        with self._lock:
            self.credential_commands.forget_assertions()
            self.credman_command.forget_enumeration()
            return self.u2f_commands.process(request, keepalive, cancel)

    def _process(
        self, request: bytes, keepalive: Keepalive | None, cancel: threading.Event | None
    ) -> dict | None:
        if not request:
            raise CtapError(ERR.INVALID_LENGTH)
        if not self.profile.ctap2:  # a CTAP1-only key knows no CTAP2 command
            raise CtapError(ERR.INVALID_COMMAND)
        if len(request) > self.profile.max_msg_size:
            raise CtapError(ERR.REQUEST_TOO_LARGE)
        command, params = request[0], _decode_params(request[1:])
        handler = self._handlers.get(command)
        if command != CMD.GET_NEXT_ASSERTION:
            self.credential_commands.forget_assertions()
        if command not in (CMD.CREDENTIAL_MGMT, CMD.CREDENTIAL_MGMT_PRE):
            self.credman_command.forget_enumeration()
        if handler is None:
            raise CtapError(ERR.INVALID_COMMAND)
        self.latency.delay(command, keepalive, cancel)
        return handler(Request(command, params, self, keepalive, cancel))

    def _dispatch_table(self) -> dict[int, Callable[[Request], dict | None]]:
        table: dict[int, Callable[[Request], dict | None]] = {
            CMD.GET_INFO: lambda _r: self._encoded_info(),
            CMD.MAKE_CREDENTIAL: self.credential_commands.make_credential,
            CMD.GET_ASSERTION: self.credential_commands.get_assertion,
            CMD.GET_NEXT_ASSERTION: self.credential_commands.get_next_assertion,
            CMD.CLIENT_PIN: self.pin_command,
            CMD.RESET: self.reset,
        }
        options = self.profile.options
        if "credMgmt" in options:
            table[CMD.CREDENTIAL_MGMT] = self.credman_command
        if "credentialMgmtPreview" in options:
            table[CMD.CREDENTIAL_MGMT_PRE] = self.credman_command
        if "FIDO_2_1" in self.profile.versions:
            table[CMD.SELECTION] = self.selection
        if "authnrCfg" in options:
            table[CMD.CONFIG] = self.config_command
        if self.profile.max_large_blob:
            table[CMD.LARGE_BLOBS] = self.large_blobs_command
        return table

    # -- authenticatorGetInfo -----------------------------------------------------------
    def get_info(self) -> dict[int, Any]:
        """authenticatorGetInfo: versions, aaguid, options, limits, per the profile and state."""
        p, s = self.profile, self.state
        options: dict[str, bool] = {o: o != "plat" for o in STATIC_OPTIONS if o in p.options}
        options["clientPin"] = s.pin_set
        if "authnrCfg" in p.options:
            options["alwaysUv"] = s.always_uv
        if p.ctap21:
            options["makeCredUvNotRqd"] = not s.always_uv
        if p.enterprise_attestation:
            options["ep"] = s.enterprise_attestation
        info: dict[int, Any] = {
            INFO.VERSIONS: [v for v in p.versions if not (v == "U2F_V2" and s.always_uv)],
            INFO.EXTENSIONS: list(p.extensions),
            INFO.AAGUID: self.aaguid,
            INFO.OPTIONS: options,
            INFO.MAX_MSG_SIZE: p.max_msg_size,
            INFO.PIN_UV_AUTH_PROTOCOLS: list(p.pin_uv_protocols),
            INFO.MAX_CREDENTIAL_COUNT_IN_LIST: p.max_creds_in_list,
            INFO.MAX_CREDENTIAL_ID_LENGTH: p.max_cred_id_length,
            INFO.TRANSPORTS: list(p.transports),
            INFO.ALGORITHMS: [{"alg": alg, "type": "public-key"} for alg in p.algorithms],
            INFO.FIRMWARE_VERSION: p.firmware_int,
        }
        if p.ctap21:
            info[INFO.FORCE_PIN_CHANGE] = s.force_pin_change
            info[INFO.MIN_PIN_LENGTH] = s.min_pin_length
            info[INFO.REMAINING_DISCOVERABLE_CREDENTIALS] = self.remaining_discoverable()
        if p.max_large_blob:
            info[INFO.MAX_SERIALIZED_LARGE_BLOB_ARRAY] = p.max_large_blob
        if "credBlob" in p.extensions:
            info[INFO.MAX_CRED_BLOB_LENGTH] = p.max_cred_blob_length
        if p.force_pin_change:
            info[INFO.MAX_RPIDS_FOR_SET_MIN_PIN_LENGTH] = p.max_rpids_for_min_pin
        return info

    def _encoded_info(self) -> _Encoded:
        """getInfo in CBOR, encoded once per content: a station reads it several times per key
        and keys of one profile answer alike, so the encodings of the last few contents are
        kept (process-wide; equal content is equal bytes, CBOR being canonical)."""
        info = self.get_info()
        for cached, encoded in tuple(_INFO_ENCODINGS):  # a snapshot: other keys' threads add to it
            if cached == info:
                return encoded
        encoded = _Encoded(cbor.encode(info))
        _INFO_ENCODINGS.appendleft((info, encoded))
        return encoded

    def remaining_discoverable(self) -> int:
        return self.profile.max_discoverable - len(self.state.credentials)

    # -- authenticatorReset, authenticatorSelection ------------------------------------------
    def reset(self, request: Request) -> None:
        """authenticatorReset: within the profile's reset window after power-up (CTAP 2.1 §6.6:
        10 s; YubiKeys 5 s) and with user presence; wipes the PIN,
        every credential and every authenticatorConfig setting."""
        if time.monotonic() - self.powered_up > self.profile.reset_window:
            raise CtapError(ERR.NOT_ALLOWED)
        request.user_presence()
        s = self.state
        self.state = KeyState(
            profile=s.profile,
            aaguid=s.aaguid,
            serial=s.serial,
            attestation_key=s.attestation_key,
            attestation_cert=s.attestation_cert,
            device_secret=websafe_encode(os.urandom(32)),
            credential_key=websafe_encode(os.urandom(32)),
            min_pin_length=self.profile.min_pin_length,
        )
        self._counter = 0
        self.pin_uv = PinUvAuth()
        self.large_blobs_command.forget_write()
        self.save()

    def selection(self, request: Request) -> None:
        """authenticatorSelection: succeed once the user touches the key."""
        request.user_presence()

    # -- power, persistence -------------------------------------------------------------
    def power_cycle(self) -> None:
        """Power loss and power-up: the volatile state (pinUvAuthToken, key agreement keys,
        consecutive PIN failures, pending getNextAssertion / enumeration) is lost and the
        reset window starts again."""
        with self._lock:
            self.pin_uv = PinUvAuth()
            self.credential_commands.forget_assertions()
            self.credman_command.forget_enumeration()
            self.u2f_commands.forget_presence()
            self.large_blobs_command.forget_write()
            self.powered_up = time.monotonic()

    def wink(self) -> None:
        """CTAPHID_WINK: the key would blink; counted for tests."""
        self.winks += 1

    def save(self) -> None:
        """Persist the state (durable before the command answers; called after every change)."""
        self._file.save(self.state)

    def next_counter(self) -> int:
        """The next value of the one signature counter (CTAP2 and U2F signatures).

        A real key writes its counter to flash with every signature; here the state keeps a
        ceiling instead: all values handed out are at most state.sign_count, and reaching it
        reserves the next COUNTER_RESERVE values in one durable write before the value is
        used. After a crash (or a pull) the key goes on above the ceiling, so the counter never
        repeats or goes back (WebAuthn §6.1.1 asks only that it increase); a clean close
        writes the exact value."""
        self._counter += 1
        if self._counter > self.state.sign_count:
            self.state.sign_count = self._counter + COUNTER_RESERVE - 1
            self.save()
        return self._counter

    # -- vendor identity hooks ------------------------------------------------------------
    def management_config(self, page: int = 0) -> bytes:
        """yubikit READ_CONFIG reply: [len][TLV...] with serial (0x02) and version (0x05)."""
        if self.profile.serial_source != "yubikit":
            raise VirtualError(f"{self.profile.model} has no YubiKey management interface")
        if page != 0:
            return b"\x00"
        fido = 0x0200 | 0x0002  # CAPABILITY.FIDO2 | CAPABILITY.U2F
        caps = (0x0001 | 0x0008 | 0x0010 | 0x0020 | fido).to_bytes(2, "big")  # + OTP OPENPGP PIV OATH
        tlvs = [
            (0x01, caps),  # USB supported
            (0x02, self.state.serial.to_bytes(4, "big")),
            (0x03, caps),  # USB enabled
            (0x04, bytes([self.profile.form_factor])),
            (0x05, bytes(self.profile.firmware)),
            (0x06, b"\x00\x00"),  # auto-eject timeout
            (0x07, b"\x0f"),  # challenge-response timeout
            (0x08, b"\x00"),  # device flags
            (0x0A, b"\x00"),  # config lock
        ]
        if "nfc" in self.profile.transports:
            tlvs += [(0x0D, caps), (0x0E, caps)]
        body = b"".join(bytes([tag, len(value)]) + value for tag, value in tlvs)
        return bytes([len(body)]) + body

    def cplc(self) -> bytes | None:
        """GlobalPlatform CPLC data as GET DATA 9F7F returns it (tag 9F7F, 42 bytes); the IC
        serial number field (bytes 13-16 of the data) carries the serial. None if not a card
        of that kind."""
        if self.profile.serial_source != "cplc":
            return None
        fields = (
            b"\x40\x90"  # IC fabricator (NXP)
            + b"\x00\x00"  # IC type
            + b"\x00\x00"  # operating system identifier
            + b"\x00\x00"  # operating system release date
            + bytes(self.profile.firmware[:2])  # operating system release level
            + b"\x00\x00"  # IC fabrication date
            + self.state.serial.to_bytes(4, "big")  # IC serial number
            + b"\x00" * 26  # batch, module, embedding, pre-perso and perso fields
        )
        return b"\x9f\x7f" + bytes([len(fields)]) + fields


class _Encoded(bytes):
    """A response already in CBOR (process() sends it as it is)."""


#: The last getInfo contents and their encodings (see _encoded_info), newest first.
_INFO_ENCODINGS: deque[tuple[dict, _Encoded]] = deque(maxlen=32)


def _decode_params(data: bytes) -> dict[Any, Any]:
    """The command's CBOR map (empty when no parameters); INVALID_CBOR / CBOR_UNEXPECTED_TYPE.

    fido2.cbor raises struct.error on a truncated length and RecursionError on nesting far
    beyond the four levels CTAP 2.1 §8 allows: both are malformed CBOR here."""
    if not data:
        return {}
    try:
        value, rest = cbor.decode_from(data)
    except (ValueError, IndexError, KeyError, TypeError, struct.error, RecursionError):
        raise CtapError(ERR.INVALID_CBOR) from None
    if rest:
        raise CtapError(ERR.INVALID_CBOR)
    if not isinstance(value, dict):
        raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
    return value


def _new_serial(profile: Profile) -> int:
    """A plausible serial: 8 decimal digits for a YubiKey, a 32-bit IC serial for a card."""
    if profile.serial_source == "yubikit":
        return 10_000_000 + secrets.randbelow(30_000_000)
    return 0x10000000 + secrets.randbelow(0xE0000000)

"""authenticatorClientPIN (CTAP 2.1 §6.5): PIN/UV auth protocols 1 and 2, the PIN, the
pinUvAuthToken and its permissions.

State rules followed:
- pinRetries starts at 8 and survives power cycles; each wrong PIN decrements it; 0 gives
  CTAP2_ERR_PIN_BLOCKED for good (until authenticatorReset).
- 3 consecutive wrong PINs since power-up give CTAP2_ERR_PIN_AUTH_BLOCKED until a power cycle.
- A wrong PIN regenerates the key agreement key; so does every power-up.
- getPINRetries on a key without a PIN answers CTAP2_ERR_PIN_NOT_SET, as YubiKeys do (Yubico's
  own device suite, python-fido2 tests/device/test_clientpin.py::test_set_and_reset, asserts it
  right after a factory reset).
- With forcePINChange set, getPinToken / getPinUvAuthTokenUsingPinWithPermissions answer
  CTAP2_ERR_PIN_INVALID after the PIN checked out (CTAP 2.1 §6.5.5.7.2 step "If the
  authenticator's forcePINChange is true, return CTAP2_ERR_PIN_INVALID"; python-fido2's
  test_config.py::test_force_pin_change and OpenSK agree) until changePIN succeeds. changePIN
  to a PIN shorter than minPINLength, or (while forcePINChange) equal to the current PIN, gives
  CTAP2_ERR_PIN_POLICY_VIOLATION.
- setPIN on a key that has a PIN answers CTAP2_ERR_NOT_ALLOWED (CTAP 2.1 §6.5.5.5; what SoloKeys'
  and pico-fido's suites expect of real keys; see station/data/SOURCES.md).
- Obtaining a token replaces the previous one (resetPinUvAuthToken); changePIN invalidates it.
- A profile with Yubico's PIN complexity on refuses trivial new PINs (`trivial_pin`) with
  CTAP2_ERR_PIN_POLICY_VIOLATION, on setPIN and changePIN alike.
- Token timers (§6.5.2.1): a token not used within the initial usage time limit (30 s, the USB
  figure) stops being usable; a used one lasts at most the max usage time period (10 minutes).
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import CoseKey
from fido2.ctap import CtapError
from fido2.ctap2.pin import ClientPin, PinProtocol, PinProtocolV1, PinProtocolV2
from fido2.utils import bytes2int, int2bytes

from .state import PIN_RETRIES_MAX

if TYPE_CHECKING:
    from .authenticator import Request, VirtualAuthenticator

ERR = CtapError.ERR
PERMISSION = ClientPin.PERMISSION
CONSECUTIVE_FAILURES_MAX = 3
#: pinUvAuthToken maximum usage time period (CTAP 2.1 §6.5.2.1: 10 minutes).
TOKEN_MAX_USAGE_SECONDS = 600.0
#: pinUvAuthToken initial usage time limit (CTAP 2.1 §6.5.2.1: 30 s on USB; our keys use it on
#: every transport, as the stricter choice).
TOKEN_INITIAL_USAGE_SECONDS = 30.0
PROTOCOLS: dict[int, type[PinProtocol]] = {1: PinProtocolV1, 2: PinProtocolV2}


class P:
    """authenticatorClientPIN parameter keys."""

    PIN_UV_AUTH_PROTOCOL = 0x01
    SUB_COMMAND = 0x02
    KEY_AGREEMENT = 0x03
    PIN_UV_AUTH_PARAM = 0x04
    NEW_PIN_ENC = 0x05
    PIN_HASH_ENC = 0x06
    PERMISSIONS = 0x09
    RP_ID = 0x0A


def verify(protocol: int, key: bytes, message: bytes, signature: bytes) -> bool:
    """The PIN/UV auth protocol's verify(key, message, signature)."""
    mac = hmac.new(key[:32] if protocol == 2 else key, message, sha256).digest()
    expected = mac[:16] if protocol == 1 else mac
    return isinstance(signature, bytes) and hmac.compare_digest(expected, signature)


@dataclass
class PinUvAuthToken:
    """The pinUvAuthToken state: the token, its permissions and permissions RP ID."""

    token: bytes
    permissions: int
    rp_id: str | None
    issued: float
    user_verified: bool = True
    in_use: bool = False  # used at least once (the initial usage time limit no longer applies)

    def expired(self) -> bool:
        age = time.monotonic() - self.issued
        if not self.in_use and age > TOKEN_INITIAL_USAGE_SECONDS:
            return True
        return age > TOKEN_MAX_USAGE_SECONDS

    def clear_permissions_except_lbw(self) -> None:
        self.permissions &= PERMISSION.LARGE_BLOB_WRITE
        self.user_verified = False


class PinUvAuth:
    """Volatile PIN/UV state, re-created at every power-up."""

    def __init__(self) -> None:
        self.key_agreement: dict[int, ec.EllipticCurvePrivateKey] = {}
        self.token: PinUvAuthToken | None = None
        self.consecutive_failures = 0
        self.regenerate()

    def regenerate(self) -> None:
        """New key agreement key pair for each protocol."""
        self.key_agreement = {v: ec.generate_private_key(ec.SECP256R1()) for v in PROTOCOLS}

    def public_key(self, protocol: int) -> dict[int, Any]:
        """getPublicKey(): the COSE_Key for keyAgreement (alg -25 ECDH-ES+HKDF-256, P-256)."""
        pn = self.key_agreement[protocol].public_key().public_numbers()
        return {1: 2, 3: -25, -1: 1, -2: int2bytes(pn.x, 32), -3: int2bytes(pn.y, 32)}

    def decapsulate(self, protocol: int, peer: Any) -> bytes:
        """decapsulate(peerCoseKey) → sharedSecret; a malformed key is INVALID_PARAMETER."""
        try:
            if not isinstance(peer, dict) or peer.get(1) != 2 or peer.get(-1) != 1:
                raise ValueError("not an EC2 P-256 COSE key")
            x, y = bytes2int(peer[-2]), bytes2int(peer[-3])
            pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        except (KeyError, TypeError, ValueError):
            raise CtapError(ERR.INVALID_PARAMETER) from None
        z = self.key_agreement[protocol].exchange(ec.ECDH(), pub)
        return PROTOCOLS[protocol]().kdf(z)

    def issue_token(self, permissions: int, rp_id: str | None) -> bytes:
        """resetPinUvAuthToken + beginUsingPinUvAuthToken: a fresh 32-byte token."""
        self.token = PinUvAuthToken(os.urandom(32), permissions, rp_id, time.monotonic())
        return self.token.token

    def check_token(
        self, protocol: int, message: bytes, param: bytes, permission: int, rp_id: str | None,
        *, bind_rp: bool = True,
    ) -> PinUvAuthToken:
        """Verify pinUvAuthParam over `message` with the current token, which must hold
        `permission` and, if bound to a permissions RP ID, be bound to `rp_id`
        (rp_id None: the token must not be bound). Binds an unbound token for mc/ga.
        bind_rp=False: the permission ignores the RP ID (lbw, acfg per §6.5.5.7)."""
        token = self.token
        if token is not None and token.expired():
            self.token = token = None  # stopUsingPinUvAuthToken
        if token is None or not verify(protocol, token.token, message, param):
            raise CtapError(ERR.PIN_AUTH_INVALID)
        if not token.permissions & permission:
            raise CtapError(ERR.PIN_AUTH_INVALID)
        if bind_rp and token.rp_id is not None and token.rp_id != rp_id:
            raise CtapError(ERR.PIN_AUTH_INVALID)
        if token.rp_id is None and rp_id is not None and permission in (
            PERMISSION.MAKE_CREDENTIAL,
            PERMISSION.GET_ASSERTION,
        ):
            token.rp_id = rp_id
        token.in_use = True
        return token


def check_protocol(key: VirtualAuthenticator, params: dict[int, Any], key_id: int) -> int:
    """pinUvAuthProtocol: MISSING_PARAMETER if absent, INVALID_PARAMETER if unsupported."""
    protocol = params.get(key_id)
    if protocol is None:
        raise CtapError(ERR.MISSING_PARAMETER)
    if protocol not in key.profile.pin_uv_protocols:
        raise CtapError(ERR.INVALID_PARAMETER)
    return protocol


def subcommand_handler(params: dict[Any, Any], key_id: int, handlers: dict[int, Any]) -> Any:
    """The handler of the `subCommand` parameter: MISSING_PARAMETER if absent,
    CBOR_UNEXPECTED_TYPE if not an unsigned integer, INVALID_SUBCOMMAND if unknown."""
    sub = params.get(key_id)
    if sub is None:
        raise CtapError(ERR.MISSING_PARAMETER)
    if not isinstance(sub, int) or isinstance(sub, bool):
        raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
    handler = handlers.get(sub)
    if handler is None:
        raise CtapError(ERR.INVALID_SUBCOMMAND)
    return handler


def _required(params: dict[int, Any], *keys: int) -> None:
    if any(params.get(k) is None for k in keys):
        raise CtapError(ERR.MISSING_PARAMETER)


class ClientPinCommand:
    """authenticatorClientPIN, one method per subCommand."""

    def __init__(self, key: VirtualAuthenticator) -> None:
        self.key = key
        self.handlers = {
            ClientPin.CMD.GET_PIN_RETRIES: self.get_pin_retries,
            ClientPin.CMD.GET_KEY_AGREEMENT: self.get_key_agreement,
            ClientPin.CMD.SET_PIN: self.set_pin,
            ClientPin.CMD.CHANGE_PIN: self.change_pin,
            ClientPin.CMD.GET_TOKEN_USING_PIN_LEGACY: self.get_pin_token,
        }
        if key.profile.ctap21:
            self.handlers[ClientPin.CMD.GET_TOKEN_USING_PIN] = self.get_token_with_permissions

    @property
    def uv(self) -> PinUvAuth:
        return self.key.pin_uv

    def __call__(self, request: Request) -> dict[int, Any] | None:
        params = request.params
        handler = subcommand_handler(params, P.SUB_COMMAND, self.handlers)
        sub = params[P.SUB_COMMAND]
        if sub != ClientPin.CMD.GET_PIN_RETRIES:
            params = dict(params, protocol=check_protocol(self.key, params, P.PIN_UV_AUTH_PROTOCOL))
        return handler(params)

    # -- subcommands ----------------------------------------------------------------------
    def get_pin_retries(self, params: dict) -> dict[int, Any]:
        """getPINRetries: pinRetries, and powerCycleState (2.1); PIN_NOT_SET without a PIN."""
        if not self.key.state.pin_set:
            raise CtapError(ERR.PIN_NOT_SET)
        result: dict[int, Any] = {ClientPin.RESULT.PIN_RETRIES: self.key.state.pin_retries}
        if self.key.profile.ctap21:
            result[ClientPin.RESULT.POWER_CYCLE_STATE] = (
                self.uv.consecutive_failures >= CONSECUTIVE_FAILURES_MAX
            )
        return result

    def get_key_agreement(self, params: dict) -> dict[int, Any]:
        """getKeyAgreement: the authenticator's key agreement public key."""
        return {ClientPin.RESULT.KEY_AGREEMENT: self.uv.public_key(params["protocol"])}

    def set_pin(self, params: dict) -> None:
        """setPIN: only when no PIN is set; newPinEnc authenticated with the shared secret."""
        _required(params, P.KEY_AGREEMENT, P.PIN_UV_AUTH_PARAM, P.NEW_PIN_ENC)
        if self.key.state.pin_set:
            raise CtapError(ERR.NOT_ALLOWED)
        protocol = params["protocol"]
        shared = self.uv.decapsulate(protocol, params[P.KEY_AGREEMENT])
        if not verify(protocol, shared, params[P.NEW_PIN_ENC], params[P.PIN_UV_AUTH_PARAM]):
            raise CtapError(ERR.PIN_AUTH_INVALID)
        pin = self._decrypt_new_pin(protocol, shared, params[P.NEW_PIN_ENC])
        self.key.state.set_pin(sha256(pin).digest()[:16], len(pin.decode()))
        self.key.save()

    def change_pin(self, params: dict) -> None:
        """changePIN: verify the current pinHashEnc, then store the new PIN; clears forcePINChange."""
        _required(params, P.KEY_AGREEMENT, P.PIN_HASH_ENC, P.NEW_PIN_ENC, P.PIN_UV_AUTH_PARAM)
        if not self.key.state.pin_set:
            raise CtapError(ERR.PIN_NOT_SET)
        self._check_not_blocked()
        protocol = params["protocol"]
        shared = self.uv.decapsulate(protocol, params[P.KEY_AGREEMENT])
        message = params[P.NEW_PIN_ENC] + params[P.PIN_HASH_ENC]
        if not verify(protocol, shared, message, params[P.PIN_UV_AUTH_PARAM]):
            raise CtapError(ERR.PIN_AUTH_INVALID)
        self._verify_pin_hash(protocol, shared, params[P.PIN_HASH_ENC])
        pin = self._decrypt_new_pin(protocol, shared, params[P.NEW_PIN_ENC])
        new_hash = sha256(pin).digest()[:16]
        if self.key.state.force_pin_change and self.key.state.pin_matches(new_hash):
            raise CtapError(ERR.PIN_POLICY_VIOLATION)
        self.key.state.set_pin(new_hash, len(pin.decode()))
        self.key.state.force_pin_change = False
        self.uv.token = None
        self.key.save()

    def get_pin_token(self, params: dict) -> dict[int, Any]:
        """getPinToken (legacy): permissions mc and ga by default (all of them before 2.1)."""
        _required(params, P.KEY_AGREEMENT, P.PIN_HASH_ENC)
        if params.get(P.PERMISSIONS) is not None or params.get(P.RP_ID) is not None:
            raise CtapError(ERR.INVALID_PARAMETER)
        default = (
            PERMISSION.MAKE_CREDENTIAL | PERMISSION.GET_ASSERTION
            if self.key.profile.ctap21
            else PERMISSION.MAKE_CREDENTIAL | PERMISSION.GET_ASSERTION | PERMISSION.CREDENTIAL_MGMT
        )
        return self._token_using_pin(params, default, None)

    def get_token_with_permissions(self, params: dict) -> dict[int, Any]:
        """getPinUvAuthTokenUsingPinWithPermissions: permissions must be non-zero and supported."""
        _required(params, P.KEY_AGREEMENT, P.PIN_HASH_ENC, P.PERMISSIONS)
        permissions = params[P.PERMISSIONS]
        if not isinstance(permissions, int) or permissions == 0:
            raise CtapError(ERR.INVALID_PARAMETER)
        if permissions & ~self._supported_permissions():
            raise CtapError(ERR.UNAUTHORIZED_PERMISSION)
        return self._token_using_pin(params, permissions, params.get(P.RP_ID))

    # -- helpers ------------------------------------------------------------------------
    def _supported_permissions(self) -> int:
        supported = PERMISSION.MAKE_CREDENTIAL | PERMISSION.GET_ASSERTION
        if "credMgmt" in self.key.profile.options:
            supported |= PERMISSION.CREDENTIAL_MGMT
        if "authnrCfg" in self.key.profile.options:
            supported |= PERMISSION.AUTHENTICATOR_CFG
        if self.key.profile.max_large_blob:
            supported |= PERMISSION.LARGE_BLOB_WRITE
        return supported

    def _token_using_pin(self, params: dict, permissions: int, rp_id: str | None) -> dict[int, Any]:
        if not self.key.state.pin_set:
            raise CtapError(ERR.PIN_NOT_SET)
        self._check_not_blocked()
        protocol = params["protocol"]
        shared = self.uv.decapsulate(protocol, params[P.KEY_AGREEMENT])
        self._verify_pin_hash(protocol, shared, params[P.PIN_HASH_ENC])
        if self.key.state.force_pin_change:
            raise CtapError(ERR.PIN_INVALID)
        token = self.uv.issue_token(permissions, rp_id)
        return {ClientPin.RESULT.PIN_UV_TOKEN: PROTOCOLS[protocol]().encrypt(shared, token)}

    def _check_not_blocked(self) -> None:
        if self.key.state.pin_retries == 0:
            raise CtapError(ERR.PIN_BLOCKED)
        if self.uv.consecutive_failures >= CONSECUTIVE_FAILURES_MAX:
            raise CtapError(ERR.PIN_AUTH_BLOCKED)

    def _verify_pin_hash(self, protocol: int, shared: bytes, pin_hash_enc: Any) -> None:
        """Decrement pinRetries, compare LEFT(SHA-256(PIN), 16); on mismatch regenerate the key
        agreement key and answer PIN_INVALID / PIN_AUTH_BLOCKED / PIN_BLOCKED."""
        expected_len = 16 if protocol == 1 else 32
        if not isinstance(pin_hash_enc, bytes) or len(pin_hash_enc) != expected_len:
            raise CtapError(ERR.INVALID_PARAMETER)
        state = self.key.state
        state.pin_retries -= 1
        pin_hash = PROTOCOLS[protocol]().decrypt(shared, pin_hash_enc)
        if not state.pin_matches(pin_hash):
            self.uv.regenerate()
            self.uv.consecutive_failures += 1
            self.key.save()
            if state.pin_retries == 0:
                raise CtapError(ERR.PIN_BLOCKED)
            if self.uv.consecutive_failures >= CONSECUTIVE_FAILURES_MAX:
                raise CtapError(ERR.PIN_AUTH_BLOCKED)
            raise CtapError(ERR.PIN_INVALID)
        state.pin_retries = PIN_RETRIES_MAX
        self.uv.consecutive_failures = 0
        self.key.save()

    def _decrypt_new_pin(self, protocol: int, shared: bytes, new_pin_enc: Any) -> bytes:
        """paddedNewPin must be 64 bytes; the PIN is its bytes before the first 0x00, at least
        minPINLength code points and at most 63 bytes (else PIN_POLICY_VIOLATION)."""
        expected_len = 64 if protocol == 1 else 80
        if not isinstance(new_pin_enc, bytes) or len(new_pin_enc) != expected_len:
            raise CtapError(ERR.INVALID_PARAMETER)
        padded = PROTOCOLS[protocol]().decrypt(shared, new_pin_enc)
        pin = padded.split(b"\x00", 1)[0]
        try:
            length = len(pin.decode("utf-8"))
        except UnicodeDecodeError:
            raise CtapError(ERR.PIN_POLICY_VIOLATION) from None
        if length < self.key.state.min_pin_length or len(pin) > 63:
            raise CtapError(ERR.PIN_POLICY_VIOLATION)
        if self.key.profile.pin_complexity and trivial_pin(pin.decode("utf-8")):
            raise CtapError(ERR.PIN_POLICY_VIOLATION)
        return pin


#: PINs Yubico names as refused under PIN complexity (docs.yubico.com/yesdk, "PIN complexity
#: policy": 11111111, password, 12345678; issue 11 cites 123123). The full blocklist is in the
#: YubiKey Technical Manual, which we could not read: these are the published examples only.
PIN_BLOCKLIST = frozenset({"11111111", "password", "12345678", "123123"})


def trivial_pin(pin: str) -> bool:
    """Yubico's PIN complexity policy (firmware 5.7+, when enabled): a blocklisted PIN, one
    character repeated (the policy's "11111111" example, generalised: ASSUMED), or a run of
    consecutive ascending or descending digits ("12345678", generalised: ASSUMED)."""
    if pin.lower() in PIN_BLOCKLIST or len(set(pin)) == 1:
        return True
    if pin.isdigit() and len(pin) > 1:
        steps = {int(b) - int(a) for a, b in zip(pin, pin[1:])}
        return steps in ({1}, {-1})
    return False

"""One credential request → one discoverable credential on the key → RegistrationResponseJSON.

The key is driven through python-fido2's own `Fido2Client`, as a browser would drive it, so that
the PIN/UV token (permission mc, bound to the rpId), the extension mapping (credProtect from
`credentialProtectionPolicy`, hmac-secret from `hmacCreateSecret`, credProps) and excludeList
handling are the library's. The station only fixes what the protocol fixes (PROTOCOL.md §2.2,
§3.2): the credential is discoverable, made with UV, with direct attestation, and clientDataJSON
is exactly `{"type":"webauthn.create","challenge":<as sent>,"origin":<origin>,"crossOrigin":false}`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from functools import partial
from dataclasses import dataclass
from typing import Any

from fido2.client import (
    ClientDataCollector,
    ClientError,
    Fido2Client,
    UserInteraction,
)
from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2.extensions import (
    CredPropsExtension,
    CredProtectExtension,
    HmacSecretExtension,
    MinPinLengthExtension,
)
from fido2.webauthn import (
    CollectedClientData,
    PublicKeyCredentialCreationOptions,
)

from station.device.session import SessionCtap2, client_on_session
from station.errors import DeviceError, DeviceUnsupported, StationError, UserPresenceTimeout
from station.provision.pin import Pin


class Cancelled(StationError):
    """The technician cancelled (Ctrl-C) while the key was being programmed."""

    code = "device_error"


class _ExactClientData(ClientDataCollector):
    """clientDataJSON exactly as PROTOCOL.md §3.2: the challenge string as the customer sent it.
    Set per request (`expect`), so one Fido2Client serves every credential of an item."""

    def expect(self, origin: str, challenge: str, rp_id: str) -> None:
        self._origin, self._challenge, self._rp_id = origin, challenge, rp_id

    def collect_client_data(self, options):
        data = CollectedClientData.create(
            type=CollectedClientData.TYPE.CREATE,
            challenge=self._challenge,
            origin=self._origin,
            cross_origin=False,
        )
        return data, self._rp_id


class _StationInteraction(UserInteraction):
    def __init__(self, pin: Pin, on_touch: Callable[[], None] | None) -> None:
        self._pin = pin
        self._on_touch = on_touch

    def prompt_up(self) -> None:
        if self._on_touch:
            self._on_touch()

    def request_pin(self, permissions, rp_id):
        return self._pin.reveal()

    def request_uv(self, permissions, rp_id):
        return False  # the PIN is the only UV a factory uses


@dataclass(frozen=True)
class MadeCredential:
    """What the key returned, in the JSON shape the response carries."""

    registration: dict[str, Any]  # RegistrationResponseJSON
    attestation_object: bytes
    client_data_hash: bytes


def creation_options(public_key: dict[str, Any]) -> PublicKeyCredentialCreationOptions:
    """The customer's options with what the protocol fixes: rk required, UV required, direct
    attestation. Everything else (algorithms in order, excludeCredentials, extensions) is kept."""
    options = dict(public_key)
    selection = dict(options.get("authenticatorSelection") or {})
    selection.update(residentKey="required", requireResidentKey=True, userVerification="required")
    options["authenticatorSelection"] = selection
    options["attestation"] = "direct"
    extensions = dict(options.get("extensions") or {})
    extensions["credProps"] = True
    options["extensions"] = extensions
    return PublicKeyCredentialCreationOptions.from_dict(options)


def _client_error(exc: ClientError) -> StationError:
    from station.device.faults import TRANSPORT_ERRORS, describe_exception

    cause = exc.cause
    if cause is not None and not isinstance(cause, CtapError) and isinstance(cause, TRANSPORT_ERRORS):
        return DeviceError(f"makeCredential failed: {describe_exception(cause)}")
    if isinstance(cause, CtapError):
        if cause.code == CtapError.ERR.USER_ACTION_TIMEOUT:
            return UserPresenceTimeout("the key was not touched in time")
        if cause.code == CtapError.ERR.KEEPALIVE_CANCEL:
            return Cancelled("cancelled by the technician")
        if cause.code == CtapError.ERR.CREDENTIAL_EXCLUDED:
            return DeviceError("the key already holds a credential from excludeCredentials")
        return DeviceError(f"makeCredential failed: {cause.code.name}")
    if exc.code == ClientError.ERR.TIMEOUT:
        return UserPresenceTimeout("the key was not touched in time")
    if exc.code == ClientError.ERR.CONFIGURATION_UNSUPPORTED:
        return DeviceUnsupported("the key cannot make this credential")
    return DeviceError(f"makeCredential failed: {exc.code.name}")


class CredentialMaker:
    """authenticatorMakeCredential for each credential request of one item, through one
    python-fido2 Fido2Client, sending through the key's session (`session`): its getInfo reads
    reuse the session's until a command changes what getInfo reports."""

    def __init__(self, ctap_device: CtapDevice, pin: Pin, *, transports: list[str],
                 on_touch: Callable[[], None] | None = None, event: threading.Event | None = None,
                 session: SessionCtap2 | None = None) -> None:
        """`session`: the opened key's Ctap2 (`Device.ctap2()`), which the client then sends
        through, so that its reads of getInfo reuse the session's."""
        self._collector = _ExactClientData()
        build = partial(client_on_session, session) if session is not None else partial(Fido2Client, ctap_device)
        self._client = build(
            self._collector,
            _StationInteraction(pin, on_touch),
            extensions=[
                HmacSecretExtension(allow_hmac_secret=True),
                CredProtectExtension(),
                CredPropsExtension(),
                MinPinLengthExtension(),
            ],
        )
        self._transports = list(transports)
        self._event = event

    def make(self, *, public_key: dict[str, Any], origin: str) -> MadeCredential:
        options = creation_options(public_key)
        self._collector.expect(origin, public_key["challenge"], options.rp.id)
        try:
            result = self._client.make_credential(options, event=self._event)
        except ClientError as exc:
            raise _client_error(exc) from None
        except ValueError as exc:  # python-fido2's refusal of an enforced credProtect
            raise DeviceUnsupported(f"the key cannot make this credential: {exc}") from None
        return _made(result, self._transports)


def _made(result, transports: list[str]) -> MadeCredential:
    response = result.response
    attestation_object = bytes(response.attestation_object)
    client_data = bytes(response.client_data)
    registration = json.loads(json.dumps(dict(result)))  # python-fido2's RegistrationResponseJSON
    registration["authenticatorAttachment"] = "cross-platform"
    registration["response"]["transports"] = list(transports)
    return MadeCredential(registration, attestation_object, hashlib.sha256(client_data).digest())

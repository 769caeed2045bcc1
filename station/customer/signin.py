"""Sign-in as the end user does it: the key, the mailed PIN, and python-fido2's `Fido2Client`.

A pre-registered key arrives with `forcePINChange` set (CTAP 2.1 authenticatorConfig
setMinPINLength): the first authenticatorGetAssertion is refused because the key will not hand
out a pinUvAuthToken for the mailed PIN (CTAP2_ERR_PIN_POLICY_VIOLATION, or PIN_INVALID on some
keys, while getInfo says `forcePINChange`). The user then chooses a new PIN
(authenticatorClientPIN changePIN), and the sign-in succeeds; the relying party checks the
assertion with `Fido2Server.authenticate_complete` (clientData type, challenge, origin, rpId
hash, UP and UV flags, signature) and the signature counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fido2.client import ClientError, DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2 import ClientPin, Ctap2
from fido2.server import Fido2Server
from fido2.webauthn import (
    AuthenticationResponse,
    AuthenticatorData,
    PublicKeyCredentialRequestOptions,
    PublicKeyCredentialRpEntity,
    UserVerificationRequirement,
)

from station.customer.verify import MailedPin, StoredCredential
from station.errors import StationError

#: The refusals a key gives for a PIN it will not accept until it is changed.
FORCED_CHANGE_REFUSALS = (CtapError.ERR.PIN_POLICY_VIOLATION, CtapError.ERR.PIN_INVALID)


class SignInFailed(StationError):
    """The sign-in did not complete or its assertion does not verify."""

    code = "sign_in_failed"


class KeyRefused(SignInFailed):
    """The key answered the sign-in with a CTAP error."""

    def __init__(self, ctap_code: CtapError.ERR) -> None:
        super().__init__(f"the key refused the sign-in ({ctap_code.name})")
        self.ctap_code = ctap_code


class _PinEntry(UserInteraction):
    """The user typing the PIN when the client asks for it (touches are implicit)."""

    def __init__(self, pin: MailedPin) -> None:
        self._pin = pin

    def request_pin(self, permissions, rp_id):
        return self._pin.reveal()


@dataclass(frozen=True)
class SignInResult:
    """What a sign-in showed. Holds no PIN."""

    rp_id: str
    credential_id: bytes
    user_id: bytes
    pin_change_forced: bool
    first_refusal: str | None
    """The CTAP error name of the refused first getAssertion, or None when it went through."""
    sign_count: int
    user_verified: bool


class RelyingPartyPort(Protocol):
    """The identity provider's side of a sign-in: the request options, then the verdict."""

    rp_id: str

    def begin(self) -> dict:
        """PublicKeyCredentialRequestOptionsJSON (base64url binaries)."""

    def complete(self, response: dict) -> int:
        """Check an AuthenticationResponseJSON; → the new signature count. Raises SignInFailed."""


class LocalRelyingParty:
    """A relying party in this process, over credentials registered here (Fido2Server)."""

    def __init__(self, rp_id: str, credentials: list[StoredCredential]) -> None:
        if not credentials:
            raise SignInFailed(f"no credential is registered for {rp_id}")
        self.rp_id = rp_id
        self.credentials = credentials
        self._server = Fido2Server(PublicKeyCredentialRpEntity(id=rp_id, name=rp_id))
        self._state = None

    def begin(self) -> dict:
        options, self._state = self._server.authenticate_begin(
            [c.credential for c in self.credentials], user_verification=UserVerificationRequirement.REQUIRED)
        return dict(options.public_key)

    def complete(self, response: dict) -> int:
        parsed = AuthenticationResponse.from_dict(response)
        _stored, auth_data = _verify(self._server, self._state, self.credentials, parsed)
        return auth_data.counter


class ProviderSignIn:
    """The sign-in page of a stand-in identity provider (`/_standin/signin/{userId}`), reached
    over HTTP as the user's browser reaches the provider's page."""

    def __init__(self, base_url: str, user_id: str, *, timeout: float = 30.0) -> None:
        import httpx

        from station.tls import client_tls_context

        self._http = httpx.Client(base_url=base_url, timeout=timeout, verify=client_tls_context())
        self._user = user_id
        self.rp_id = ""

    def _post(self, path: str, **kw):
        import httpx

        try:
            return self._http.post(path, **kw)
        except httpx.HTTPError as exc:
            self._http.close()
            raise SignInFailed(f"the identity provider's sign-in page cannot be reached ({exc.__class__.__name__})") from None

    def begin(self) -> dict:
        answer = self._post(f"/_standin/signin/{self._user}/options")
        if answer.status_code != 200:
            self._http.close()
            raise SignInFailed(f"the identity provider offers no sign-in: {_reason(answer)}")
        body = answer.json()
        self.rp_id = body["rpId"]
        return body["publicKey"]

    def complete(self, response: dict) -> int:
        answer = self._post(f"/_standin/signin/{self._user}", json=response)
        self._http.close()
        if answer.status_code != 200 or not answer.json().get("verified"):
            raise SignInFailed(f"the identity provider refused the assertion: {_reason(answer)}")
        return int(answer.json()["signCount"])


def _reason(answer) -> str:
    try:
        return str(answer.json().get("error", answer.status_code))
    except ValueError:
        return f"HTTP {answer.status_code}"


def sign_in(
    device: CtapDevice,
    *,
    rp_id: str,
    origin: str,
    credentials: list[StoredCredential],
    pin: MailedPin,
    new_pin: MailedPin,
) -> SignInResult:
    """Sign in to `rp_id` against credentials kept in this process (`LocalRelyingParty`)."""
    return sign_in_with(device, relying_party=LocalRelyingParty(rp_id, credentials), origin=origin,
                        pin=pin, new_pin=new_pin)


def sign_in_with(
    device: CtapDevice,
    *,
    relying_party: RelyingPartyPort,
    origin: str,
    pin: MailedPin,
    new_pin: MailedPin,
) -> SignInResult:
    """Sign in with the key and its PIN; change the PIN first if the key demands it. The relying
    party gives the options and verifies the assertion (signature, challenge, origin, rpId hash,
    UP, UV, counter). Raises SignInFailed (KeyRefused when the key said no for another reason
    than a forced PIN change)."""
    first_refusal = None
    try:
        outcome = _assert(device, relying_party, origin, pin)
    except KeyRefused as refused:
        if not _pin_change_forced(device, refused.ctap_code):
            raise
        first_refusal = refused.ctap_code
        _change_pin(device, pin, new_pin)
        outcome = _assert(device, relying_party, origin, new_pin)
    response, sign_count = outcome
    return SignInResult(
        rp_id=relying_party.rp_id,
        credential_id=response.raw_id,
        user_id=response.response.user_handle or b"",
        pin_change_forced=first_refusal is not None,
        first_refusal=first_refusal.name if first_refusal is not None else None,
        sign_count=sign_count,
        user_verified=response.response.authenticator_data.is_user_verified(),
    )


def _assert(device: CtapDevice, relying_party: RelyingPartyPort, origin: str,
            pin: MailedPin) -> tuple[AuthenticationResponse, int]:
    """One authenticatorGetAssertion through Fido2Client, verified by the relying party."""
    options = PublicKeyCredentialRequestOptions.from_dict(relying_party.begin())
    client = Fido2Client(device, DefaultClientDataCollector(origin), _PinEntry(pin))
    try:
        selection = client.get_assertion(options)
    except ClientError as exc:
        if isinstance(exc.cause, CtapError):
            raise KeyRefused(exc.cause.code) from None
        raise SignInFailed(f"the client could not sign in ({exc.code.name})") from None
    response = selection.get_response(0)
    return response, relying_party.complete(dict(response))


def _verify(
    server: Fido2Server, state: dict, credentials: list[StoredCredential], response: AuthenticationResponse
) -> tuple[StoredCredential, AuthenticatorData]:
    """Fido2Server.authenticate_complete (signature, challenge, origin, rpId hash, UP, UV), then
    the user handle and the signature counter (WebAuthn §7.2 step 21)."""
    try:
        matched = server.authenticate_complete(state, [c.credential for c in credentials], response)
    except ValueError as exc:
        raise SignInFailed(f"the assertion does not verify: {exc}") from None
    stored = next(c for c in credentials if c.credential_id == matched.credential_id)
    user_handle = response.response.user_handle
    if user_handle is not None and user_handle != stored.user_id:
        raise SignInFailed("the assertion names another user")
    auth_data = response.response.authenticator_data
    if (auth_data.counter or stored.sign_count) and auth_data.counter <= stored.sign_count:
        raise SignInFailed(
            f"the signature counter did not increase ({auth_data.counter} after {stored.sign_count}): a cloned key?"
        )
    stored.sign_count = auth_data.counter
    return stored, auth_data


def _pin_change_forced(device: CtapDevice, refusal: CtapError.ERR) -> bool:
    """The refusal is the forced PIN change: PIN_POLICY_VIOLATION, or PIN_INVALID while getInfo
    says forcePINChange (a plain wrong PIN is PIN_INVALID without it)."""
    if refusal not in FORCED_CHANGE_REFUSALS:
        return False
    return refusal == CtapError.ERR.PIN_POLICY_VIOLATION or bool(Ctap2(device).get_info().force_pin_change)


def _change_pin(device: CtapDevice, old: MailedPin, new: MailedPin) -> None:
    """authenticatorClientPIN changePIN, from the mailed PIN to the user's own."""
    try:
        ClientPin(Ctap2(device)).change_pin(old.reveal(), new.reveal())
    except CtapError as exc:
        raise SignInFailed(f"the key refused the PIN change ({exc.code.name})") from None
    except ValueError:  # python-fido2 refuses a PIN under 4 or over 255 bytes; not echoed
        raise SignInFailed("the new PIN is not a PIN the key can take (4 to 63 digits)") from None

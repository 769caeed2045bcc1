"""The customer's checks of what the factory returns: open the responses, verify the attestation
with python-fido2's `Fido2Server`, and register the credential (what an IdP does on activate).

A customer trusts the vendors' published FIDO roots; a test deployment may add the virtual
authenticator's TEST CA. With vendor roots only, a virtual key is reported as not genuine.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fido2.attestation import AttestationVerifier, UntrustedAttestation
from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestedCredentialData,
    PublicKeyCredentialRpEntity,
    RegistrationResponse,
)

from station.customer.orders import SealedItem
from station.vendors import HID_GLOBAL, YUBICO, vendor_intermediates, vendor_roots
from station.errors import StationError
from station.masked import Pin
from station.protocol.jose import NotCompactJws, ResponseRejected, open_response
from station.protocol.messages import CredentialResponse, PinResponse


__all__ = ["NotCompactJws", "NotGenuine", "RegistrationRejected", "ResponseRejected", "open_item_responses"]
# NotCompactJws (a ResponseRejected): a response whose inner JWS is anything but one compact
# serialization (a JSON serialization, several signatures) is refused by name, never parsed.


class NotGenuine(StationError):
    """The attestation does not chain to a root the customer trusts."""

    code = "not_genuine"


class RegistrationRejected(StationError):
    """The registration does not verify (challenge, origin, rpId hash, flags, signature)."""

    code = "registration_rejected"


class RootsVerifier(AttestationVerifier):
    """Trusts exactly the given roots; fills in published intermediates a key leaves out."""

    def __init__(self, roots: list[x509.Certificate], intermediates: list[x509.Certificate] = ()) -> None:
        super().__init__()
        self._roots = list(roots)
        self._intermediates = list(intermediates)

    def ca_lookup(self, attestation_result, auth_data):
        last = x509.load_der_x509_certificate(attestation_result.trust_path[-1])
        for root in self._roots:
            if last.issuer == root.subject:
                return root.public_bytes(Encoding.DER)
        for inter in self._intermediates:
            if last.issuer == inter.subject:
                for root in self._roots:
                    if inter.issuer == root.subject:
                        attestation_result.trust_path.append(inter.public_bytes(Encoding.DER))
                        return root.public_bytes(Encoding.DER)
        return None


def test_ca_root() -> x509.Certificate:
    return x509.load_pem_x509_certificate((resources.files("station") / "data" / "testca" / "ca.pem").read_bytes())


def customer_verifier(*, trust_test_ca: bool) -> RootsVerifier:
    roots = [*vendor_roots(YUBICO), *vendor_roots(HID_GLOBAL)]
    if trust_test_ca:
        roots.append(test_ca_root())
    return RootsVerifier(roots, [*vendor_intermediates(YUBICO), *vendor_intermediates(HID_GLOBAL)])


@dataclass(frozen=True)
class Registered:
    credential: AttestedCredentialData
    user_verified: bool
    sign_count: int


def register_credential(
    registration: dict,
    *,
    rp_id: str,
    rp_name: str,
    challenge: str,
    verifier: AttestationVerifier,
    origin_ok=None,
) -> Registered:
    """Fido2Server.register_complete on a RegistrationResponseJSON: clientData type, challenge,
    origin (on rp_id), rpId hash, UP and UV flags, attestation against the verifier's roots."""
    server = Fido2Server(
        PublicKeyCredentialRpEntity(id=rp_id, name=rp_name),
        attestation="direct",
        verify_origin=origin_ok,
        verify_attestation=verifier,
    )
    state = {"challenge": challenge, "user_verification": "required"}
    try:
        auth_data = server.register_complete(state, RegistrationResponse.from_dict(registration))
    except UntrustedAttestation as exc:
        raise NotGenuine(f"the attestation chains to no trusted root ({exc})") from None
    except ValueError as exc:
        raise RegistrationRejected(f"the registration does not verify: {exc}") from None
    return Registered(auth_data.credential_data, bool(auth_data.is_user_verified()), auth_data.counter)


# -- opening one item's responses (PROTOCOL.md §3) ---------------------------------------------


#: The PIN of a pre-registered key, held for mailing to the user apart from the key.
MailedPin = Pin


@dataclass(frozen=True)
class OpenedResponses:
    """One key's responses, decrypted, signature-checked and matched to the requests sent:
    the PIN to mail, every `credential` (RegistrationResponseJSON), and the key they name."""

    pin: MailedPin
    force_pin_change: bool
    credentials: list[dict]
    serial_number: str | None
    firmware_version: str | None
    aaguid: str


def open_item_responses(
    *,
    sealed: SealedItem,
    pin_response_jwe: str,
    credential_response_jwes: list[str],
    signing_jwks: dict,
) -> OpenedResponses:
    """Open a `fido_pin_response` and its `fido_credential_responses` (one per request, in
    order) with the item's response key; each must answer its own request (`requestId` and
    `requestDigest`) and every response must name the same key (serial, firmware, AAGUID)."""
    if len(credential_response_jwes) != len(sealed.credential_request_jwes):
        raise ResponseRejected(
            f"{len(credential_response_jwes)} credential responses for "
            f"{len(sealed.credential_request_jwes)} requests"
        )
    opened_pin = _open_one(pin_response_jwe, sealed.pin_request_jwe, sealed.pin_request_id, sealed, signing_jwks)
    if not isinstance(opened_pin, PinResponse):
        raise ResponseRejected("fido_pin_response does not hold a PIN response")
    creds = []
    for jwe, request_jwe, request_id in zip(
        credential_response_jwes, sealed.credential_request_jwes, sealed.credential_request_ids
    ):
        opened = _open_one(jwe, request_jwe, request_id, sealed, signing_jwks)
        if not isinstance(opened, CredentialResponse):
            raise ResponseRejected("fido_credential_responses holds a PIN response")
        creds.append(opened)
    _same_key(opened_pin, creds)
    return OpenedResponses(
        pin=MailedPin(opened_pin.pin),
        force_pin_change=opened_pin.force_pin_change,
        credentials=[c.credential.model_dump(mode="json", by_alias=True, exclude_none=True) for c in creds],
        serial_number=opened_pin.serial_number,
        firmware_version=opened_pin.firmware_version,
        aaguid=opened_pin.aaguid,
    )


def _open_one(
    jwe: str, request_jwe: str, request_id: str, sealed: SealedItem, signing_jwks: dict
) -> PinResponse | CredentialResponse:
    payload = open_response(
        jwe, response_private_key=sealed.response_key, signing_jwks=signing_jwks, request_jwe=request_jwe
    )
    if payload.request_id != request_id:
        raise ResponseRejected("the response answers another requestId")
    return payload


def _same_key(pin: PinResponse, creds: list[CredentialResponse]) -> None:
    """Every response of one item comes from one device."""
    def ident(p):
        return (p.serial_number, p.firmware_version, p.aaguid)

    if any(ident(c) != ident(pin) for c in creds):
        raise ResponseRejected("the responses of one item name different keys")


@dataclass
class StoredCredential:
    """A credential as a relying party keeps it after registration: what sign-in checks."""

    credential: AttestedCredentialData
    user_id: bytes
    user_name: str
    sign_count: int
    aaguid: str
    serial_number: str | None = None
    firmware_version: str | None = None

    @property
    def credential_id(self) -> bytes:
        return self.credential.credential_id

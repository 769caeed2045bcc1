"""An Okta-like tenant: WebAuthn pre-registration through a fulfillment provider.

The shapes follow Okta's WebAuthn Preregistration API (`/webauthn-registration/api/v1/enroll`
answers `{fulfillmentProvider, pinRequestJwe, credRequests: [{authenticatorEnrollmentId,
credRequestJwe, keyId}]}`; `/activate` takes `{pinResponseJwe, credResponses:
[{authenticatorEnrollmentId, credResponseJwe}], serial, version}`); the inner payloads are
PROTOCOL.md's. The relying party is the tenant domain (e.g. `acme.okta.com`), and each
enrollment has its own response key pair, whose kid is Okta's `keyId`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from fido2.utils import websafe_encode

from station.customer.orders import SealedItem, new_response_key, seal_item
from station.customer.verify import (
    MailedPin,
    StoredCredential,
    customer_verifier,
    open_item_responses,
    register_credential,
)
from station.errors import StationError
from station.protocol.jose import ResponseRejected

FULFILLMENT_PROVIDER = "yubico"
PIN_LENGTH = 6
CHALLENGE_BYTES = 32


class UnknownEnrollment(StationError):
    """An activation names an enrollment this tenant did not make, or one already activated."""

    code = "unknown_enrollment"


@dataclass(frozen=True)
class OktaUser:
    """An Okta user: its id (`00u…`), login and display name."""

    id: str
    login: str
    display_name: str


@dataclass
class Enrollment:
    """A pending pre-registered WebAuthn factor: what enroll answers, and what the tenant keeps
    to activate it (the response key pair inside `sealed`, the creation options)."""

    user: OktaUser
    authenticator_enrollment_id: str
    sealed: SealedItem = field(repr=False)

    @property
    def key_id(self) -> str:
        """Okta's `keyId`: the kid of this enrollment's response key."""
        return self.sealed.response_key["kid"]

    @property
    def challenge(self) -> str:
        return self.sealed.options[0]["challenge"]

    @property
    def body(self) -> dict:
        """The enroll answer: `{fulfillmentProvider, pinRequestJwe, credRequests}`."""
        return {
            "fulfillmentProvider": FULFILLMENT_PROVIDER,
            "pinRequestJwe": self.sealed.pin_request_jwe,
            "credRequests": [
                {
                    "authenticatorEnrollmentId": self.authenticator_enrollment_id,
                    "credRequestJwe": jwe,
                    "keyId": self.key_id,
                }
                for jwe in self.sealed.credential_request_jwes
            ],
        }


@dataclass(frozen=True)
class Activation:
    """An activated factor: the PIN to mail (masked), the registered credential, and the key's
    serial and firmware as the signed responses state them."""

    user: OktaUser
    authenticator_enrollment_id: str
    pin: MailedPin
    credential: StoredCredential

    @property
    def serial_number(self) -> str | None:
        return self.credential.serial_number

    @property
    def firmware_version(self) -> str | None:
        return self.credential.firmware_version

    @property
    def body(self) -> dict:
        """The activate answer: `{fulfillmentProvider, userId, authenticatorEnrollmentIds}`."""
        return {
            "fulfillmentProvider": FULFILLMENT_PROVIDER,
            "userId": self.user.id,
            "authenticatorEnrollmentIds": [self.authenticator_enrollment_id],
        }


class OktaTenant:
    """An Okta-like tenant at `domain`: enrolls and activates pre-registered keys, and keeps the
    registered credentials in memory (`credentials(user)` is what sign-in checks against)."""

    def __init__(self, domain: str, transport_jwks: dict, signing_jwks: dict, trust_test_ca: bool) -> None:
        self.domain = domain
        self.transport_jwks = transport_jwks
        self.signing_jwks = signing_jwks
        self._verifier = customer_verifier(trust_test_ca=trust_test_ca)
        self._pending: dict[str, Enrollment] = {}
        self._registered: dict[str, list[StoredCredential]] = {}

    @property
    def origin(self) -> str:
        return f"https://{self.domain}"

    def creation_options(self, user: OktaUser) -> dict:
        """PublicKeyCredentialCreationOptionsJSON for rp = the tenant domain: a fresh challenge,
        ES256 then RS256, a discoverable credential, UV required, direct attestation."""
        return {
            "rp": {"id": self.domain, "name": self.domain},
            "user": {"id": websafe_encode(user.id.encode()), "name": user.login, "displayName": user.display_name},
            "challenge": websafe_encode(os.urandom(CHALLENGE_BYTES)),
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -257}],
            "authenticatorSelection": {
                "residentKey": "required",
                "requireResidentKey": True,
                "userVerification": "required",
            },
            "attestation": "direct",
        }

    def enroll(self, user: OktaUser) -> Enrollment:
        """`POST /webauthn-registration/api/v1/enroll`: a PIN request and one credential request,
        sealed to the factory's transport key, with a new response key pair (kid = keyId)."""
        enrollment_id = "pae" + secrets.token_hex(8)
        sealed = seal_item(
            transport_jwks=self.transport_jwks,
            options=[self.creation_options(user)],
            length=PIN_LENGTH,
            min_pin_length=PIN_LENGTH,
            force_pin_change=True,
            response_key=new_response_key(f"okta-{secrets.token_hex(10)}"),
        )
        enrollment = Enrollment(user, enrollment_id, sealed)
        self._pending[enrollment_id] = enrollment
        return enrollment

    def activate(self, enrollment: Enrollment, pin_response_jwe: str, cred_responses: list[dict]) -> Activation:
        """`POST /webauthn-registration/api/v1/activate`: open `pinResponseJwe` and every
        `credResponses[].credResponseJwe`, verify them (signature, requestDigest, challenge,
        origin, rpId hash, UV, attestation), register the credential, record serial and firmware.

        Raises UnknownEnrollment, ResponseRejected, RegistrationRejected or NotGenuine.
        """
        if self._pending.get(enrollment.authenticator_enrollment_id) is not enrollment:
            raise UnknownEnrollment("this enrollment is unknown to the tenant or already activated")
        opened = open_item_responses(
            sealed=enrollment.sealed,
            pin_response_jwe=pin_response_jwe,
            credential_response_jwes=self._cred_response_jwes(enrollment, cred_responses),
            signing_jwks=self.signing_jwks,
        )
        registered = register_credential(
            opened.credentials[0],
            rp_id=self.domain,
            rp_name=self.domain,
            challenge=enrollment.challenge,
            verifier=self._verifier,
        )
        stored = StoredCredential(
            credential=registered.credential,
            user_id=enrollment.user.id.encode(),
            user_name=enrollment.user.login,
            sign_count=registered.sign_count,
            aaguid=opened.aaguid,
            serial_number=opened.serial_number,
            firmware_version=opened.firmware_version,
        )
        del self._pending[enrollment.authenticator_enrollment_id]
        self._registered.setdefault(enrollment.user.id, []).append(stored)
        return Activation(
            enrollment.user,
            enrollment.authenticator_enrollment_id,
            opened.pin,
            stored,
        )

    @staticmethod
    def _cred_response_jwes(enrollment: Enrollment, cred_responses: list[dict]) -> list[str]:
        """`credResponses[{authenticatorEnrollmentId, credResponseJwe}]` of this enrollment."""
        jwes = []
        for entry in cred_responses:
            if entry.get("authenticatorEnrollmentId") != enrollment.authenticator_enrollment_id:
                raise ResponseRejected("a credential response names another authenticatorEnrollmentId")
            jwe = entry.get("credResponseJwe")
            if not isinstance(jwe, str):
                raise ResponseRejected("a credential response has no credResponseJwe")
            jwes.append(jwe)
        return jwes

    def credentials(self, user: OktaUser) -> list[StoredCredential]:
        """The user's registered credentials (sign-in verifies against these)."""
        return list(self._registered.get(user.id, []))

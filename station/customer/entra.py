"""An Entra-like side: Microsoft Graph's FIDO2 provisioning shapes, and the connector that orders
pre-registered keys for it from the fulfillment service.

- `EntraTenant.creation_options(user)` is what `GET /users/{id}/authentication/fido2Methods/
  creationOptions(challengeTimeoutInMinutes=N)` answers: a `webauthnCredentialCreationOptions`
  `{challengeTimeoutDateTime, publicKey}` for rp `login.microsoft.com`, whose `challenge` is an
  opaque server-encrypted token (b64u of a compact JWE, `dir` + A256GCM, holding the user and the
  expiry), with the `hmacCreateSecret` and credProtect extensions and `excludeCredentials`.
- `EntraTenant.register_fido2_method(user_id, body)` is `POST /users/{id}/authentication/
  fido2Methods` with `{"displayName", "publicKeyCredential": RegistrationResponseJSON}`: the
  challenge token is opened and checked (this tenant's, this user's, not expired) before
  `Fido2Server` verifies the registration.
- `EntraConnector` wraps the options per PROTOCOL.md (`seal_item`), posts the shipment, polls it
  (`EntraShipment.wait_fulfilled`), opens the responses and registers each credential.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import AttestationObject, CollectedClientData
from jwcrypto.common import JWException
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from pydantic import ValidationError

from station.customer.orders import (
    FulfillmentPort,
    SealedItem,
    post_shipment,
    seal_item,
    shipment_body,
    wait_shipment,
)
from station.customer.verify import (
    MailedPin,
    RegistrationRejected,
    StoredCredential,
    customer_verifier,
    open_item_responses,
    register_credential,
)
from station.errors import StationError
from station.protocol.messages import RegistrationResponseJSON, describe_validation_error

RP_ID = "login.microsoft.com"
RP_NAME = "Microsoft"
ORIGIN = f"https://{RP_ID}"
CHALLENGE_ALG = "dir"
CHALLENGE_ENC = "A256GCM"
PIN_LENGTH = 6


class ChallengeRejected(RegistrationRejected):
    """The registration's challenge is not a live token this tenant issued for this user."""

    code = "challenge_rejected"


@dataclass(frozen=True)
class EntraUser:
    """An Entra user: object id, userPrincipalName, display name."""

    id: str
    upn: str
    display_name: str

    @property
    def handle(self) -> str:
        """The WebAuthn user handle (b64u), stable per user."""
        return websafe_encode(hashlib.sha256(self.id.encode()).digest())


class EntraTenant:
    """An Entra-like tenant: issues creation options, registers FIDO2 methods, keeps them."""

    def __init__(
        self,
        *,
        trust_test_ca: bool,
        credential_protection_policy: str = "userVerificationOptional",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._challenge_key = JWK.generate(kty="oct", size=256)
        self._verifier = customer_verifier(trust_test_ca=trust_test_ca)
        self._policy = credential_protection_policy
        self._clock = clock
        self._methods: dict[str, list[StoredCredential]] = {}

    # -- creationOptions ------------------------------------------------------------------------

    def creation_options(self, user: EntraUser, *, challenge_timeout_minutes: int = 60 * 24 * 7) -> dict:
        """Graph's `webauthnCredentialCreationOptions`: `challengeTimeoutDateTime` and `publicKey`."""
        if not 5 <= challenge_timeout_minutes <= 43200:
            raise ValueError("challengeTimeoutInMinutes is 5 to 43200")
        expires = int(self._clock()) + challenge_timeout_minutes * 60
        return {
            "challengeTimeoutDateTime": _rfc3339(expires),
            "publicKey": {
                "challenge": self._seal_challenge(user, expires),
                "timeout": challenge_timeout_minutes * 60 * 1000,
                "attestation": "direct",
                "rp": {"id": RP_ID, "name": RP_NAME},
                "user": {"id": user.handle, "name": user.upn, "displayName": user.display_name},
                "pubKeyCredParams": [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -257}],
                "excludeCredentials": [
                    {"id": websafe_encode(c.credential_id), "type": "public-key", "transports": ["usb", "nfc"]}
                    for c in self._methods.get(user.id, [])
                ],
                "authenticatorSelection": {
                    "authenticatorAttachment": "cross-platform",
                    "requireResidentKey": True,
                    "userVerification": "required",
                },
                "extensions": {
                    "hmacCreateSecret": True,
                    "enforceCredentialProtectionPolicy": True,
                    "credentialProtectionPolicy": self._policy,
                },
            },
        }

    def _seal_challenge(self, user: EntraUser, expires: int) -> str:
        """The opaque challenge: b64u of a compact JWE (dir, A256GCM) of {sub, exp, nonce}."""
        claims = {"sub": user.id, "exp": expires, "nonce": secrets.token_urlsafe(16)}
        token = JWE(
            json.dumps(claims).encode(),
            protected={"alg": CHALLENGE_ALG, "enc": CHALLENGE_ENC},
            algs=[CHALLENGE_ALG, CHALLENGE_ENC],
        )
        token.add_recipient(self._challenge_key)
        return websafe_encode(token.serialize(compact=True).encode("ascii"))

    def check_challenge(self, challenge: bytes, user_id: str) -> None:
        """The challenge bytes signed by the key must be a token of this tenant, for `user_id`,
        not expired. Raises ChallengeRejected."""
        token = JWE(algs=[CHALLENGE_ALG, CHALLENGE_ENC])
        try:
            token.deserialize(challenge.decode("ascii"), key=self._challenge_key)
            claims = json.loads(token.payload)
            subject, expires = claims["sub"], claims["exp"]
        except (JWException, ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise ChallengeRejected("the challenge is not a token this tenant issued") from None
        if subject != user_id:
            raise ChallengeRejected("the challenge was issued for another user")
        if not isinstance(expires, int) or self._clock() > expires:
            raise ChallengeRejected("the challenge has expired")

    # -- POST /users/{id}/authentication/fido2Methods --------------------------------------------

    def register_fido2_method(self, user: EntraUser, body: dict) -> dict:
        """Register `{"displayName", "publicKeyCredential"}` for `user`; returns the
        `fido2AuthenticationMethod`. Raises ChallengeRejected, RegistrationRejected or NotGenuine."""
        registration = _registration_json(body)
        client_data = CollectedClientData(websafe_decode(registration["response"]["clientDataJSON"]))
        self.check_challenge(client_data.challenge, user.id)
        credential_id = websafe_decode(registration["rawId"])
        if any(c.credential_id == credential_id for c in self._methods.get(user.id, [])):
            raise RegistrationRejected("this credential is already registered (excludeCredentials)")
        registered = register_credential(
            registration,
            rp_id=RP_ID,
            rp_name=RP_NAME,
            challenge=websafe_encode(client_data.challenge),
            verifier=self._verifier,
        )
        stored = StoredCredential(
            credential=registered.credential,
            user_id=websafe_decode(user.handle),
            user_name=user.upn,
            sign_count=registered.sign_count,
            aaguid=str(registered.credential.aaguid),
        )
        self._methods.setdefault(user.id, []).append(stored)
        return _fido2_method(body["displayName"], registration, stored, self._clock())

    def credentials(self, user: EntraUser) -> list[StoredCredential]:
        """The user's registered FIDO2 methods (sign-in verifies against these)."""
        return list(self._methods.get(user.id, []))


def _registration_json(body: dict) -> dict:
    """The `publicKeyCredential` of a fido2Methods body, validated as RegistrationResponseJSON."""
    if not isinstance(body, dict) or not isinstance(body.get("displayName"), str):
        raise RegistrationRejected("the body needs a displayName")
    try:
        model = RegistrationResponseJSON.model_validate(body.get("publicKeyCredential"))
    except ValidationError as exc:
        raise RegistrationRejected(f"publicKeyCredential: {describe_validation_error(exc)}") from None
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _fido2_method(display_name: str, registration: dict, stored: StoredCredential, now: float) -> dict:
    """Graph's `fido2AuthenticationMethod` resource for a registered key."""
    attestation = AttestationObject(websafe_decode(registration["response"]["attestationObject"]))
    thumbprints = [
        x509.load_der_x509_certificate(der).fingerprint(hashes.SHA1()).hex()
        for der in attestation.att_stmt.get("x5c", [])
    ]
    return {
        "id": registration["id"],
        "displayName": display_name,
        "createdDateTime": _rfc3339(int(now)),
        "aaGuid": stored.aaguid,
        "attestationCertificates": thumbprints,
        "attestationLevel": "attested",
    }


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


# -- the connector -----------------------------------------------------------------------------


@dataclass
class EntraResult:
    """One user's key: registered (with the PIN to mail), or why not."""

    user: EntraUser
    pin: MailedPin | None = None
    method: dict | None = None
    serial_number: str | None = None
    firmware_version: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.method is not None


@dataclass
class EntraShipment:
    """A posted shipment: one item per user, each sealed to its own response key."""

    connector: EntraConnector
    shipment_id: str
    lines: list[tuple[EntraUser, SealedItem]] = field(repr=False)
    shipment: dict | None = field(default=None, repr=False)

    def wait_fulfilled(self, timeout: float, *, on_poll: Callable[[dict], None] | None = None) -> dict:
        """Poll until the shipment is programmed (102, or shipped 103, delivered 104) or has failed items (8). ShipmentTimeout."""
        self.shipment = wait_shipment(
            self.connector.fulfillment,
            self.shipment_id,
            timeout=timeout,
            poll_interval=self.connector.poll_interval,
            on_poll=on_poll,
        )
        return self.shipment

    def register(self) -> list[EntraResult]:
        """Open each item's responses and register its credential; an item that failed at the
        factory or whose responses do not verify gives an EntraResult with its error code."""
        if self.shipment is None:
            raise StationError("wait_fulfilled first: the shipment is not finished", code="usage")
        signing_jwks = self.connector.fulfillment.jwks("signing")
        items = self.shipment["shipment_items"]
        return [self._register_item(user, sealed, item, signing_jwks) for (user, sealed), item in zip(self.lines, items)]

    def _register_item(self, user: EntraUser, sealed: SealedItem, item: dict, signing_jwks: dict) -> EntraResult:
        product = item["product_data"][0]
        if "error_code" in product:
            return EntraResult(user, error_code=product["error_code"], error_message=product["error_message"])
        try:  # each item stands alone: one bad item does not hide the others' outcome
            opened = open_item_responses(
                sealed=sealed,
                pin_response_jwe=product["fido_pin_response"],
                credential_response_jwes=product["fido_credential_responses"],
                signing_jwks=signing_jwks,
            )
            body = {"displayName": f"Security key of {user.display_name}", "publicKeyCredential": opened.credentials[0]}
            method = self.connector.tenant.register_fido2_method(user, body)
        except StationError as exc:
            return EntraResult(user, error_code=exc.code, error_message=exc.message)
        return EntraResult(user, opened.pin, method, opened.serial_number, opened.firmware_version)


@dataclass
class EntraConnector:
    """Orders pre-registered keys for an Entra tenant from a fulfillment service."""

    tenant: EntraTenant
    fulfillment: FulfillmentPort
    poll_interval: float = 0.2

    def ship(self, users: list[EntraUser], *, challenge_timeout_minutes: int = 60 * 24 * 7) -> EntraShipment:
        """One shipment item per user: the Graph options' `publicKey` sealed per PROTOCOL.md
        (origin login.microsoft.com, `notAfter` the challenge timeout), posted to the service."""
        if not users:
            raise ValueError("a shipment needs at least one user")
        transport_jwks = self.fulfillment.jwks("transport")
        lines = []
        for user in users:
            options = self.tenant.creation_options(user, challenge_timeout_minutes=challenge_timeout_minutes)
            sealed = seal_item(
                transport_jwks=transport_jwks,
                options=[options["publicKey"]],
                length=PIN_LENGTH,
                min_pin_length=PIN_LENGTH,
                force_pin_change=True,
                origin=ORIGIN,
                not_after=datetime.fromisoformat(options["challengeTimeoutDateTime"].replace("Z", "+00:00")),
            )
            lines.append((user, sealed))
        body = shipment_body([sealed for _, sealed in lines], email=users[0].upn)
        return EntraShipment(self, post_shipment(self.fulfillment, body), lines)


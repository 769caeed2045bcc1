"""An HTTP client of Okta's WebAuthn preregistration API (`/webauthn-registration/api/v1/`).

The seven endpoints of Okta's `WebAuthnPreregistrationApi` (Okta management API reference and
SDK docs), one method each, plain JSON in and out:

| method | endpoint |
|---|---|
| `initiate_fulfillment_request` | POST initiate-fulfillment-request → 204 |
| `enroll` | POST enroll → `{credRequests, fulfillmentProvider, pinRequestJwe, userId}` |
| `activate` | POST activate → `{authenticatorEnrollmentIds, fulfillmentProvider, userId}` |
| `send_pin` | POST send-pin → 204 (Okta mails the PIN to the user) |
| `list_enrollments` | GET users/{userId}/enrollments → `[WebAuthnPreregistrationFactor]` |
| `delete_enrollment` | DELETE users/{userId}/enrollments/{authenticatorEnrollmentId} → 204 |
| `mark_error` | POST users/{userId}/enrollments/{authenticatorEnrollmentId}/mark-error → 204 |

Authentication is an Okta API token (`Authorization: SSWS <token>`). Okta's error object
`{errorCode, errorSummary, errorLink, errorId, errorCauses}` becomes `OktaError` (and
`OktaThrottled` for 429 E0000047, after waiting out X-Rate-Limit-Reset a bounded number of times).
"""

from __future__ import annotations

import httpx

from pydantic import BaseModel, Field

from station.customer.http import (
    Correlation,
    ProviderClient,
    ProviderError,
    ProviderHttp,
    Throttled,
    checked,
    json_or_none,
)
from station.customer.settings import OktaSettings

API = "/webauthn-registration/api/v1"
FULFILLMENT_PROVIDER = "yubico"


class _CredRequest(BaseModel):
    authenticatorEnrollmentId: str
    credRequestJwe: str
    keyId: str


class EnrollmentInitializationResponse(BaseModel):
    """What the flows read of Okta's enroll answer."""

    credRequests: list[_CredRequest] = Field(min_length=1)
    pinRequestJwe: str
    userId: str


class EnrollmentActivationResponse(BaseModel):
    authenticatorEnrollmentIds: list[str]
    userId: str


class OktaError(ProviderError):
    """Okta refused a call: `provider_code` is its errorCode (E0000001 ...), `details` the
    errorCauses' summaries, `error_id` Okta's errorId (quote it to Okta support)."""

    code = "okta_error"

    def __init__(self, message: str, *, error_id: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.error_id = error_id


class OktaThrottled(Throttled):
    code = "okta_throttled"


class OktaUnauthorized(OktaError):
    """401 E0000011: the API token is wrong, revoked or expired."""

    code = "okta_unauthorized"


class OktaNotFound(OktaError):
    """404 E0000007: no such user or factor."""

    code = "okta_not_found"


def _okta_error(response: httpx.Response, what: str) -> OktaError:
    body = json_or_none(response)
    if not isinstance(body, dict) or "errorCode" not in body:
        return OktaError(f"Okta answered {what} with HTTP {response.status_code} and no Okta error object",
                         status=response.status_code)
    causes = [c.get("errorSummary", "") for c in body.get("errorCauses") or [] if isinstance(c, dict)]
    message = f"Okta refused {what}: {body.get('errorCode')} {body.get('errorSummary', '')}".rstrip()
    if causes:
        message += " (" + "; ".join(causes) + ")"
    cls = {401: OktaUnauthorized, 404: OktaNotFound}.get(response.status_code, OktaError)
    return cls(message, status=response.status_code, provider_code=body.get("errorCode"), details=causes,
               error_id=body.get("errorId"))


class OktaClient(ProviderClient):
    """Okta's preregistration API for one org (`settings.url`), with its API token."""

    def __init__(self, settings: OktaSettings, *, transport: httpx.BaseTransport | None = None, sleep=None) -> None:
        self.settings = settings
        token = settings.secret()
        extra = {"sleep": sleep} if sleep is not None else {}
        self._http = ProviderHttp(
            settings.url, name="Okta", timeout=settings.timeout, max_retries=settings.max_retries,
            max_retry_wait=settings.max_retry_wait, transport=transport,
            auth_header=lambda: {"Authorization": f"SSWS {token}", "Accept": "application/json"},
            throttled=lambda r, wait: OktaThrottled(
                f"Okta is rate-limiting this org (429 E0000047); retry after {wait:.0f} s", status=429,
                provider_code="E0000047", retry_after=wait),
            correlation=Correlation(("x-okta-request-id",)), **extra,  # Okta's request id header
        )

    def __repr__(self) -> str:
        return f"OktaClient({self.settings.url!r})"

    _refusal = staticmethod(lambda response, what: _okta_error(response, what))
    _prefix = API

    # -- the seven endpoints ------------------------------------------------------------------------

    def initiate_fulfillment_request(self, *, user_id: str, fulfillment_data: list[dict]) -> None:
        """Ask Okta to order a key from the fulfillment provider itself (`fulfillmentData`:
        `[{productId, inventoryProductId, customizationId}]`)."""
        self._call("POST", "/initiate-fulfillment-request", "initiate-fulfillment-request",
                   json={"fulfillmentData": fulfillment_data, "fulfillmentProvider": FULFILLMENT_PROVIDER,
                         "userId": user_id}, expect=204)

    def enroll(self, *, user_id: str, transport_key: dict, rp_ids: list[str] | None = None) -> dict:
        """A pending factor: Okta seals the PIN request and one credential request per RP ID to
        `transport_key` (a public P-384 JWK of the factory's transport JWKS)."""
        jwk = {k: transport_key[k] for k in ("kty", "crv", "kid", "use", "x", "y") if k in transport_key}
        return checked(EnrollmentInitializationResponse, self._call("POST", "/enroll", "enroll", json={
            "enrollmentRpIds": rp_ids or self.settings.enrollment_rp_ids,
            "fulfillmentProvider": FULFILLMENT_PROVIDER,
            "userId": user_id,
            "yubicoTransportKeyJWK": jwk,
        }), who="Okta", what="enroll")

    def activate(self, *, user_id: str, enrollment_id: str, pin_response_jwe: str, cred_response_jwes: list[str],
                 serial: str, version: str, signing_jwks: list[dict]) -> dict:
        """Hand Okta the key's sealed responses (and the factory's signing keys to check them)."""
        return checked(EnrollmentActivationResponse, self._call("POST", "/activate", "activate", json={
            "credResponses": [{"authenticatorEnrollmentId": enrollment_id, "credResponseJwe": jwe}
                              for jwe in cred_response_jwes],
            "fulfillmentProvider": FULFILLMENT_PROVIDER,
            "pinResponseJwe": pin_response_jwe,
            "serial": serial,
            "userId": user_id,
            "version": version,
            "yubicoSigningJwks": list(signing_jwks),
        }), who="Okta", what="activate")

    def send_pin(self, *, user_id: str, enrollment_id: str) -> None:
        """Okta mails the key's PIN to the user (again, until the first sign-in)."""
        self._call("POST", "/send-pin", "send-pin", expect=204, json={
            "authenticatorEnrollmentId": enrollment_id, "fulfillmentProvider": FULFILLMENT_PROVIDER, "userId": user_id})

    def list_enrollments(self, user_id: str) -> list[dict]:
        return self._call("GET", f"/users/{user_id}/enrollments", "the enrollments list")

    def delete_enrollment(self, user_id: str, enrollment_id: str) -> None:
        self._call("DELETE", f"/users/{user_id}/enrollments/{enrollment_id}", "delete", expect=204)

    def mark_error(self, user_id: str, enrollment_id: str) -> None:
        """The factor's status becomes FULFILLMENT_ERRORED (the factory could not make the key)."""
        self._call("POST", f"/users/{user_id}/enrollments/{enrollment_id}/mark-error", "mark-error", expect=204)

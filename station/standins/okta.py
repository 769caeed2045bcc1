"""A strict stand-in of Okta's WebAuthn preregistration API (`/webauthn-registration/api/v1/`).

Written from Okta's public documentation: the management API reference ("WebAuthn
Preregistration" tag: developer.okta.com/docs/api/openapi/okta-management/management/tag/
WebAuthnPreregistration) and the SDK model docs generated from the same OpenAPI spec
(okta-sdk-golang `WebAuthnPreregistrationAPI.md`, `EnrollmentInitializationRequest.md`,
`EnrollmentActivationRequest.md`, `PinRequest.md`, `FulfillmentRequest.md`,
`WebAuthnPreregistrationFactor.md`). Seven endpoints:

| method and path | answer |
|---|---|
| POST initiate-fulfillment-request `{fulfillmentData, fulfillmentProvider, userId}` | 204 |
| POST enroll `{enrollmentRpIds[], fulfillmentProvider, userId, yubicoTransportKeyJWK}` | 200 `{credRequests[{authenticatorEnrollmentId, credRequestJwe, keyId}], fulfillmentProvider, pinRequestJwe, userId}` |
| POST activate `{credResponses[{authenticatorEnrollmentId, credResponseJwe}], fulfillmentProvider, pinResponseJwe, serial, userId, version, yubicoSigningJwks[]}` | 200 `{authenticatorEnrollmentIds[], fulfillmentProvider, userId}` |
| POST send-pin `{authenticatorEnrollmentId, fulfillmentProvider, userId}` | 204 (Okta mails the PIN) |
| GET users/{userId}/enrollments | 200 `[WebAuthnPreregistrationFactor]` |
| DELETE users/{userId}/enrollments/{authenticatorEnrollmentId} | 204 |
| POST users/{userId}/enrollments/{authenticatorEnrollmentId}/mark-error | 204 (status FULFILLMENT_ERRORED) |

Errors are Okta's error object `{errorCode, errorSummary, errorLink, errorId, errorCauses[]}`:
E0000001 (400, API validation failed), E0000003 (400, body not well-formed: unknown members too,
as Okta's strict JSON binding refuses them), E0000007 (404), E0000011 (401, invalid token),
E0000022 (405), E0000047 (429, with `X-Rate-Limit-*` headers). Okta's own examples spell
`credResponseJWE` as well as `credResponseJwe`: both are taken.

Okta itself seals the PIN and credential requests (PROTOCOL.md §2) to the transport key given
in `yubicoTransportKeyJWK`, with a response key pair per enrollment (its kid is `keyId`); on
activate it opens the responses (§3), checks signature, requestDigest and registration, and
keeps the PIN to mail it (send-pin, until the first sign-in).
"""

from __future__ import annotations

from fastapi import Request

import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from fido2.utils import websafe_encode
from jwcrypto.common import JWException
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from station.standins._common import (
    Credential,
    RegistrationRefused,
    RelyingParty,
    Throttle,
    load_roots,
    signin_router,
)

API = "/webauthn-registration/api/v1"
PROVIDER = "yubico"
ERROR_LINK = "E0000001"
JWE_ALG, JWE_ENC = "ECDH-ES+A256KW", "A256GCM"


# -- request bodies (the OpenAPI schemas; unknown members refused) -------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ECKeyJWK(_Body):
    kty: Literal["EC"]
    crv: Literal["P-384"]
    kid: str = Field(min_length=1)
    use: Literal["enc"] | None = None
    x: str = Field(min_length=1)
    y: str = Field(min_length=1)
    alg: str | None = None


class SigningJWK(_Body):
    kty: Literal["EC"]
    crv: Literal["P-384", "P-256"]
    kid: str = Field(min_length=1)
    use: Literal["sig"] | None = None
    alg: str | None = None
    x: str
    y: str


class FulfillmentData(_Body):
    customizationId: str | None = None
    inventoryProductId: str | None = None
    productId: str | None = None


class FulfillmentRequest(_Body):
    # the docs show both one object (older SDKs) and an array (newer spec): both are taken
    fulfillmentData: FulfillmentData | list[FulfillmentData]
    fulfillmentProvider: Literal["yubico"]
    userId: str


class EnrollmentInitializationRequest(_Body):
    enrollmentRpIds: list[str] = Field(min_length=1)
    fulfillmentProvider: Literal["yubico"]
    userId: str
    yubicoTransportKeyJWK: ECKeyJWK


class WebAuthnCredResponse(_Body):
    authenticatorEnrollmentId: str
    credResponseJwe: str | None = None
    credResponseJWE: str | None = None

    @model_validator(mode="after")
    def _one_jwe(self):
        if (self.credResponseJwe is None) == (self.credResponseJWE is None):
            raise ValueError("exactly one of credResponseJwe and credResponseJWE is required")
        return self

    @property
    def jwe(self) -> str:
        return self.credResponseJwe or self.credResponseJWE or ""


class EnrollmentActivationRequest(_Body):
    credResponses: list[WebAuthnCredResponse] = Field(min_length=1)
    fulfillmentProvider: Literal["yubico"]
    pinResponseJwe: str
    serial: str
    userId: str
    version: str
    yubicoSigningJwks: list[SigningJWK] = Field(min_length=1)


class PinRequest(_Body):
    authenticatorEnrollmentId: str
    fulfillmentProvider: Literal["yubico"]
    userId: str


# -- state -------------------------------------------------------------------------------------


class _Pin:
    """The PIN Okta keeps to mail: never in a repr."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Pin(******)"


@dataclass
class OktaUser:
    id: str
    login: str
    email: str
    first_name: str = ""
    last_name: str = ""


@dataclass
class _CredRequest:
    rp_id: str
    request_id: str
    jwe: str
    challenge: bytes


@dataclass
class _Enrollment:
    id: str
    user_id: str
    response_key: JWK = field(repr=False)
    pin_request_id: str
    pin_request_jwe: str
    cred_requests: list[_CredRequest]
    status: str = "PENDING_ACTIVATION"
    created: str = ""
    last_updated: str = ""
    pin: _Pin | None = field(default=None, repr=False)
    credentials: list[Credential] = field(default_factory=list)
    serial: str | None = None

    def factor(self, base: str) -> dict:
        """Okta's WebAuthnPreregistrationFactor."""
        profile: dict[str, Any] = {}
        if self.credentials:
            profile = {"credentialId": websafe_encode(self.credentials[0].credential_id),
                       "authenticatorName": "Security Key", "serial": self.serial}
        return {
            "id": self.id, "factorType": "webauthn", "provider": "FIDO", "vendorName": "FIDO",
            "status": self.status, "created": self.created, "lastUpdated": self.last_updated,
            "profile": profile,
            "_links": {"self": {"href": f"{base}{API}/users/{self.user_id}/enrollments/{self.id}"}},
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OktaStandin:
    """One Okta org: its domain (the relying party), API tokens (`SSWS` or `Bearer`), users,
    preregistration enrollments, and the mail it sends. `mailer(user, pin)` receives each
    send-pin; by default the last PIN per user is kept in `outbox` (in memory only)."""

    def __init__(self, *, org_domain: str = "acme.okta.com", api_tokens: tuple[str, ...] = (),
                 attestation_roots: list[bytes] = (), mailer: Callable[[OktaUser, _Pin], None] | None = None,
                 challenge_timeout: float = 30 * 24 * 3600) -> None:
        self.org_domain = org_domain
        self.api_tokens = set(api_tokens)
        self.users: dict[str, OktaUser] = {}
        self.enrollments: dict[str, _Enrollment] = {}
        self.fulfillment_requests: list[dict] = []
        self.outbox: dict[str, _Pin] = {}
        self.mailer = mailer or (lambda user, pin: self.outbox.__setitem__(user.id, pin))
        self.relying_party = RelyingParty(org_domain, org_domain, roots=load_roots(list(attestation_roots)),
                                          origins=lambda o: o == f"https://{org_domain}")
        self.throttle = Throttle()
        self.challenge_timeout = challenge_timeout
        self._lock = threading.Lock()

    def add_user(self, login: str, *, user_id: str | None = None, first_name: str = "", last_name: str = "") -> OktaUser:
        user = OktaUser(user_id or "00u" + secrets.token_hex(9)[:17], login, login, first_name, last_name)
        self.users[user.id] = user
        return user

    def new_api_token(self) -> str:
        token = "00" + secrets.token_urlsafe(30)
        self.api_tokens.add(token)
        return token

    # -- the operations ----------------------------------------------------------------------------

    def enroll(self, body: EnrollmentInitializationRequest) -> dict:
        self._user(body.userId)
        bad = [rp for rp in body.enrollmentRpIds if rp != self.org_domain]
        if bad:
            raise OktaRefusal(400, "E0000001", "Api validation failed: enrollmentRpIds",
                              [f"enrollmentRpIds: {rp} is not a relying party of this org" for rp in bad])
        try:
            transport = JWK(**body.yubicoTransportKeyJWK.model_dump(exclude_none=True))
            transport.get_op_key("wrapKey")  # the point must be on P-384
        except (JWException, ValueError, TypeError):
            raise OktaRefusal(400, "E0000001", "Api validation failed: yubicoTransportKeyJWK",
                              ["yubicoTransportKeyJWK: not a valid P-384 public key"]) from None
        user = self.users[body.userId]
        response_key = JWK.generate(kty="EC", crv="P-384", use="enc", kid=f"okta-{secrets.token_hex(10)}")
        public = response_key.export_public(as_dict=True)
        pin_id = str(uuid.uuid4())
        pin_jwe = _seal(transport, {"version": 1, "requestId": pin_id, "type": "generate", "length": 6,
                                    "minPINLength": 6, "forcePINChange": True, "responseKey": public})
        not_after = datetime.fromtimestamp(time.time() + self.challenge_timeout, timezone.utc)
        cred_requests = []
        for rp_id in body.enrollmentRpIds:
            challenge = secrets.token_bytes(32)
            request_id = str(uuid.uuid4())
            options = {
                "rp": {"id": rp_id, "name": rp_id},
                "user": {"id": websafe_encode(user.id.encode()), "name": user.login,
                         "displayName": f"{user.first_name} {user.last_name}".strip() or user.login},
                "challenge": websafe_encode(challenge),
                "pubKeyCredParams": [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -257}],
                "timeout": int(self.challenge_timeout * 1000),
                "authenticatorSelection": {"residentKey": "required", "requireResidentKey": True,
                                           "userVerification": "required"},
                "attestation": "direct",
            }
            jwe = _seal(transport, {"version": 1, "requestId": request_id, "origin": f"https://{rp_id}",
                                    "notAfter": not_after.isoformat(timespec="seconds").replace("+00:00", "Z"),
                                    "responseKey": public, "publicKey": options})
            cred_requests.append(_CredRequest(rp_id, request_id, jwe, challenge))
        enrollment = _Enrollment("pae" + secrets.token_hex(8), user.id, response_key, pin_id, pin_jwe,
                                 cred_requests, created=_now(), last_updated=_now())
        with self._lock:
            self.enrollments[enrollment.id] = enrollment
        return {
            "credRequests": [{"authenticatorEnrollmentId": enrollment.id, "credRequestJwe": c.jwe,
                              "keyId": response_key["kid"]} for c in cred_requests],
            "fulfillmentProvider": PROVIDER,
            "pinRequestJwe": pin_jwe,
            "userId": user.id,
        }

    def activate(self, body: EnrollmentActivationRequest) -> dict:
        self._user(body.userId)
        ids = {c.authenticatorEnrollmentId for c in body.credResponses}
        if len(ids) != 1:
            raise OktaRefusal(400, "E0000001", "Api validation failed: credResponses",
                              ["credResponses: every response must name the same authenticatorEnrollmentId"])
        enrollment = self._enrollment(body.userId, ids.pop())
        if enrollment.status != "PENDING_ACTIVATION":
            raise OktaRefusal(400, "E0000001", "Api validation failed: authenticatorEnrollmentId",
                              [f"the factor is {enrollment.status}, not PENDING_ACTIVATION"])
        signing = {"keys": [k.model_dump(exclude_none=True) for k in body.yubicoSigningJwks]}
        try:
            pin_payload = _open(body.pinResponseJwe, enrollment.response_key, signing, enrollment.pin_request_jwe)
            if pin_payload.get("requestId") != enrollment.pin_request_id or not isinstance(pin_payload.get("pin"), str):
                raise _Rejected("pinResponseJwe does not answer the PIN request")
            by_request = {c.request_id: c for c in enrollment.cred_requests}
            opened = []
            for entry in body.credResponses:
                jws_payload = _open_any(entry.jwe, enrollment.response_key, signing,
                                        [c.jwe for c in enrollment.cred_requests])
                request = by_request.get(jws_payload.get("requestId"))
                if request is None or not isinstance(jws_payload.get("credential"), dict):
                    raise _Rejected("a credential response answers no credential request of this factor")
                opened.append((request, jws_payload))
            if {r.request_id for r, _ in opened} != set(by_request):
                raise _Rejected("a credential request of this factor has no response")
            for payload in [pin_payload, *(p for _, p in opened)]:
                if payload.get("serialNumber") not in (None, body.serial):
                    raise _Rejected("serial differs from the key's signed serialNumber")
                if payload.get("firmwareVersion") not in (None, body.version):
                    raise _Rejected("version differs from the key's signed firmwareVersion")
            credentials = [self.relying_party.register(body.userId, payload["credential"],
                                                       challenge=request.challenge)
                           for request, payload in opened]
        except (_Rejected, RegistrationRefused) as exc:
            raise OktaRefusal(400, "E0000001", "Api validation failed: activation", [str(exc)]) from None
        with self._lock:
            enrollment.credentials = credentials
            enrollment.pin = _Pin(pin_payload["pin"])
            enrollment.serial = body.serial
            enrollment.status, enrollment.last_updated = "ACTIVE", _now()
        return {"authenticatorEnrollmentIds": [enrollment.id], "fulfillmentProvider": PROVIDER,
                "userId": body.userId}

    def send_pin(self, body: PinRequest) -> None:
        user = self._user(body.userId)
        enrollment = self._enrollment(body.userId, body.authenticatorEnrollmentId)
        if enrollment.status != "ACTIVE" or enrollment.pin is None:
            raise OktaRefusal(400, "E0000001", "Api validation failed: authenticatorEnrollmentId",
                              [f"the factor is {enrollment.status}: only an activated factor has a PIN to send"])
        if any(c.signed_in for c in enrollment.credentials):
            raise OktaRefusal(400, "E0000001", "Api validation failed: authenticatorEnrollmentId",
                              ["the PIN cannot be sent again after the first sign-in"])
        self.mailer(user, enrollment.pin)

    def mark_error(self, user_id: str, enrollment_id: str) -> None:
        enrollment = self._enrollment(user_id, enrollment_id)
        with self._lock:
            enrollment.status, enrollment.last_updated = "FULFILLMENT_ERRORED", _now()

    def delete(self, user_id: str, enrollment_id: str) -> None:
        enrollment = self._enrollment(user_id, enrollment_id)
        with self._lock:
            for credential in enrollment.credentials:
                self.relying_party.forget(user_id, credential.credential_id)
            del self.enrollments[enrollment.id]

    def factors(self, user_id: str, base: str) -> list[dict]:
        self._user(user_id)
        return [e.factor(base) for e in self.enrollments.values() if e.user_id == user_id]

    def _user(self, user_id: str) -> OktaUser:
        user = self.users.get(user_id)
        if user is None:
            raise OktaRefusal(404, "E0000007", f"Not found: Resource not found: {user_id} (User)")
        return user

    def _enrollment(self, user_id: str, enrollment_id: str) -> _Enrollment:
        self._user(user_id)
        enrollment = self.enrollments.get(enrollment_id)
        if enrollment is None or enrollment.user_id != user_id:
            raise OktaRefusal(404, "E0000007",
                              f"Not found: Resource not found: {enrollment_id} (WebAuthnPreregistrationFactor)")
        return enrollment


class OktaRefusal(Exception):
    def __init__(self, status: int, code: str, summary: str, causes: list[str] = ()) -> None:
        super().__init__(summary)
        self.status, self.code, self.summary, self.causes = status, code, summary, list(causes)


class _Rejected(Exception):
    pass


# -- PROTOCOL.md §2 and §3 as Okta does them (jwcrypto) ------------------------------------------


def _seal(transport: JWK, payload: dict) -> str:
    token = JWE(json.dumps(payload).encode(), protected={"alg": JWE_ALG, "enc": JWE_ENC, "kid": transport["kid"]},
                algs=[JWE_ALG, JWE_ENC])
    token.add_recipient(transport)
    return token.serialize(compact=True)


def _open(compact: str, key: JWK, signing_jwks: dict, request_jwe: str) -> dict:
    """Decrypt with the response key, verify the inner ES384 JWS against the signing JWKS by
    kid, and check requestDigest against the request it answers."""
    token = JWE(algs=[JWE_ALG, JWE_ENC])
    try:
        token.deserialize(compact, key=key)
        jws = JWS()
        jws.deserialize(token.payload.decode("ascii"))
        kid = jws.jose_header.get("kid")
        if jws.jose_header.get("alg") != "ES384":
            raise _Rejected("the response is not signed with ES384")
        matches = [k for k in signing_jwks["keys"] if k.get("kid") == kid]
        if not matches:
            raise _Rejected("the response is signed by a key not in yubicoSigningJwks")
        jws.verify(JWK(**matches[0]), alg="ES384")
        payload = json.loads(jws.payload)
    except _Rejected:
        raise
    except (JWException, ValueError, TypeError, UnicodeDecodeError, KeyError):
        raise _Rejected("a response does not decrypt or its signature does not verify") from None
    digest = websafe_encode(hashlib.sha256(request_jwe.encode("ascii")).digest())
    if not isinstance(payload, dict) or payload.get("requestDigest") != digest:
        raise _Rejected("a response's requestDigest does not match the request")
    return payload


def _open_any(compact: str, key: JWK, signing_jwks: dict, request_jwes: list[str]) -> dict:
    last = None
    for request_jwe in request_jwes:
        try:
            return _open(compact, key, signing_jwks, request_jwe)
        except _Rejected as exc:
            last = exc
    raise last or _Rejected("no credential request")


# -- the HTTP surface -----------------------------------------------------------------------------


def create_app(standin: OktaStandin):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="Okta stand-in (WebAuthn preregistration)", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, code: str, summary: str, causes: list[str] = (), headers: dict | None = None):
        body = {"errorCode": code, "errorSummary": summary, "errorLink": code,
                "errorId": "oae" + secrets.token_urlsafe(16)[:22],
                "errorCauses": [{"errorSummary": c} for c in causes]}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(OktaRefusal)
    async def _refused(request, exc: OktaRefusal):
        return error(exc.status, exc.code, exc.summary, exc.causes)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        if exc.status_code == 405:
            return error(405, "E0000022", "The endpoint does not support the provided HTTP method")
        return error(404, "E0000007", f"Not found: Resource not found: {request.url.path} (Resource)")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return error(400, "E0000003", "The request body was not well-formed.")

    @app.middleware("http")
    async def _gate(request: Request, call_next):
        if not request.url.path.startswith(API):
            return await call_next(request)
        retry = standin.throttle.take()
        if retry is not None:
            reset = str(int(time.time()) + retry)
            return error(429, "E0000047", "API call exceeded rate limit due to too many requests.",
                         headers={"X-Rate-Limit-Limit": "50", "X-Rate-Limit-Remaining": "0",
                                  "X-Rate-Limit-Reset": reset})
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme not in ("SSWS", "Bearer") or token not in standin.api_tokens:
            return error(401, "E0000011", "Invalid token provided")
        return await call_next(request)

    async def parse(request: Request, model: type[BaseModel]):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise OktaRefusal(415, "E0000003", "The request body was not well-formed.",
                              ["Content-Type must be application/json"])
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise OktaRefusal(400, "E0000003", "The request body was not well-formed.") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
            if any(e["type"] == "extra_forbidden" for e in errors):
                raise OktaRefusal(400, "E0000003", "The request body was not well-formed.",
                                  [f"unknown property: {'.'.join(map(str, e['loc']))}"
                                   for e in errors if e["type"] == "extra_forbidden"]) from None
            fields = ", ".join(sorted({str(e["loc"][0]) for e in errors if e["loc"]})) or "body"
            raise OktaRefusal(400, "E0000001", f"Api validation failed: {fields}",
                              [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors]) from None

    @app.post(f"{API}/initiate-fulfillment-request", status_code=204)
    async def initiate(request: Request):
        body = await parse(request, FulfillmentRequest)
        standin._user(body.userId)
        standin.fulfillment_requests.append(body.model_dump())
        return Response(status_code=204)

    @app.post(f"{API}/enroll")
    async def enroll(request: Request):
        return standin.enroll(await parse(request, EnrollmentInitializationRequest))

    @app.post(f"{API}/activate")
    async def activate(request: Request):
        return standin.activate(await parse(request, EnrollmentActivationRequest))

    @app.post(f"{API}/send-pin", status_code=204)
    async def send_pin(request: Request):
        standin.send_pin(await parse(request, PinRequest))
        return Response(status_code=204)

    @app.get(f"{API}/users/{{user_id}}/enrollments")
    def list_factors(user_id: str, request: Request):
        return standin.factors(user_id, str(request.base_url).rstrip("/"))

    @app.delete(f"{API}/users/{{user_id}}/enrollments/{{enrollment_id}}", status_code=204)
    def delete_factor(user_id: str, enrollment_id: str):
        standin.delete(user_id, enrollment_id)
        return Response(status_code=204)

    @app.post(f"{API}/users/{{user_id}}/enrollments/{{enrollment_id}}/mark-error", status_code=204)
    def mark_error(user_id: str, enrollment_id: str):
        standin.mark_error(user_id, enrollment_id)
        return Response(status_code=204)

    app.include_router(signin_router(lambda user_id: standin.relying_party if user_id in standin.users else None))
    return app

"""A strict stand-in of Microsoft Graph's FIDO2 provisioning (beta) and the Microsoft identity
platform's token endpoint.

Written from Microsoft's public documentation (learn.microsoft.com; the same text is in
microsoftgraph/microsoft-graph-docs-contrib): "fido2AuthenticationMethod: creationOptions" (beta,
`challengeTimeoutInMinutes` 5..43200), "webauthnCredentialCreationOptions", "Create
fido2AuthenticationMethod" (beta: `displayName` and `publicKeyCredential` only; attestation
formats "packed" or "none"; 201), "webauthnPublicKeyCredential" (`id`, `response`
{`clientDataJSON`, `attestationObject`}, `clientExtensionResults`), "Microsoft Graph error
responses" (`{"error": {"code", "message", "innerError": {"date", "request-id",
"client-request-id"}}}`, 429 with Retry-After) and "OAuth 2.0 client credentials flow" (POST
`/{tenant}/oauth2/v2.0/token`, form `client_id`, `client_secret`, `scope`
(`https://graph.microsoft.com/.default`), `grant_type=client_credentials` → `{token_type,
expires_in, ext_expires_in, access_token}`; errors `{error, error_description, error_codes,
timestamp, trace_id, correlation_id}`).

Every nested object of the creation options carries `@odata.type`, as in the documented example.
The challenge is opaque: base64url of a token only this stand-in can open (user, expiry), as
Entra's is. A delegated admin acting on their own account gets 405 (self-service is not
supported); here a client can be bound to an "acting user" to play that case.
"""

from __future__ import annotations

from fastapi import Request

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import CollectedClientData
from jwcrypto.common import JWException
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK

from station.standins._common import (
    RegistrationRefused,
    RelyingParty,
    Throttle,
    Tokens,
    b64u_decode,
    bearer,
    is_uuid,
    load_roots,
    signin_router,
)

SCOPE = "https://graph.microsoft.com/.default"
RP_ID = "login.microsoft.com"
RP_NAME = "Microsoft"
METHODS = "fido2methods"
ODATA = "#microsoft.graph."
MAX_DISPLAY_NAME = 30


@dataclass
class GraphUser:
    id: str
    upn: str
    display_name: str

    @property
    def handle(self) -> bytes:
        return uuid.UUID(self.id).bytes if is_uuid(self.id) else self.id.encode()


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), timezone.utc).isoformat().replace("+00:00", "Z")


class GraphRefusal(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class GraphStandin:
    """One Entra tenant: app registrations (client id → secret, optionally an acting user),
    users, their FIDO2 methods (the relying party login.microsoft.com)."""

    def __init__(self, *, tenant_id: str | None = None, attestation_roots: list[bytes] = (),
                 token_lifetime: float = 3599, rp_id: str = RP_ID) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.clients: dict[str, str] = {}
        self.acting_user: dict[str, str] = {}
        self.users: dict[str, GraphUser] = {}
        self.methods: dict[str, list[dict]] = {}
        self.tokens = Tokens(token_lifetime)
        self.throttle = Throttle()
        self.relying_party = RelyingParty(rp_id, RP_NAME, roots=load_roots(list(attestation_roots)),
                                          origins=lambda o: o == f"https://{rp_id}")
        self._challenge_key = JWK.generate(kty="oct", size=256)
        self._lock = threading.Lock()

    def add_client(self, *, acting_user: str | None = None) -> tuple[str, str]:
        """A new app registration with UserAuthenticationMethod.ReadWrite.All → (client_id, secret)."""
        client_id, secret = str(uuid.uuid4()), secrets.token_urlsafe(30)
        self.clients[client_id] = secret
        if acting_user:
            self.acting_user[client_id] = acting_user
        return client_id, secret

    def add_user(self, upn: str, display_name: str, *, user_id: str | None = None) -> GraphUser:
        user = GraphUser(user_id or str(uuid.uuid4()), upn, display_name)
        self.users[user.id] = user
        return user

    # -- creationOptions ---------------------------------------------------------------------------

    def creation_options(self, user: GraphUser, minutes: int) -> dict:
        expires = time.time() + minutes * 60
        rp = self.relying_party.rp
        return {
            "@odata.context": "https://graph.microsoft.com/beta/$metadata#microsoft.graph.webauthnCredentialCreationOptions",
            "challengeTimeoutDateTime": _rfc3339(expires),
            "publicKey": {
                "@odata.type": ODATA + "webauthnPublicKeyCredentialCreationOptions",
                "challenge": websafe_encode(self._seal_challenge(user.id, expires)),
                "timeout": minutes * 60 * 1000,
                "attestation": "direct",
                "rp": {"@odata.type": ODATA + "webauthnPublicKeyCredentialRpEntity", "id": rp.id, "name": rp.name},
                "user": {"@odata.type": ODATA + "webauthnPublicKeyCredentialUserEntity",
                         "id": websafe_encode(user.handle), "name": user.upn, "displayName": user.display_name},
                "pubKeyCredParams": [
                    {"@odata.type": ODATA + "webauthnPublicKeyCredentialParameters", "type": "public-key", "alg": -7},
                    {"@odata.type": ODATA + "webauthnPublicKeyCredentialParameters", "type": "public-key", "alg": -257},
                ],
                "excludeCredentials": [
                    {"@odata.type": ODATA + "webauthnPublicKeyCredentialDescriptor", "type": "public-key",
                     "id": websafe_encode(c.credential_id), "transports": []}
                    for c in self.relying_party.credentials.get(user.id, [])
                ],
                "authenticatorSelection": {
                    "@odata.type": ODATA + "webauthnAuthenticatorSelectionCriteria",
                    "authenticatorAttachment": "cross-platform",
                    "requireResidentKey": True,
                    "userVerification": "required",
                },
                "extensions": {
                    "@odata.type": ODATA + "webauthnAuthenticationExtensionsClientInputs",
                    "hmacCreateSecret": True,
                    "enforceCredentialProtectionPolicy": True,
                    "credentialProtectionPolicy": "userVerificationOptional",
                },
            },
        }

    def _seal_challenge(self, user_id: str, expires: float) -> bytes:
        token = JWE(json.dumps({"sub": user_id, "exp": int(expires), "n": secrets.token_urlsafe(12)}).encode(),
                    protected={"alg": "dir", "enc": "A256GCM"}, algs=["dir", "A256GCM"])
        token.add_recipient(self._challenge_key)
        return token.serialize(compact=True).encode("ascii")

    def _check_challenge(self, challenge: bytes, user_id: str) -> None:
        token = JWE(algs=["dir", "A256GCM"])
        try:
            token.deserialize(challenge.decode("ascii"), key=self._challenge_key)
            claims = json.loads(token.payload)
        except (JWException, ValueError, UnicodeDecodeError):
            raise GraphRefusal(400, "invalidChallenge", "The challenge was not issued by this tenant.") from None
        if claims.get("sub") != user_id:
            raise GraphRefusal(400, "invalidChallenge", "The challenge was issued for another user.")
        if time.time() > claims.get("exp", 0):
            raise GraphRefusal(400, "challengeExpired", "The challenge has expired; request new creation options.")

    # -- POST fido2Methods -------------------------------------------------------------------------

    def register(self, user: GraphUser, body: dict) -> dict:
        display_name, credential = _fido2_body(body)
        try:
            client_data = CollectedClientData(b64u_decode(credential["response"]["clientDataJSON"]))
            challenge = client_data.challenge
        except (ValueError, KeyError, TypeError):
            raise GraphRefusal(400, "invalidRequest", "publicKeyCredential.response.clientDataJSON is not "
                               "WebAuthn client data.") from None
        self._check_challenge(challenge, user.id)
        registration = {"id": credential["id"], "rawId": credential["id"], "type": "public-key",
                        "response": {k: v for k, v in credential["response"].items() if not k.startswith("@")},
                        "clientExtensionResults": {k: v for k, v in credential.get("clientExtensionResults", {}).items()
                                                   if not k.startswith("@")}}
        try:
            stored = self.relying_party.register(user.id, registration, challenge=challenge,
                                                 formats=("packed", "none"))
        except RegistrationRefused as exc:
            raise GraphRefusal(400, "invalidRequest", str(exc)) from None
        method = {
            "@odata.type": ODATA + "fido2AuthenticationMethod",
            "id": credential["id"],
            "displayName": display_name,
            "createdDateTime": _rfc3339(time.time()),
            "aaGuid": stored.aaguid,
            "model": None,
            "attestationCertificates": [x509.load_der_x509_certificate(der).fingerprint(hashes.SHA1()).hex()
                                        for der in stored.x5c],
            "attestationLevel": "attested" if stored.attested else "notAttested",
        }
        with self._lock:
            self.methods.setdefault(user.id, []).append(method)
        return method

    def delete(self, user: GraphUser, method_id: str) -> None:
        with self._lock:
            methods = self.methods.get(user.id, [])
            match = [m for m in methods if m["id"] == method_id]
            if not match:
                raise GraphRefusal(404, "itemNotFound", f"The FIDO2 method {method_id} was not found.")
            methods.remove(match[0])
        self.relying_party.forget(user.id, websafe_decode(method_id))


_KNOWN = {
    "body": ({"displayName", "publicKeyCredential", "@odata.type"}, "fido2AuthenticationMethod"),
    "publicKeyCredential": ({"id", "response", "clientExtensionResults", "@odata.type"}, "webauthnPublicKeyCredential"),
    "response": ({"clientDataJSON", "attestationObject", "@odata.type"}, "webauthnAuthenticatorAttestationResponse"),
}


def _unknown(obj: dict, where: str) -> None:
    names, type_name = _KNOWN[where]
    declared = obj.get("@odata.type")
    if declared is not None and declared.lstrip("#") != f"microsoft.graph.{type_name}":
        raise GraphRefusal(400, "BadRequest", f"A type named '{declared}' could not be resolved as "
                           f"'microsoft.graph.{type_name}'.")
    for key in obj:
        if key not in names:
            raise GraphRefusal(400, "BadRequest",
                               f"The property '{key}' does not exist on type 'microsoft.graph.{type_name}'. Make sure "
                               "to only use property names that are defined by the type or mark the type as open type.")


def _fido2_body(body) -> tuple[str, dict]:
    """The documented members of a fido2AuthenticationMethod create, and nothing else."""
    if not isinstance(body, dict):
        raise GraphRefusal(400, "BadRequest", "The request body must be a JSON object.")
    _unknown(body, "body")
    display_name, credential = body.get("displayName"), body.get("publicKeyCredential")
    if not isinstance(display_name, str) or not display_name.strip():
        raise GraphRefusal(400, "invalidRequest", "displayName is required.")
    if len(display_name) > MAX_DISPLAY_NAME:
        raise GraphRefusal(400, "invalidRequest", f"displayName must be at most {MAX_DISPLAY_NAME} characters.")
    if not isinstance(credential, dict):
        raise GraphRefusal(400, "invalidRequest", "publicKeyCredential is required.")
    _unknown(credential, "publicKeyCredential")
    response = credential.get("response")
    if not isinstance(credential.get("id"), str) or not isinstance(response, dict):
        raise GraphRefusal(400, "invalidRequest", "publicKeyCredential needs id and response.")
    _unknown(response, "response")
    for name in ("clientDataJSON", "attestationObject"):
        try:
            b64u_decode(response.get(name))
        except ValueError:
            raise GraphRefusal(400, "invalidRequest", f"publicKeyCredential.response.{name} must be base64url "
                               "without padding.") from None
    try:
        b64u_decode(credential["id"])
    except ValueError:
        raise GraphRefusal(400, "invalidRequest", "publicKeyCredential.id must be base64url without padding.") from None
    extensions = credential.get("clientExtensionResults", {})
    if not isinstance(extensions, dict):
        raise GraphRefusal(400, "invalidRequest", "clientExtensionResults must be an object.")
    return display_name, credential


def create_app(standin: GraphStandin):
    """The Graph API (`/beta/...`) and the token endpoint (`/{tenant}/oauth2/v2.0/token`) in one
    app: the demo points both `--graph-url` and `--login-url` at it."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="Microsoft Graph stand-in", docs_url=None, redoc_url=None, openapi_url=None)

    def graph_error(status: int, code: str, message: str, request: Request | None = None, headers=None):
        inner = {"date": _rfc3339(time.time()), "request-id": str(uuid.uuid4()),
                 "client-request-id": (request.headers.get("client-request-id") if request else None) or str(uuid.uuid4())}
        return JSONResponse({"error": {"code": code, "message": message, "innerError": inner}},
                            status_code=status, headers=headers)

    def token_error(status: int, error: str, code: int, description: str):
        return JSONResponse({"error": error, "error_description": f"AADSTS{code}: {description}",
                             "error_codes": [code], "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
                             "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())}, status_code=status)

    @app.exception_handler(GraphRefusal)
    async def _refused(request: Request, exc: GraphRefusal):
        return graph_error(exc.status, exc.code, exc.message, request, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc):
        if exc.status_code == 405:
            return graph_error(405, "Request_BadRequest", "The HTTP method is not allowed on this resource.", request)
        return graph_error(404, "Request_ResourceNotFound", f"Resource '{request.url.path}' does not exist.", request)

    @app.post("/{tenant}/oauth2/v2.0/token")
    async def token(tenant: str, request: Request):
        if tenant not in (standin.tenant_id, "organizations") :
            return token_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return token_error(400, "invalid_request", 900144, "The request body must contain the following "
                               "parameter: 'grant_type'.")
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return token_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        client_id = form.get("client_id", "")
        if client_id not in standin.clients:
            return token_error(400, "unauthorized_client", 700016,
                               f"Application with identifier '{client_id}' was not found in the directory.")
        if not secrets.compare_digest(form.get("client_secret", ""), standin.clients[client_id]):
            return token_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if form.get("scope") != SCOPE:
            return token_error(400, "invalid_scope", 1002012, "The provided value for scope is not valid. "
                               "Client credential flows must have a scope value with /.default suffixed.")
        access, expires_in = standin.tokens.issue(client_id)
        return {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": access}

    def caller(request: Request) -> str:
        retry = standin.throttle.take()
        if retry is not None:
            raise GraphRefusal(429, "TooManyRequests", "Too many requests. Retry after the time in Retry-After.",
                               {"Retry-After": str(retry)})
        client, why = standin.tokens.check(bearer(request.headers.get("authorization")))
        if client is None:
            message = {"missing": "Access token is empty.", "expired": "Lifetime validation failed, the token is expired.",
                       "unknown": "Invalid JWT token. The token is malformed or not issued by this tenant."}[why]
            raise GraphRefusal(401, "InvalidAuthenticationToken", message)
        return client

    def target(client: str, user_id: str) -> GraphUser:
        user = standin.users.get(user_id)
        if user is None:
            raise GraphRefusal(404, "Request_ResourceNotFound", f"Resource '{user_id}' does not exist or one of its "
                               "queried reference-property objects are not present.")
        if standin.acting_user.get(client) == user_id:
            raise GraphRefusal(405, "methodNotAllowed", "Self-service operations are not supported: an "
                               "administrator cannot provision a FIDO2 method on their own account.")
        return user

    def method_path(rest: str) -> tuple[str, str | None]:
        """`fido2Methods/...` (Graph is case-insensitive on segment names) → (kind, argument)."""
        head, _, tail = rest.partition("/")
        if head.lower() != METHODS:
            raise GraphRefusal(400, "BadRequest", f"Resource not found for the segment '{head}'.")
        return "methods", tail or None

    @app.get("/beta/users/{user_id}/authentication/{rest:path}")
    def get(user_id: str, rest: str, request: Request):
        client = caller(request)
        user = target(client, user_id)
        _kind, argument = method_path(rest)
        if argument is None:
            return {"@odata.context": f"https://graph.microsoft.com/beta/$metadata#users('{user_id}')/authentication/fido2Methods",
                    "value": list(standin.methods.get(user.id, []))}
        prefix, _, rest_args = argument.partition("(")
        if prefix != "creationOptions":
            match = [m for m in standin.methods.get(user.id, []) if m["id"] == argument]
            if not match:
                raise GraphRefusal(404, "itemNotFound", f"The FIDO2 method {argument} was not found.")
            return match[0]
        minutes = 5
        if rest_args:
            name, _, value = rest_args.rstrip(")").partition("=")
            if name != "challengeTimeoutInMinutes" or not rest_args.endswith(")"):
                raise GraphRefusal(400, "BadRequest", f"The function parameter '{name}' is not defined for creationOptions.")
            try:
                minutes = int(value)
            except ValueError:
                raise GraphRefusal(400, "BadRequest", "challengeTimeoutInMinutes must be an Int32.") from None
            if not 5 <= minutes <= 43200:
                raise GraphRefusal(400, "invalidRequest", "challengeTimeoutInMinutes must be between 5 and 43200.")
        return standin.creation_options(user, minutes)

    @app.post("/beta/users/{user_id}/authentication/{rest:path}")
    async def post(user_id: str, rest: str, request: Request):
        client = caller(request)
        user = target(client, user_id)
        _kind, argument = method_path(rest)
        if argument is not None:
            raise GraphRefusal(405, "Request_BadRequest", "The HTTP method is not allowed on this resource.")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise GraphRefusal(415, "BadRequest", "Content-Type must be application/json.")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise GraphRefusal(400, "BadRequest", "The request body is not valid JSON.") from None
        return JSONResponse(standin.register(user, body), status_code=201)

    @app.delete("/beta/users/{user_id}/authentication/{rest:path}")
    def delete(user_id: str, rest: str, request: Request):
        client = caller(request)
        user = target(client, user_id)
        _kind, argument = method_path(rest)
        if argument is None:
            raise GraphRefusal(405, "Request_BadRequest", "The HTTP method is not allowed on this resource.")
        standin.delete(user, argument)
        return Response(status_code=204)

    app.include_router(signin_router(lambda user_id: standin.relying_party if user_id in standin.users else None))
    return app

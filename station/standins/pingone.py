"""A strict stand-in of PingOne's MFA devices API (FIDO2) and its worker-app token endpoint.

Written from Ping Identity's public documentation (developer.pingidentity.com/pingone-api):
"Create MFA User Device (FIDO2)" (`POST /v1/environments/{envID}/users/{userID}/devices` with
`{"type": "FIDO2", "rp": {"id", "name"}, "policy": {"id"}}` → 201, `status`
"ACTIVATION_REQUIRED" and `publicKeyCredentialCreationOptions`, a JSON *string* whose
`challenge` and `user.id` are arrays of signed bytes and whose `alg` values are strings),
"Activate MFA User Device (FIDO2)" (`POST .../devices/{deviceID}` with content type
`application/vnd.pingidentity.device.activate+json` and `{"origin", "attestation"}`, the
attestation being the browser's credential as a JSON string with binary members in standard
base64), "FIDO Policies" (discoverable credentials, user verification, backup eligibility,
attestation, allowed authenticators), the platform's error object (`{id, code, message,
details[{code, target, message}]}`; codes INVALID_DATA, INVALID_REQUEST, NOT_FOUND,
ACCESS_FAILED, REQUEST_LIMITED) and "Token (client_credentials)" (`POST
{authPath}/{envID}/as/token`, Client Secret Post: `client_id` and `client_secret` in the form).

HID's seed policy is the default: discoverable credentials required, user verification
preferred, backup eligibility not allowed, attestation direct, only the listed authenticators
(AAGUIDs) when a list is given.

The directory side (for directory-connected provisioning): "Read All Users" / "Read One User"
(`GET .../users?filter=username eq "..."`, `filter=memberOfGroups[id eq "..."]`, `limit`, each
page's `_links.next`), "Read All Groups" (`filter=name eq "..."`) and "FIDO Policies" in the
newer model (`GET .../fido2Policies[/{id}]`: `discoverableCredentials` REQUIRED | PREFERRED |
DISCOURAGED, `authenticatorAttachment` PLATFORM | CROSS_PLATFORM | BOTH, `userVerification`
{option, enforceDuringAuthentication}, `backupEligibility` {allow, enforceDuringAuthentication},
`attestationRequirements` DIRECT | NONE, `mdsAuthenticatorsRequirements` {option NONE |
AUDIT_ONLY | GLOBAL | CERTIFIED | SPECIFIC, allowedAuthenticators [{id}],
enforceDuringAuthentication}, `default`; field names as in Ping's published API model, the
pingone-go-sdk-v2 `mfa` package). A worker app holds admin roles ("PingOne Permissions by
role"): Identity Data Admin for users, groups and devices (Identity Data Read Only for reads),
Environment Admin for FIDO policies; a call without its role answers 403 `ACCESS_FAILED`
"The request could not be completed. You do not have access to this resource." Every response
carries a `Correlation-Id` header (ASSUMED: Ping's support articles ask for it; its exact
casing is not in the API reference).
"""

from __future__ import annotations

from fastapi import Request

import base64
import binascii
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlencode, urlsplit

from fido2.utils import websafe_encode

from station.standins._common import (
    App,
    CorrelationIds,
    RegistrationRefused,
    RelyingParty,
    Throttle,
    Tokens,
    bearer,
    is_uuid,
    load_roots,
    new_app,
    signin_router,
)

IDENTITY_DATA_ADMIN, IDENTITY_DATA_READ_ONLY, ENVIRONMENT_ADMIN = (
    "Identity Data Admin", "Identity Data Read Only", "Environment Admin")
USERS_READ = frozenset({IDENTITY_DATA_ADMIN, IDENTITY_DATA_READ_ONLY})
DEVICES_WRITE = frozenset({IDENTITY_DATA_ADMIN})
POLICIES_READ = frozenset({ENVIRONMENT_ADMIN})
DEFAULT_ROLES = (ENVIRONMENT_ADMIN, IDENTITY_DATA_ADMIN)
"""HID's documented roles of the worker app."""
NO_ACCESS = "The request could not be completed. You do not have access to this resource."

ACTIVATE_CONTENT_TYPE = "application/vnd.pingidentity.device.activate+json"


@dataclass
class Fido2Policy:
    """A PingOne FIDO policy (HID's seed fields, and the newer model's others). Change its
    attributes, or `PingOneStandin.set_policy`, as an administrator would in the console."""

    id: str
    relying_party_id: str
    name: str = "HID pre-registration"
    discoverable_credentials: str = "REQUIRED"
    user_verification: str = "PREFERRED"
    backup_eligibility_allowed: bool = False
    attestation: str = "DIRECT"
    allowed_aaguids: list[str] | None = None
    authenticator_attachment: str = "BOTH"
    mds_option: str | None = None
    default: bool = False
    description: str | None = None
    device_display_name: str = "Security Key"
    created: str = field(default_factory=lambda: _now())

    @property
    def mds(self) -> str:
        """mdsAuthenticatorsRequirements.option: SPECIFIC with a list of authenticators, else
        GLOBAL under direct attestation, NONE without (unless set)."""
        if self.mds_option:
            return self.mds_option
        if self.allowed_aaguids is not None:
            return "SPECIFIC"
        return "NONE" if self.attestation == "NONE" else "GLOBAL"

    def resource(self, env: str, base: str) -> dict:
        mds: dict = {"option": self.mds, "enforceDuringAuthentication": True}
        if self.allowed_aaguids is not None:
            mds["allowedAuthenticators"] = [{"id": a} for a in self.allowed_aaguids]
        body = {
            "_links": {"self": {"href": f"{base}/v1/environments/{env}/fido2Policies/{self.id}"}},
            "id": self.id, "environment": {"id": env}, "name": self.name, "default": self.default,
            "deviceDisplayName": self.device_display_name,
            "discoverableCredentials": self.discoverable_credentials,
            "authenticatorAttachment": self.authenticator_attachment,
            "userVerification": {"enforceDuringAuthentication": True, "option": self.user_verification},
            "backupEligibility": {"allow": self.backup_eligibility_allowed, "enforceDuringAuthentication": True},
            "userDisplayNameAttributes": {"attributes": [{"name": "username"}]},
            "attestationRequirements": self.attestation,
            "mdsAuthenticatorsRequirements": mds,
            "relyingPartyId": self.relying_party_id,
            "createdAt": self.created, "updatedAt": self.created,
        }
        if self.description:
            body["description"] = self.description
        return body


@dataclass
class PingUser:
    id: str
    username: str
    email: str
    given: str | None = None
    family: str | None = None

    def resource(self, env: str) -> dict:
        body = {"id": self.id, "environment": {"id": env}, "username": self.username, "email": self.email,
                "enabled": True, "lifecycle": {"status": "ACCOUNT_OK"}}
        if self.given or self.family:
            body["name"] = {k: v for k, v in (("given", self.given), ("family", self.family)) if v}
            body["name"]["formatted"] = " ".join(p for p in (self.given, self.family) if p)
        return body


@dataclass
class PingGroup:
    id: str
    name: str
    members: list[str] = field(default_factory=list)

    def resource(self, env: str) -> dict:
        return {"id": self.id, "environment": {"id": env}, "name": self.name,
                "directMemberCounts": {"users": len(self.members)}}


@dataclass
class _Device:
    id: str
    user_id: str
    rp_id: str
    rp_name: str
    policy: Fido2Policy
    challenge: bytes
    options: str
    expires_at: float
    nickname: str | None = None
    status: str = "ACTIVATION_REQUIRED"
    created: str = ""
    updated: str = ""
    credential_id: bytes | None = field(default=None, repr=False)

    def resource(self, env: str, base: str) -> dict:
        body = {
            "_links": {"self": {"href": f"{base}/v1/environments/{env}/users/{self.user_id}/devices/{self.id}"}},
            "id": self.id, "environment": {"id": env}, "user": {"id": self.user_id},
            "type": "FIDO2", "status": self.status, "createdAt": self.created, "updatedAt": self.updated,
            "rp": {"id": self.rp_id, "name": self.rp_name}, "policy": {"id": self.policy.id},
        }
        if self.nickname:
            body["nickname"] = self.nickname
        if self.status == "ACTIVATION_REQUIRED":
            body["publicKeyCredentialCreationOptions"] = self.options
        return body


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signed_bytes(data: bytes) -> list[int]:
    """Bytes as Java's signed byte array (-128..127), the way PingOne writes them."""
    return [b - 256 if b > 127 else b for b in data]


class PingRefusal(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict] = (), headers=None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, list(details), headers


def _detail(code: str, target: str, message: str) -> dict:
    return {"code": code, "target": target, "message": message}


class PingOneStandin:
    """One PingOne environment: worker apps (client id → secret), users, FIDO2 policies, devices."""

    def __init__(self, *, environment_id: str | None = None, attestation_roots: list[bytes] = (),
                 token_lifetime: float = 3600, activation_timeout: float = 30 * 24 * 3600) -> None:
        self.environment_id = environment_id or str(uuid.uuid4())
        self.clients: dict[str, App] = {}
        self.users: dict[str, PingUser] = {}
        self.groups: dict[str, PingGroup] = {}
        self.page_size = 100
        self.policies: dict[str, Fido2Policy] = {}
        self.devices: dict[str, _Device] = {}
        self.tokens = Tokens(token_lifetime)
        self.throttle = Throttle()
        self.roots = load_roots(list(attestation_roots))
        self.activation_timeout = activation_timeout
        self._parties: dict[str, RelyingParty] = {}
        self._lock = threading.Lock()

    def add_client(self, *, roles=DEFAULT_ROLES, consented: bool = True) -> tuple[str, str]:
        """A worker app (Client Secret Post) with these admin roles → (client_id, secret).
        `consented=False` plays a worker whose role assignments were removed."""
        client_id, app = new_app(roles, consented)
        self.clients[client_id] = app
        return client_id, app.secret

    def add_user(self, username: str, *, user_id: str | None = None, given: str | None = None,
                 family: str | None = None) -> PingUser:
        user = PingUser(user_id or str(uuid.uuid4()), username, username, given, family)
        self.users[user.id] = user
        return user

    def add_group(self, name: str, members=(), *, group_id: str | None = None) -> PingGroup:
        group = PingGroup(group_id or str(uuid.uuid4()), name, list(members))
        self.groups[group.id] = group
        return group

    def add_policy(self, relying_party_id: str, **options) -> Fido2Policy:
        """A FIDO policy; the first one of the environment is its default."""
        options.setdefault("default", not self.policies)
        policy = Fido2Policy(str(uuid.uuid4()), relying_party_id, **options)
        if policy.default:
            for other in self.policies.values():
                other.default = False
        self.policies[policy.id] = policy
        return policy

    def set_policy(self, policy_id: str, **changes) -> Fido2Policy:
        """Change a FIDO policy's fields (the dataclass names), as an administrator would."""
        policy = self.policies[policy_id]
        for name, value in changes.items():
            if not hasattr(policy, name) or name in ("id", "created"):
                raise AttributeError(f"a FIDO policy has no field {name!r}")
            setattr(policy, name, value)
        return policy

    def relying_party(self, rp_id: str) -> RelyingParty:
        with self._lock:
            if rp_id not in self._parties:
                self._parties[rp_id] = RelyingParty(rp_id, rp_id, roots=self.roots, origins=_origin_check(rp_id))
            return self._parties[rp_id]

    def party_of_user(self, user_id: str) -> RelyingParty | None:
        for device in self.devices.values():
            if device.user_id == user_id and device.status == "ACTIVE":
                return self.relying_party(device.rp_id)
        return None

    # -- devices -----------------------------------------------------------------------------------

    def create_device(self, user: PingUser, body) -> _Device:
        if not isinstance(body, dict):
            raise PingRefusal(400, "INVALID_DATA", "The request could not be completed. One or more validation errors were in the request.",
                              [_detail("INVALID_VALUE", "body", "The body must be a JSON object.")])
        allowed = {"type", "rp", "policy", "nickname", "block", "lock"}
        details = [_detail("INVALID_VALUE", key, f"Unknown property '{key}'.") for key in body if key not in allowed]
        if body.get("type") != "FIDO2":
            details.append(_detail("REQUIRED_VALUE" if "type" not in body else "INVALID_VALUE", "type",
                                   "type must be FIDO2 for this operation."))
        rp, policy_ref = body.get("rp"), body.get("policy")
        if not isinstance(rp, dict) or not isinstance(rp.get("id"), str) or not isinstance(rp.get("name"), str) \
                or set(rp) - {"id", "name"}:
            details.append(_detail("REQUIRED_VALUE", "rp", "rp.id and rp.name are required (and nothing else)."))
        if not isinstance(policy_ref, dict) or not isinstance(policy_ref.get("id"), str) or set(policy_ref) - {"id", "type"}:
            details.append(_detail("REQUIRED_VALUE", "policy.id", "policy.id is required."))
        if details:
            raise PingRefusal(400, "INVALID_DATA", "The request could not be completed. One or more validation "
                              "errors were in the request.", details)
        policy = self.policies.get(policy_ref["id"])
        if policy is None:
            raise PingRefusal(400, "INVALID_DATA", "The request could not be completed. One or more validation "
                              "errors were in the request.",
                              [_detail("INVALID_VALUE", "policy.id", "No FIDO2 policy with this id.")])
        if rp["id"] != policy.relying_party_id:
            raise PingRefusal(400, "INVALID_DATA", "The request could not be completed. One or more validation "
                              "errors were in the request.",
                              [_detail("INVALID_VALUE", "rp.id", "rp.id differs from the policy's relying party.")])
        challenge = secrets.token_bytes(32)
        options = {
            "rp": {"id": rp["id"], "name": rp["name"]},
            "user": {"id": signed_bytes(uuid.UUID(user.id).bytes if is_uuid(user.id) else user.id.encode()),
                     "name": user.username, "displayName": user.username},
            "challenge": signed_bytes(challenge),
            "pubKeyCredParams": [{"type": "public-key", "alg": "-7"}, {"type": "public-key", "alg": "-35"},
                                 {"type": "public-key", "alg": "-36"}, {"type": "public-key", "alg": "-257"}],
            "timeout": int(self.activation_timeout * 1000),
            "excludeCredentials": [{"type": "public-key", "id": signed_bytes(d.credential_id)}
                                   for d in self.devices.values()
                                   if d.user_id == user.id and d.credential_id is not None],
            "authenticatorSelection": {
                "residentKey": policy.discoverable_credentials.lower(),
                "requireResidentKey": policy.discoverable_credentials == "REQUIRED",
                "userVerification": policy.user_verification.lower(),
            },
            "attestation": policy.attestation.lower(),
            "extensions": {"credProps": True},
        }
        device = _Device(str(uuid.uuid4()), user.id, rp["id"], rp["name"], policy, challenge,
                         json.dumps(options, separators=(",", ":")), time.time() + self.activation_timeout,
                         nickname=body.get("nickname"), created=_now(), updated=_now())
        with self._lock:
            self.devices[device.id] = device
        return device

    def activate(self, device: _Device, body) -> _Device:
        invalid = "The request could not be completed. One or more validation errors were in the request."
        if device.status != "ACTIVATION_REQUIRED":
            raise PingRefusal(400, "REQUEST_FAILED", "The device does not require activation.")
        if time.time() > device.expires_at:
            raise PingRefusal(400, "REQUEST_FAILED", "The activation of this device has expired; create it again.")
        if not isinstance(body, dict) or set(body) - {"origin", "attestation"} \
                or not isinstance(body.get("origin"), str) or not isinstance(body.get("attestation"), str):
            raise PingRefusal(400, "INVALID_DATA", invalid,
                              [_detail("REQUIRED_VALUE", "attestation", "origin and attestation (a JSON string) are required, nothing else.")])
        if not _origin_check(device.rp_id)(body["origin"]):
            raise PingRefusal(400, "INVALID_DATA", invalid,
                              [_detail("INVALID_VALUE", "origin", f"The origin is not https://{device.rp_id} or a subdomain.")])
        try:
            registration = _registration_from_attestation(body["attestation"])
        except ValueError as exc:
            raise PingRefusal(400, "INVALID_DATA", invalid, [_detail("INVALID_VALUE", "attestation", str(exc))]) from None
        policy = device.policy
        rp = self.relying_party(device.rp_id)
        uv = "required" if policy.user_verification == "REQUIRED" else "preferred"
        try:
            credential = rp.register(device.user_id, registration, challenge=device.challenge, user_verification=uv)
        except RegistrationRefused as exc:
            raise PingRefusal(400, "INVALID_DATA", invalid, [_detail("INVALID_VALUE", "attestation", str(exc))]) from None
        problem = None
        from fido2.webauthn import AttestationObject

        auth_data = AttestationObject(base64.urlsafe_b64decode(registration["response"]["attestationObject"] + "==")).auth_data
        if not policy.backup_eligibility_allowed and auth_data.is_backup_eligible():
            problem = "The policy does not allow backup-eligible credentials."
        elif policy.attestation == "DIRECT" and credential.attestation_fmt == "none":
            problem = "The policy requires direct attestation."
        elif policy.mds == "SPECIFIC" and credential.aaguid not in {a.lower() for a in policy.allowed_aaguids or []}:
            problem = f"The authenticator {credential.aaguid} is not allowed by the FIDO2 policy."
        # PingOne's attestation string (its documented members) does not say the attachment; a
        # credential that does not claim "platform" is taken for a roaming key.
        elif policy.authenticator_attachment == "PLATFORM" and registration.get("authenticatorAttachment") != "platform":
            problem = "The FIDO2 policy allows only platform authenticators."
        elif policy.authenticator_attachment == "CROSS_PLATFORM" and registration.get("authenticatorAttachment") == "platform":
            problem = "The FIDO2 policy allows only cross-platform authenticators."
        elif policy.discoverable_credentials == "REQUIRED" \
                and (registration.get("clientExtensionResults") or {}).get("credProps", {}).get("rk") is False:
            problem = "The FIDO2 policy requires a discoverable credential."
        if problem:
            rp.forget(device.user_id, credential.credential_id)
            raise PingRefusal(400, "INVALID_DATA", invalid, [_detail("INVALID_VALUE", "attestation", problem)])
        with self._lock:
            device.status, device.updated, device.credential_id = "ACTIVE", _now(), credential.credential_id
        return device

    def delete(self, device: _Device) -> None:
        with self._lock:
            self.devices.pop(device.id, None)
        if device.credential_id is not None:
            self.relying_party(device.rp_id).forget(device.user_id, device.credential_id)


def _origin_check(rp_id: str):
    def ok(origin: str) -> bool:
        parts = urlsplit(origin)
        host = parts.hostname or ""
        return parts.scheme == "https" and not parts.path and (host == rp_id or host.endswith("." + rp_id))

    return ok


def _std_b64(value, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not standard base64") from None


def _registration_from_attestation(text: str) -> dict:
    """The browser's credential as PingOne takes it (binary members in standard base64) →
    RegistrationResponseJSON (base64url) for the relying party."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("attestation is not a JSON string") from None
    if not isinstance(data, dict) or not isinstance(data.get("response"), dict):
        raise ValueError("attestation needs id, rawId, type and response")
    if data.get("type") != "public-key":
        raise ValueError("attestation.type must be public-key")
    raw_id = _std_b64(data.get("rawId"), "rawId")
    response = data["response"]
    client_data = _std_b64(response.get("clientDataJSON"), "response.clientDataJSON")
    attestation = _std_b64(response.get("attestationObject"), "response.attestationObject")
    if data.get("id") != websafe_encode(raw_id):
        raise ValueError("attestation.id is not the base64url of rawId")
    registration = {"id": data["id"], "rawId": websafe_encode(raw_id), "type": "public-key",
                    "response": {"clientDataJSON": websafe_encode(client_data),
                                 "attestationObject": websafe_encode(attestation)},
                    "clientExtensionResults": data.get("clientExtensionResults") or {}}
    if data.get("authenticatorAttachment") in ("platform", "cross-platform"):
        registration["authenticatorAttachment"] = data["authenticatorAttachment"]
    return registration


def create_app(standin: PingOneStandin):
    """The API (`/v1/environments/...`) and the auth service (`/{envId}/as/token`) in one app:
    the demo points both `--pingone-url` and `--pingone-auth-url` at it."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="PingOne stand-in", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CorrelationIds, own="correlation-id")
    env = standin.environment_id

    def error(status: int, code: str, message: str, details=(), headers=None):
        body = {"id": str(uuid.uuid4()), "code": code, "message": message}
        if details:
            body["details"] = list(details)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(PingRefusal)
    async def _refused(request, exc: PingRefusal):
        return error(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        if exc.status_code == 405:
            return error(405, "METHOD_NOT_ALLOWED", "The request could not be completed. The method is not allowed.")
        return error(404, "NOT_FOUND", "The request could not be completed. The requested resource was not found.")

    @app.post("/{env_id}/as/token")
    async def token(env_id: str, request: Request):
        def oauth(status: int, err: str, description: str):
            return JSONResponse({"error": err, "error_description": description}, status_code=status)

        if env_id != env:
            return oauth(404, "invalid_request", "The environment was not found.")
        if request.headers.get("authorization"):
            return oauth(401, "invalid_client", "Unsupported authentication method - please use 'client_secret_post'.")
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return oauth(400, "unsupported_grant_type", "The grant type is not supported by the application.")
        client_id = form.get("client_id", "")
        worker = standin.clients.get(client_id)
        if worker is None or not secrets.compare_digest(form.get("client_secret", ""), worker.secret):
            return oauth(401, "invalid_client", "Request denied: Invalid client credentials (Correlation ID: "
                         f"{request.state.request_id})")
        access, expires_in = standin.tokens.issue(client_id, worker.granted())
        return {"access_token": access, "token_type": "Bearer", "expires_in": expires_in}

    def authorised(request: Request, env_id: str, needs: frozenset) -> str:
        """Throttling, the token, the environment, then one of the roles `needs`."""
        retry = standin.throttle.take()
        if retry is not None:
            raise PingRefusal(429, "REQUEST_LIMITED", "The request could not be completed. Too many requests; "
                              "retry after the time in Retry-After.", headers={"Retry-After": str(retry)})
        token = bearer(request.headers.get("authorization"))
        client, why = standin.tokens.check(token)
        if client is None:
            raise PingRefusal(401, "ACCESS_FAILED", "The request could not be completed. "
                              + ("The access token has expired." if why == "expired" else "You do not have access to this resource."))
        if env_id != env:
            raise PingRefusal(404, "NOT_FOUND", "The request could not be completed. The environment was not found.")
        if not standin.tokens.roles(token) & needs:
            raise PingRefusal(403, "ACCESS_FAILED", NO_ACCESS)
        return client

    def guard(request: Request, env_id: str, user_id: str, needs: frozenset = DEVICES_WRITE) -> PingUser:
        authorised(request, env_id, needs)
        user = standin.users.get(user_id)
        if user is None:
            raise PingRefusal(404, "NOT_FOUND", f"Unable to find user with ID '{user_id}'.")
        return user

    def device_of(user: PingUser, device_id: str) -> _Device:
        device = standin.devices.get(device_id)
        if device is None or device.user_id != user.id:
            raise PingRefusal(404, "NOT_FOUND", f"Unable to find device with ID '{device_id}'.")
        return device

    async def json_body(request: Request):
        try:
            return json.loads(await request.body())
        except ValueError:
            raise PingRefusal(400, "INVALID_REQUEST", "The request could not be completed. The body is not valid JSON.") from None

    base = lambda request: str(request.base_url).rstrip("/")  # noqa: E731

    @app.post("/v1/environments/{env_id}/users/{user_id}/devices")
    async def create(env_id: str, user_id: str, request: Request):
        user = guard(request, env_id, user_id)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise PingRefusal(415, "INVALID_REQUEST", "The request could not be completed. Content-Type must be application/json.")
        device = standin.create_device(user, await json_body(request))
        return JSONResponse(device.resource(env, base(request)), status_code=201)

    @app.get("/v1/environments/{env_id}/users/{user_id}/devices")
    def list_devices(env_id: str, user_id: str, request: Request):
        user = guard(request, env_id, user_id, USERS_READ)
        devices = [d.resource(env, base(request)) for d in standin.devices.values() if d.user_id == user.id]
        return {"_embedded": {"devices": devices}, "count": len(devices), "size": len(devices)}

    @app.get("/v1/environments/{env_id}/users/{user_id}/devices/{device_id}")
    def read(env_id: str, user_id: str, device_id: str, request: Request):
        user = guard(request, env_id, user_id, USERS_READ)
        return device_of(user, device_id).resource(env, base(request))

    @app.post("/v1/environments/{env_id}/users/{user_id}/devices/{device_id}")
    async def activate(env_id: str, user_id: str, device_id: str, request: Request):
        user = guard(request, env_id, user_id)
        device = device_of(user, device_id)
        if request.headers.get("content-type", "").split(";")[0].strip() != ACTIVATE_CONTENT_TYPE:
            raise PingRefusal(415, "INVALID_REQUEST", "The request could not be completed. Activation needs the "
                              f"content type {ACTIVATE_CONTENT_TYPE}.")
        return standin.activate(device, await json_body(request)).resource(env, base(request))

    @app.delete("/v1/environments/{env_id}/users/{user_id}/devices/{device_id}")
    def delete(env_id: str, user_id: str, device_id: str, request: Request):
        user = guard(request, env_id, user_id)
        standin.delete(device_of(user, device_id))
        return Response(status_code=204)

    def page_params(request: Request, allowed: set[str]) -> tuple[int, int, str | None]:
        """(limit, offset, filter) of a collection read; other query parameters are refused."""
        params = dict(request.query_params)
        for key in params:
            if key not in allowed:
                raise PingRefusal(400, "INVALID_REQUEST", "The request could not be completed. The request was "
                                  "malformed or invalid.", [_detail("INVALID_PARAMETER", key, f"Unknown parameter '{key}'.")])
        limit = params.get("limit", str(standin.page_size))
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise PingRefusal(400, "INVALID_REQUEST", "The request could not be completed. The request was malformed "
                              "or invalid.", [_detail("INVALID_VALUE", "limit", "limit must be 1 to 1000.")])
        cursor = params.get("cursor", "0")
        if not cursor.isdigit():
            raise PingRefusal(400, "INVALID_REQUEST", "The request could not be completed. The request was malformed "
                              "or invalid.", [_detail("INVALID_VALUE", "cursor", "The cursor is not valid.")])
        return int(limit), int(cursor), params.get("filter")

    def equals(text: str, attribute: str, close: str = "") -> str | None:
        """The string of a SCIM `attribute eq "..."` filter (RFC 7644 §3.4.2.2), or None."""
        match = re.fullmatch(r'\s*' + re.escape(attribute) + r'\s+eq\s+"((?:[^"\\]|\\.)*)"\s*'
                             + re.escape(close) + r'\s*', text)
        return re.sub(r"\\(.)", r"\1", match.group(1)) if match else None

    def bad_filter(text: str) -> PingRefusal:
        return PingRefusal(400, "INVALID_REQUEST", "The request could not be completed. The request was malformed or "
                           "invalid.", [_detail("INVALID_FILTER", "filter", f"The filter '{text}' is not supported.")])

    def collection(request: Request, kind: str, items: list[dict], limit: int, offset: int) -> dict:
        page = items[offset:offset + limit]
        self_href = str(request.url)
        links = {"self": {"href": self_href}}
        if offset + limit < len(items):
            query = dict(request.query_params)
            query["cursor"] = str(offset + limit)
            links["next"] = {"href": str(request.url.replace(query=urlencode(query)))}
        return {"_links": links, "_embedded": {kind: page}, "count": len(items), "size": len(page)}

    @app.get("/v1/environments/{env_id}/users")
    def list_users(env_id: str, request: Request):
        authorised(request, env_id, USERS_READ)
        limit, offset, text = page_params(request, {"filter", "limit", "cursor"})
        users = list(standin.users.values())
        if text is not None:
            username, group_id = equals(text, "username"), equals(text, "memberOfGroups[id", "]")
            if username is not None:
                users = [u for u in users if u.username.lower() == username.lower()]
            elif group_id is not None:
                group = standin.groups.get(group_id)
                members = set(group.members) if group else set()
                users = [u for u in users if u.id in members]
            else:
                raise bad_filter(text)
        return collection(request, "users", [u.resource(env) for u in users], limit, offset)

    @app.get("/v1/environments/{env_id}/users/{user_id}")
    def read_user(env_id: str, user_id: str, request: Request):
        return guard(request, env_id, user_id, USERS_READ).resource(env)

    @app.get("/v1/environments/{env_id}/groups")
    def list_groups(env_id: str, request: Request):
        authorised(request, env_id, USERS_READ)
        limit, offset, text = page_params(request, {"filter", "limit", "cursor"})
        groups = list(standin.groups.values())
        if text is not None:
            wanted = equals(text, "name")
            if wanted is None:
                raise bad_filter(text)
            groups = [g for g in groups if g.name == wanted]
        return collection(request, "groups", [g.resource(env) for g in groups], limit, offset)

    @app.get("/v1/environments/{env_id}/fido2Policies")
    def list_policies(env_id: str, request: Request):
        authorised(request, env_id, POLICIES_READ)
        page_params(request, set())
        policies = [p.resource(env, base(request)) for p in standin.policies.values()]
        return {"_links": {"self": {"href": str(request.url)}}, "_embedded": {"fido2Policies": policies},
                "count": len(policies), "size": len(policies)}

    @app.get("/v1/environments/{env_id}/fido2Policies/{policy_id}")
    def read_policy(env_id: str, policy_id: str, request: Request):
        authorised(request, env_id, POLICIES_READ)
        policy = standin.policies.get(policy_id)
        if policy is None:
            raise PingRefusal(404, "NOT_FOUND", f"Unable to find FIDO policy with ID '{policy_id}'.")
        return policy.resource(env, base(request))

    app.include_router(signin_router(standin.party_of_user))
    return app

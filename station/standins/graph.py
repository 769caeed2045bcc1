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
The directory side (v1.0, for directory-connected provisioning): "Get user" (`/users/{id |
userPrincipalName}`, `$select`), "List users" (`$top` 1..999), "List groups" (`$filter=displayName
eq '...'`), "List group members" (users and nested groups, 100 a page by default, each page's
`@odata.nextLink` carrying an opaque `$skiptoken`), "user: getMemberGroups" (transitive, body
`{"securityEnabledOnly"}`), and "Get / Update fido2AuthenticationMethodConfiguration"
(`/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/fido2`: state,
isAttestationEnforced, isSelfServiceRegistrationAllowed, keyRestrictions {isEnforced,
enforcementType allow|block, aaGuids}, includeTargets / excludeTargets of targetType group with
id "all_users" or a group id). App-only permissions follow "Microsoft Graph permissions
reference" and each API page's permission table: the token's `roles` are the application
permissions an administrator consented to; a call whose permissions are missing answers 403
`Authorization_RequestDenied` "Insufficient privileges to complete the operation." ("Resolve
Microsoft Graph authorization errors"). A registration the FIDO2 policy does not allow is
refused (400 `invalidRequest`, the reason in the message: Entra's exact wording for these is not
published, ASSUMED). Every response carries `request-id` and echoes the caller's
`client-request-id` ("Microsoft Graph REST API: headers").

The challenge is opaque: base64url of a token only this stand-in can open (user, expiry), as
Entra's is. A delegated admin acting on their own account gets 405 (self-service is not
supported); here a client can be bound to an "acting user" to play that case.
"""

from __future__ import annotations

from fastapi import Request

import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import CollectedClientData
from jwcrypto.common import JWException
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK

from station.standins._common import (
    App,
    CorrelationIds,
    RegistrationRefused,
    RelyingParty,
    Throttle,
    Tokens,
    b64u_decode,
    bearer,
    is_uuid,
    load_roots,
    new_app,
    signin_router,
)

SCOPE = "https://graph.microsoft.com/.default"
RP_ID = "login.microsoft.com"
RP_NAME = "Microsoft"
METHODS = "fido2methods"
ODATA = "#microsoft.graph."
MAX_DISPLAY_NAME = 30


# Application permissions (Graph "permissions reference"); each set is what one kind of call
# accepts, least privileged first (the permission tables of the API pages named).
USER_READ = frozenset({"User.ReadBasic.All", "User.Read.All", "User.ReadWrite.All", "Directory.Read.All",
                       "Directory.ReadWrite.All"})                                     # Get user, List users
GROUP_READ = frozenset({"GroupMember.Read.All", "Group.Read.All", "Group.ReadWrite.All", "Directory.Read.All",
                        "Directory.ReadWrite.All"})                          # List groups, List group members
POLICY_READ = frozenset({"Policy.Read.AuthenticationMethod", "Policy.ReadWrite.AuthenticationMethod"})
POLICY_WRITE = frozenset({"Policy.ReadWrite.AuthenticationMethod"})          # Update fido2AuthenticationMethodConfiguration
METHODS_READ = frozenset({"UserAuthenticationMethod.Read.All", "UserAuthenticationMethod.ReadWrite.All"})
METHODS_WRITE = frozenset({"UserAuthenticationMethod.ReadWrite.All"})         # creationOptions, Create, Delete
DEFAULT_ROLES = ("User.Read.All", "Group.Read.All", "UserAuthenticationMethod.ReadWrite.All",
                 "Policy.Read.AuthenticationMethod")
"""HID's documented permissions (Group.Read.All, User.Read.All, UserAuthenticationMethod.ReadWrite.All)
and the policy read the pre-flight needs."""

POLICY_PATH = "policies/authenticationMethodsPolicy/authenticationMethodConfigurations/fido2"
ALL_USERS = "all_users"
SELECTABLE = {"id", "userPrincipalName", "displayName", "mail", "accountEnabled", "givenName", "surname"}
INSUFFICIENT = "Insufficient privileges to complete the operation."


def default_fido2_policy() -> dict:
    """A tenant whose Passkey (FIDO2) method is enabled for all users, attestation enforced, no
    key restrictions (the example of "Get fido2AuthenticationMethodConfiguration", enabled)."""
    return {
        "@odata.type": ODATA + "fido2AuthenticationMethodConfiguration",
        "id": "Fido2",
        "state": "enabled",
        "isSelfServiceRegistrationAllowed": True,
        "isAttestationEnforced": True,
        "keyRestrictions": {"isEnforced": False, "enforcementType": "block", "aaGuids": []},
        "includeTargets": [{"targetType": "group", "id": ALL_USERS, "isRegistrationRequired": False}],
        "excludeTargets": [],
    }


@dataclass
class GraphGroup:
    id: str
    display_name: str
    members: list[str] = field(default_factory=list)


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
        self.clients: dict[str, App] = {}
        self.acting_user: dict[str, str] = {}
        self.users: dict[str, GraphUser] = {}
        self.groups: dict[str, GraphGroup] = {}
        self.page_size = 100
        self.fido2_policy: dict = default_fido2_policy()
        self._skiptokens: dict[str, tuple[str, int]] = {}
        self.methods: dict[str, list[dict]] = {}
        self.tokens = Tokens(token_lifetime)
        self.throttle = Throttle()
        self.relying_party = RelyingParty(rp_id, RP_NAME, roots=load_roots(list(attestation_roots)),
                                          origins=lambda o: o == f"https://{rp_id}")
        self._challenge_key = JWK.generate(kty="oct", size=256)
        self._lock = threading.Lock()

    def add_client(self, *, acting_user: str | None = None, roles=DEFAULT_ROLES,
                   consented: bool = True) -> tuple[str, str]:
        """A new app registration with a client secret and these application permissions
        (`roles`), admin consent granted or not → (client_id, secret)."""
        client_id, app = new_app(roles, consented)
        self.clients[client_id] = app
        if acting_user:
            self.acting_user[client_id] = acting_user
        return client_id, app.secret

    def add_user(self, upn: str, display_name: str, *, user_id: str | None = None) -> GraphUser:
        user = GraphUser(user_id or str(uuid.uuid4()), upn, display_name)
        self.users[user.id] = user
        return user

    def add_group(self, display_name: str, members=(), *, group_id: str | None = None) -> GraphGroup:
        """A group whose members are the given user or group ids (nested groups count for
        getMemberGroups and the policy's targets, as Entra counts them)."""
        group = GraphGroup(group_id or str(uuid.uuid4()), display_name, list(members))
        self.groups[group.id] = group
        return group

    def find_user(self, key: str) -> GraphUser | None:
        """By object id, or by userPrincipalName (case-insensitive, as Entra compares them)."""
        if key in self.users:
            return self.users[key]
        return next((u for u in self.users.values() if u.upn.lower() == key.lower()), None)

    def member_groups(self, object_id: str) -> set[str]:
        """Every group `object_id` is in, directly or through nested groups."""
        found: set[str] = set()
        frontier = {object_id}
        while frontier:
            parents = {g.id for g in self.groups.values() if frontier & set(g.members)} - found
            found |= parents
            frontier = parents
        return found

    def set_fido2_policy(self, **changes) -> dict:
        """Change the Passkey (FIDO2) policy as an administrator would (the members of Update
        fido2AuthenticationMethodConfiguration, checked as PATCH checks them) → the policy."""
        _policy_patch(changes)
        with self._lock:
            self.fido2_policy = _merged(self.fido2_policy, changes)
            return dict(self.fido2_policy)

    def policy_refusal(self, user: GraphUser, aaguid: str, attested: bool) -> str | None:
        """Why the FIDO2 policy does not allow this user to register this key, or None."""
        policy = self.fido2_policy
        if policy.get("state") != "enabled":
            return "The FIDO2 authentication method is disabled in this tenant's authentication methods policy."
        groups = self.member_groups(user.id) | {ALL_USERS}
        if not any(t.get("id") in groups for t in policy.get("includeTargets") or []):
            return "The FIDO2 authentication method is not enabled for this user by the authentication methods policy."
        if any(t.get("id") in groups for t in policy.get("excludeTargets") or []):
            return "This user is excluded from the FIDO2 authentication method by the authentication methods policy."
        if policy.get("isAttestationEnforced") and not attested:
            return "Attestation is enforced and the authenticator's attestation could not be verified."
        restrictions = policy.get("keyRestrictions") or {}
        if restrictions.get("isEnforced"):
            listed = aaguid.lower() in {str(a).lower() for a in restrictions.get("aaGuids") or []}
            if restrictions.get("enforcementType") == "allow" and not listed:
                return f"The authenticator with AAGUID {aaguid} is not allowed by the key restrictions policy."
            if restrictions.get("enforcementType") == "block" and listed:
                return f"The authenticator with AAGUID {aaguid} is blocked by the key restrictions policy."
        return None

    def members_page(self, group: GraphGroup, offset: int, top: int, select: list[str], base: str) -> dict:
        members = group.members[offset:offset + top]
        value = []
        for member in members:
            if member in self.users:
                value.append({"@odata.type": ODATA + "user", **_user_json(self.users[member], select)})
            elif member in self.groups:
                value.append({"@odata.type": ODATA + "group", "id": member,
                              "displayName": self.groups[member].display_name})
        body: dict = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects", "value": value}
        if offset + top < len(group.members):
            token = secrets.token_urlsafe(16)
            with self._lock:
                self._skiptokens[token] = (group.id, offset + top)
            query = {"$select": ",".join(select)} if select else {}
            query.update({"$top": str(top), "$skiptoken": token})
            body["@odata.nextLink"] = f"{base}/v1.0/groups/{group.id}/members?{urlencode(query, safe='$,')}"
        return body

    def skiptoken(self, group_id: str, token: str) -> int:
        with self._lock:
            found = self._skiptokens.pop(token, None)
        if found is None or found[0] != group_id:
            raise GraphRefusal(400, "Directory_ExpiredPageToken", "The specified page token value has expired "
                               "and can no longer be included in your request.")
        return found[1]

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
        problem = self.policy_refusal(user, stored.aaguid, stored.attested and stored.attestation_fmt != "none")
        if problem:
            self.relying_party.forget(user.id, stored.credential_id)
            raise GraphRefusal(400, "invalidRequest", problem)
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


_POLICY_MEMBERS = {"@odata.type", "id", "state", "isSelfServiceRegistrationAllowed", "isAttestationEnforced",
                   "keyRestrictions", "includeTargets", "excludeTargets"}
_RESTRICTION_MEMBERS = {"@odata.type", "isEnforced", "enforcementType", "aaGuids"}
_TARGET_MEMBERS = {"@odata.type", "id", "targetType", "isRegistrationRequired"}


def _no_such_property(name: str, type_name: str) -> GraphRefusal:
    return GraphRefusal(400, "BadRequest", f"The property '{name}' does not exist on type 'microsoft.graph.{type_name}'. "
                        "Make sure to only use property names that are defined by the type or mark the type as open type.")


def _policy_patch(body) -> None:
    """The members of an Update fido2AuthenticationMethodConfiguration body, typed as documented."""
    if not isinstance(body, dict):
        raise GraphRefusal(400, "BadRequest", "The request body must be a JSON object.")
    for key, value in body.items():
        if key not in _POLICY_MEMBERS:
            raise _no_such_property(key, "fido2AuthenticationMethodConfiguration")
        if key == "state" and value not in ("enabled", "disabled"):
            raise GraphRefusal(400, "BadRequest", f"The value '{value}' is not valid for authenticationMethodState.")
        if key in ("isSelfServiceRegistrationAllowed", "isAttestationEnforced") and not isinstance(value, bool):
            raise GraphRefusal(400, "BadRequest", f"{key} must be a Boolean.")
        if key == "keyRestrictions":
            if not isinstance(value, dict):
                raise GraphRefusal(400, "BadRequest", "keyRestrictions must be a fido2KeyRestrictions object.")
            for name in value:
                if name not in _RESTRICTION_MEMBERS:
                    raise _no_such_property(name, "fido2KeyRestrictions")
            if "enforcementType" in value and value["enforcementType"] not in ("allow", "block"):
                raise GraphRefusal(400, "BadRequest", f"The value '{value['enforcementType']}' is not valid for "
                                   "fido2RestrictionEnforcementType.")
            if "isEnforced" in value and not isinstance(value["isEnforced"], bool):
                raise GraphRefusal(400, "BadRequest", "isEnforced must be a Boolean.")
            if "aaGuids" in value and (not isinstance(value["aaGuids"], list)
                                       or not all(isinstance(a, str) and is_uuid(a) for a in value["aaGuids"])):
                raise GraphRefusal(400, "BadRequest", "aaGuids must be a collection of AAGUIDs.")
        if key in ("includeTargets", "excludeTargets"):
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise GraphRefusal(400, "BadRequest", f"{key} must be a collection of targets.")
            for target in value:
                for name in target:
                    if name not in _TARGET_MEMBERS:
                        raise _no_such_property(name, "authenticationMethodTarget")
                if target.get("targetType", "group") != "group" or not isinstance(target.get("id"), str):
                    raise GraphRefusal(400, "BadRequest", f"{key}: each target needs targetType group and an id.")


def _merged(policy: dict, changes: dict) -> dict:
    out = dict(policy)
    for key, value in changes.items():
        if key == "keyRestrictions":
            out[key] = {**(policy.get(key) or {}), **value}
        elif key in ("includeTargets", "excludeTargets"):
            out[key] = [{"targetType": "group", **({"isRegistrationRequired": False} if key == "includeTargets" else {}),
                         **t} for t in value]
        elif key not in ("@odata.type", "id"):
            out[key] = value
    return out


def _user_json(user: GraphUser, select: list[str]) -> dict:
    full = {"id": user.id, "userPrincipalName": user.upn, "displayName": user.display_name,
            "mail": user.upn, "accountEnabled": True, "givenName": user.display_name.split(" ")[0],
            "surname": user.display_name.split(" ")[-1]}
    if not select:
        return full
    return {k: full[k] for k in select}


def create_app(standin: GraphStandin):
    """The Graph API (`/beta/...`) and the token endpoint (`/{tenant}/oauth2/v2.0/token`) in one
    app: the demo points both `--graph-url` and `--login-url` at it."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="Microsoft Graph stand-in", docs_url=None, redoc_url=None, openapi_url=None)

    app.add_middleware(CorrelationIds, own="request-id", echo="client-request-id")

    def graph_error(status: int, code: str, message: str, request: Request | None = None, headers=None):
        request_id = getattr(request.state, "request_id", None) if request else None
        request_id = request_id or str(uuid.uuid4())
        inner = {"date": _rfc3339(time.time()), "request-id": request_id,
                 "client-request-id": (request.headers.get("client-request-id") if request else None) or request_id}
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
        app_registration = standin.clients[client_id]
        if not secrets.compare_digest(form.get("client_secret", ""), app_registration.secret):
            return token_error(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                               "being sent in the request is the client secret value, not the client secret ID, "
                               f"for a secret added to app '{client_id}'.")
        if form.get("scope") != SCOPE:
            return token_error(400, "invalid_scope", 1002012, "The provided value for scope is not valid. "
                               "Client credential flows must have a scope value with /.default suffixed.")
        # Without admin consent the token is still issued, with no roles ("client credentials
        # flow": app-only tokens can be issued without a roles claim); Graph then answers 403.
        access, expires_in = standin.tokens.issue(client_id, app_registration.granted())
        return {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": access}

    def caller(request: Request, *needs: frozenset) -> str:
        """The calling app, after throttling, the token and the permissions: each of `needs` is a
        set of application permissions of which the token must hold one."""
        retry = standin.throttle.take()
        if retry is not None:
            raise GraphRefusal(429, "TooManyRequests", "Too many requests. Retry after the time in Retry-After.",
                               {"Retry-After": str(retry)})
        token = bearer(request.headers.get("authorization"))
        client, why = standin.tokens.check(token)
        if client is None:
            message = {"missing": "Access token is empty.", "expired": "Lifetime validation failed, the token is expired.",
                       "unknown": "Invalid JWT token. The token is malformed or not issued by this tenant."}[why]
            raise GraphRefusal(401, "InvalidAuthenticationToken", message)
        roles = standin.tokens.roles(token)
        if any(not (roles & need) for need in needs):
            raise GraphRefusal(403, "Authorization_RequestDenied", INSUFFICIENT)
        return client

    def query(request: Request, allowed: set[str]) -> dict[str, str]:
        """The OData system query options of the request, only those `allowed` (others: 400)."""
        options = {}
        for key, value in request.query_params.multi_items():
            if key.startswith("$") and key not in allowed:
                raise GraphRefusal(400, "Request_BadRequest", f"Query option '{key}' is not supported on this resource.")
            options[key] = value
        return options

    def selected(options: dict) -> list[str]:
        names = [n.strip() for n in options.get("$select", "").split(",") if n.strip()]
        for name in names:
            if name not in SELECTABLE:
                raise GraphRefusal(400, "Request_BadRequest", "Parsing OData Select and Expand failed: Could not "
                                   f"find a property named '{name}' on type 'microsoft.graph.user'.")
        return names

    def page_size(options: dict) -> int:
        raw = options.get("$top")
        if raw is None:
            return standin.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= 999:
            raise GraphRefusal(400, "Request_BadRequest", f"Invalid page size specified: '{raw}'. Must be between "
                               "1 and 999 inclusive.")
        return int(raw)

    def not_found(key: str) -> GraphRefusal:
        return GraphRefusal(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist or one of its queried "
                            "reference-property objects are not present.")

    base = lambda request: str(request.base_url).rstrip("/")  # noqa: E731

    async def json_body(request: Request):
        """The JSON body of a POST or PATCH: application/json only (415 otherwise)."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise GraphRefusal(415, "BadRequest", "Content-Type must be application/json.")
        try:
            return json.loads(await request.body())
        except ValueError:
            raise GraphRefusal(400, "BadRequest", "The request body is not valid JSON.") from None

    for version in ("/v1.0", "/beta"):
        @app.get(version + "/users")
        def list_users(request: Request):
            caller(request, USER_READ)
            options = query(request, {"$select", "$top"})
            top, select = page_size(options), selected(options)
            users = list(standin.users.values())[:top]
            return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
                    "value": [_user_json(u, select) for u in users]}

        @app.get(version + "/users/{key}")
        def get_user(key: str, request: Request):
            caller(request, USER_READ)
            select = selected(query(request, {"$select"}))
            user = standin.find_user(key)
            if user is None:
                raise not_found(key)
            return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity", **_user_json(user, select)}

        @app.post(version + "/users/{key}/getMemberGroups")
        async def get_member_groups(key: str, request: Request):
            caller(request, USER_READ, GROUP_READ)
            user = standin.find_user(key)
            if user is None:
                raise not_found(key)
            body = await json_body(request)
            if not isinstance(body, dict) or not isinstance(body.get("securityEnabledOnly"), bool):
                raise GraphRefusal(400, "BadRequest", "securityEnabledOnly is required (a Boolean).")
            for name in body:
                if name != "securityEnabledOnly":
                    raise GraphRefusal(400, "BadRequest", f"The parameter '{name}' in the request payload is not a "
                                       "valid parameter for the operation 'getMemberGroups'.")
            return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
                    "value": sorted(standin.member_groups(user.id))}

        @app.get(version + "/groups")
        def list_groups(request: Request):
            caller(request, GROUP_READ)
            options = query(request, {"$filter", "$select", "$top"})
            groups = list(standin.groups.values())
            if "$filter" in options:
                match = re.fullmatch(r"\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*", options["$filter"])
                if match is None:
                    raise GraphRefusal(400, "Request_UnsupportedQuery", "Unsupported Query.")
                wanted = match.group(1).replace("''", "'").casefold()
                groups = [g for g in groups if g.display_name.casefold() == wanted]
            for name in [n.strip() for n in options.get("$select", "").split(",") if n.strip()]:
                if name not in ("id", "displayName"):
                    raise GraphRefusal(400, "Request_BadRequest", "Parsing OData Select and Expand failed: Could not "
                                       f"find a property named '{name}' on type 'microsoft.graph.group'.")
            return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#groups",
                    "value": [{"id": g.id, "displayName": g.display_name} for g in groups[:page_size(options)]]}

        @app.get(version + "/groups/{group_id}/members")
        def group_members(group_id: str, request: Request):
            caller(request, GROUP_READ)
            options = query(request, {"$select", "$top", "$skiptoken"})
            group = standin.groups.get(group_id)
            if group is None:
                raise not_found(group_id)
            offset = standin.skiptoken(group_id, options["$skiptoken"]) if "$skiptoken" in options else 0
            return standin.members_page(group, offset, page_size(options), selected(options), base(request))

        @app.get(f"{version}/{POLICY_PATH}")
        def get_policy(request: Request):
            caller(request, POLICY_READ)
            query(request, set())
            return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/authenticationMethodsPolicy/"
                                      "authenticationMethodConfigurations/$entity", **standin.fido2_policy}

        @app.patch(f"{version}/{POLICY_PATH}")
        async def patch_policy(request: Request):
            caller(request, POLICY_WRITE)
            body = await json_body(request)
            standin.set_fido2_policy(**body) if isinstance(body, dict) else _policy_patch(body)
            return Response(status_code=204)

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
        writes = "creationoptions" in rest.lower()
        client = caller(request, METHODS_WRITE if writes else METHODS_READ)
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
        client = caller(request, METHODS_WRITE)
        user = target(client, user_id)
        _kind, argument = method_path(rest)
        if argument is not None:
            raise GraphRefusal(405, "Request_BadRequest", "The HTTP method is not allowed on this resource.")
        return JSONResponse(standin.register(user, await json_body(request)), status_code=201)

    @app.delete("/beta/users/{user_id}/authentication/{rest:path}")
    def delete(user_id: str, rest: str, request: Request):
        client = caller(request, METHODS_WRITE)
        user = target(client, user_id)
        _kind, argument = method_path(rest)
        if argument is None:
            raise GraphRefusal(405, "Request_BadRequest", "The HTTP method is not allowed on this resource.")
        standin.delete(user, argument)
        return Response(status_code=204)

    app.include_router(signin_router(lambda user_id: standin.relying_party if user_id in standin.users else None))
    return app

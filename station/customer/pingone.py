"""An HTTP client of PingOne's MFA devices API (FIDO2) with a worker-app token.

- Token: client credentials with Client Secret Post (`client_id` and `client_secret` in the form)
  from `{auth}/{envId}/as/token`, cached until shortly before `expires_in`, fetched again after 401.
- `create_fido2_device(user, rp_id, rp_name, policy_id)`: `POST /v1/environments/{envId}/users/
  {userId}/devices {"type": "FIDO2", "rp", "policy"}` → the device (`status`
  ACTIVATION_REQUIRED) and its `publicKeyCredentialCreationOptions` normalised by
  `normalise_creation_options` into PROTOCOL.md §2.2's PublicKeyCredentialCreationOptionsJSON.
- `activate_fido2_device(user, device, origin, credential)`: `POST .../devices/{deviceId}` with
  content type `application/vnd.pingidentity.device.activate+json` and `{"origin", "attestation"}`,
  the attestation being `attestation_json(credential)`.
- `list_devices`, `delete_device`.
- The directory: `verify()` (a token and `GET /users?limit=1`), `get_user(id | username)`,
  `group_members(name)` (`filter=memberOfGroups[id eq "..."]`, every `_links.next` followed,
  only to PingOne's own host), `fido_policy(id | None)` (the given FIDO policy or the default).
- Every call sends a fresh `client-request-id`; `last_correlation_id` is PingOne's
  `Correlation-Id` of the last answer.

PingOne's error object `{id, code, message, details[{code, target, message}]}` becomes
`PingOneError`; 429 (REQUEST_LIMITED) becomes `PingOneThrottled` once the Retry-After waits
allowed are used; 403 (a role the worker app lacks) becomes `PingOneForbidden`.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
from fido2.utils import websafe_decode, websafe_encode
from pydantic import BaseModel, Field

from station.customer.http import (
    Correlation,
    Forbidden,
    ProviderClient,
    ProviderError,
    Throttled,
    checked,
    provider_refusal,
)
from station.customer.settings import CustomerConfigError, PingOneSettings

ACTIVATE_CONTENT_TYPE = "application/vnd.pingidentity.device.activate+json"


class Device(BaseModel):
    """What the connector reads of a PingOne device."""

    id: str
    status: str


class _Embedded(BaseModel):
    devices: list[dict]


class _DeviceList(BaseModel):
    embedded: _Embedded = Field(alias="_embedded")


class PingOneError(ProviderError):
    code = "pingone_error"


class PingOneForbidden(PingOneError, Forbidden):
    """403 ACCESS_FAILED: the worker app lacks a role this call needs (Identity Data Admin for
    users, groups and devices; Environment Admin for FIDO policies)."""

    code = "pingone_forbidden"


class _PingUser(BaseModel):
    id: str
    username: str | None = None


class _FidoPolicy(BaseModel):
    id: str
    name: str | None = None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class PingOneThrottled(Throttled):
    code = "pingone_throttled"


class OptionsUnreadable(PingOneError):
    """`publicKeyCredentialCreationOptions` is not the JSON PingOne documents."""

    code = "pingone_options"


def _bytes(value: Any, name: str) -> bytes:
    """A PingOne binary member: an array of (signed or unsigned) bytes, or a base64url string."""
    if isinstance(value, list):
        if not all(isinstance(b, int) and not isinstance(b, bool) and -128 <= b <= 255 for b in value):
            raise OptionsUnreadable(f"publicKeyCredentialCreationOptions: {name} holds a value that is not a byte")
        return bytes(b & 0xFF for b in value)
    if isinstance(value, str):
        try:
            return websafe_decode(value)
        except ValueError:
            raise OptionsUnreadable(f"publicKeyCredentialCreationOptions: {name} is not base64url") from None
    raise OptionsUnreadable(f"publicKeyCredentialCreationOptions: {name} is neither a byte array nor base64url")


def _alg(value: Any) -> int:
    try:
        alg = int(value)
    except (TypeError, ValueError):
        raise OptionsUnreadable(f"publicKeyCredentialCreationOptions: alg {value!r} is not a COSE algorithm") from None
    if isinstance(value, bool) or str(alg) != str(value).strip():
        raise OptionsUnreadable(f"publicKeyCredentialCreationOptions: alg {value!r} is not a COSE algorithm")
    return alg


def normalise_creation_options(text: str | dict) -> dict:
    """PingOne's options (a JSON string; `challenge`, `user.id` and credential ids as signed byte
    arrays; `alg` as strings) → WebAuthn Level 3 PublicKeyCredentialCreationOptionsJSON
    (base64url binaries, integer algs). Members are kept otherwise as they are."""
    try:
        options = json.loads(text) if isinstance(text, str) else dict(text)
    except ValueError:
        raise OptionsUnreadable("publicKeyCredentialCreationOptions is not a JSON string") from None
    if not isinstance(options, dict) or not isinstance(options.get("user"), dict) \
            or not isinstance(options.get("rp"), dict) or not isinstance(options.get("pubKeyCredParams"), list):
        raise OptionsUnreadable("publicKeyCredentialCreationOptions needs rp, user, challenge and pubKeyCredParams")
    out = dict(options)
    out["challenge"] = websafe_encode(_bytes(options.get("challenge"), "challenge"))
    out["user"] = {**options["user"], "id": websafe_encode(_bytes(options["user"].get("id"), "user.id"))}
    out["pubKeyCredParams"] = [{**p, "alg": _alg(p.get("alg"))} for p in options["pubKeyCredParams"]
                               if isinstance(p, dict)]
    if "excludeCredentials" in options:
        out["excludeCredentials"] = [{**d, "id": websafe_encode(_bytes(d.get("id"), "excludeCredentials.id"))}
                                     for d in options["excludeCredentials"] or [] if isinstance(d, dict)]
    return out


def attestation_json(credential: dict) -> str:
    """A RegistrationResponseJSON as PingOne's `attestation` string: the browser's credential
    with rawId, clientDataJSON and attestationObject in standard base64 (`id` stays base64url)."""
    def std(value: str) -> str:
        return base64.b64encode(websafe_decode(value)).decode("ascii")

    response = credential["response"]
    body = {
        "id": credential["id"],
        "type": "public-key",
        "rawId": std(credential.get("rawId", credential["id"])),
        "response": {"clientDataJSON": std(response["clientDataJSON"]),
                     "attestationObject": std(response["attestationObject"])},
        "clientExtensionResults": dict(credential.get("clientExtensionResults") or {}),
    }
    return json.dumps(body, separators=(",", ":"))


def _read_ping_error(body) -> tuple[str, str, list[str], str | None] | None:
    if not isinstance(body, dict) or "code" not in body:
        return None
    details = [f"{d.get('target', '')}: {d.get('message', '')}".lstrip(": ")
               for d in body.get("details") or [] if isinstance(d, dict)]
    return str(body.get("code")), str(body.get("message", "")), details, None


def _ping_error(response: httpx.Response, what: str) -> PingOneError:
    return provider_refusal(response, what, name="PingOne", error=PingOneError, read=_read_ping_error,
                            classes={403: PingOneForbidden})


def _filter_string(value: str) -> str:
    """A SCIM filter string literal (RFC 7644 §3.4.2.2, as PingOne's `filter` takes it)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: What enrollment reads of a user ("Users", PingOne Platform API): the name, email, phones and
#: the address (streetAddress, locality, region, postalCode, countryCode: ISO 3166-1 alpha-2).
ADDRESS_MEMBERS = ("streetAddress", "locality", "region", "postalCode", "countryCode")


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _person(body: dict) -> dict:
    """{"id", "username", "displayName", "name": {"given", "family"}, "email", "mobilePhone",
    "primaryPhone", "address": {ADDRESS_MEMBERS} | None} (PingOne leaves unset attributes out:
    they are None here)."""
    name = body.get("name") if isinstance(body.get("name"), dict) else {}
    formatted = name.get("formatted") or " ".join(p for p in (name.get("given"), name.get("family")) if p)
    address = body.get("address") if isinstance(body.get("address"), dict) else {}
    address = {k: _text(address.get(k)) for k in ADDRESS_MEMBERS}
    return {"id": body.get("id"), "username": body.get("username"), "displayName": formatted or body.get("username"),
            "name": {"given": _text(name.get("given")), "family": _text(name.get("family"))},
            "email": _text(body.get("email")), "mobilePhone": _text(body.get("mobilePhone")),
            "primaryPhone": _text(body.get("primaryPhone")),
            "address": address if any(address.values()) else None}


class PingOneClient(ProviderClient):
    """PingOne's MFA devices API for one environment and one worker app, and the directory
    reads around it (users, groups, FIDO policies)."""

    def __init__(self, settings: PingOneSettings, *, transport: httpx.BaseTransport | None = None, sleep=None) -> None:
        self._require(settings, ("environment_id", "client_id"))
        self.settings = settings
        env = settings.environment_id
        form = {"grant_type": "client_credentials", "client_id": settings.client_id, "client_secret": settings.secret()}
        # PingOne answers every call with a Correlation-Id response header (ASSUMED from its
        # support articles: the platform's error id is in the body, `id`).
        self._client_credentials(
            settings, auth_base=settings.auth_base, token_path=f"/{env}/as/token", form=form,
            who="PingOne's auth service", api_base=settings.api_base, name="PingOne",
            throttled=lambda r, wait: PingOneThrottled(
                f"PingOne is limiting this worker app (429 REQUEST_LIMITED); retry after {wait:g} s",
                status=429, provider_code="REQUEST_LIMITED", retry_after=wait),
            correlation=Correlation(("correlation-id",)), transport=transport, sleep=sleep)
        self._prefix = f"/v1/environments/{env}"

    def __repr__(self) -> str:
        return f"PingOneClient({self.settings.api_base!r}, environment {self.settings.environment_id!r})"

    _error = PingOneError
    _refusal = staticmethod(lambda response, what: _ping_error(response, what))

    # -- the directory --------------------------------------------------------------------------------

    def verify(self) -> dict:
        """A worker token, then one user read (`GET /users?limit=1`, Identity Data Admin): the
        check of a new directory configuration. → {"ok": True, "users_readable": N}. Raises
        TokenRefused (401: wrong client id or secret) or PingOneForbidden (403: a role missing)."""
        answer = self._page("/users", "the users read", {"limit": "1"}, "users")
        return {"ok": True, "users_readable": len(answer["_embedded"]["users"])}

    def get_user(self, user: str) -> dict:
        """A user by id (`GET /users/{id}`) or by username (`GET /users?filter=username eq
        "..."`) → `_person`'s dict (names, email, phones, address)."""
        if not user or not user.strip():
            raise ValueError("a user id or username is required")
        user = user.strip()
        if _is_uuid(user):
            body = checked(_PingUser, self._call("GET", f"/users/{user}", f"the read of user {user!r}"),
                           who="PingOne", what="the user read")
            return _person(body)
        found = self._page("/users", f"the search for user {user!r}",
                           {"filter": f"username eq {_filter_string(user)}"}, "users")["_embedded"]["users"]
        if not found:
            raise self._fail(f"no user with username {user!r} in the environment (PingOne admin console → "
                               "Directory → Users)", code="pingone_user_not_found", status=404)
        return _person(found[0])

    def group_members(self, group_name: str) -> list[dict]:
        """The users who are members of the one group with this name (`GET /groups?filter=name
        eq "..."`, then `GET /users?filter=memberOfGroups[id eq "..."]`, every `_links.next`
        page followed) → [`_person`'s dict, ...]."""
        if not group_name or not group_name.strip():
            raise ValueError("a group name is required")
        groups = self._page("/groups", f"the search for group {group_name!r}",
                            {"filter": f"name eq {_filter_string(group_name)}"}, "groups")["_embedded"]["groups"]
        if not groups:
            raise self._fail(f"no group named {group_name!r} in the environment (PingOne admin console → "
                               "Directory → Groups shows its exact name)", code="pingone_group_not_found")
        if len(groups) > 1:
            raise self._fail(f"{len(groups)} groups are named {group_name!r}; rename all but one in the PingOne "
                               "admin console → Directory → Groups, or give the users one by one",
                               code="pingone_group_ambiguous")
        what = f"the members of group {group_name!r}"
        people: list[dict] = []
        path, params = "/users", {"filter": f"memberOfGroups[id eq {_filter_string(groups[0]['id'])}]"}
        while path:
            body = self._page(path, what, params, "users")
            people.extend(_person(u) for u in body["_embedded"]["users"] if isinstance(u, dict))
            link = ((body.get("_links") or {}).get("next") or {}).get("href")
            path, params = (self._same_origin(link, what), None) if link else ("", None)
        return people

    def fido_policy(self, policy_id: str | None = None) -> dict:
        """The FIDO policy `policy_id` (`GET /fido2Policies/{id}`), or the environment's default
        one (`GET /fido2Policies`, the one with `default: true`), as PingOne returns it."""
        if policy_id:
            return checked(_FidoPolicy, self._call("GET", f"/fido2Policies/{policy_id}",
                                                    f"the read of FIDO policy {policy_id}"),
                           who="PingOne", what="the FIDO policy read")
        policies = self._page("/fido2Policies", "the FIDO policies list", None, "fido2Policies")
        defaults = [p for p in policies["_embedded"]["fido2Policies"] if isinstance(p, dict) and p.get("default")]
        if not defaults:
            raise self._fail("the environment has no default FIDO policy (PingOne admin console → "
                               "Authentication → FIDO: mark one as default, or configure the policy id)",
                               code="pingone_no_fido_policy")
        return checked(_FidoPolicy, defaults[0], who="PingOne", what="the FIDO policies list")

    def _page(self, path: str, what: str, params: dict | None, kind: str) -> dict:
        body = self._call("GET", path, what, params=params)
        embedded = body.get("_embedded") if isinstance(body, dict) else None
        if not isinstance(embedded, dict) or not isinstance(embedded.get(kind, []), list):
            raise self._fail(f"PingOne answered {what} without _embedded.{kind}", code="idp_unexpected_answer")
        embedded.setdefault(kind, [])
        return body

    # -- MFA devices ----------------------------------------------------------------------------------

    def create_fido2_device(self, user_id: str, *, rp_id: str | None = None, rp_name: str | None = None,
                            policy_id: str | None = None, nickname: str | None = None) -> tuple[dict, dict]:
        """→ (the device, its creation options as PublicKeyCredentialCreationOptionsJSON)."""
        rp_id = rp_id or self.settings.rp_id
        policy_id = policy_id or self.settings.policy_id
        if not rp_id or not policy_id:
            raise CustomerConfigError("a FIDO2 device needs [pingone] rp_id and policy_id")
        body: dict[str, Any] = {"type": "FIDO2", "rp": {"id": rp_id, "name": rp_name or self.settings.rp_name or rp_id},
                                "policy": {"id": policy_id}}
        if nickname:
            body["nickname"] = nickname
        device = checked(Device, self._call("POST", f"/users/{user_id}/devices", "the FIDO2 device create",
                                            expect=201, json=body), who="PingOne", what="the FIDO2 device create")
        if device.get("status") != "ACTIVATION_REQUIRED" or "publicKeyCredentialCreationOptions" not in device:
            raise PingOneError(f"PingOne created device {device.get('id')} in status {device.get('status')} "
                               "without creation options")
        return device, normalise_creation_options(device["publicKeyCredentialCreationOptions"])

    def activate_fido2_device(self, user_id: str, device_id: str, *, origin: str, credential: dict) -> dict:
        """→ the device, now ACTIVE."""
        return checked(Device, self._call("POST", f"/users/{user_id}/devices/{device_id}", "the FIDO2 activation",
                                          content=json.dumps({"origin": origin, "attestation": attestation_json(credential)}),
                                          headers={"Content-Type": ACTIVATE_CONTENT_TYPE}),
                       who="PingOne", what="the FIDO2 activation")

    def list_devices(self, user_id: str) -> list[dict]:
        answer = checked(_DeviceList, self._call("GET", f"/users/{user_id}/devices", "the devices list"),
                         who="PingOne", what="the devices list")
        return answer["_embedded"]["devices"]

    def delete_device(self, user_id: str, device_id: str) -> None:
        self._call("DELETE", f"/users/{user_id}/devices/{device_id}", "the device delete", expect=204)

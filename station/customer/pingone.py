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

PingOne's error object `{id, code, message, details[{code, target, message}]}` becomes
`PingOneError`; 429 (REQUEST_LIMITED) becomes `PingOneThrottled` once the Retry-After waits
allowed are used.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import httpx
from fido2.utils import websafe_decode, websafe_encode
from pydantic import BaseModel, Field

from station.customer.http import (
    ProviderClient,
    ProviderError,
    ProviderHttp,
    Throttled,
    TokenCache,
    checked,
    client_credentials_token,
    json_or_none,
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
    return json.dumps({
        "id": credential["id"],
        "type": "public-key",
        "rawId": std(credential.get("rawId", credential["id"])),
        "response": {"clientDataJSON": std(response["clientDataJSON"]),
                     "attestationObject": std(response["attestationObject"])},
        "clientExtensionResults": dict(credential.get("clientExtensionResults") or {}),
    }, separators=(",", ":"))


def _ping_error(response: httpx.Response, what: str) -> PingOneError:
    body = json_or_none(response)
    if not isinstance(body, dict) or "code" not in body:
        return PingOneError(f"PingOne answered {what} with HTTP {response.status_code} and no error object",
                            status=response.status_code)
    details = [f"{d.get('target', '')}: {d.get('message', '')}".lstrip(": ")
               for d in body.get("details") or [] if isinstance(d, dict)]
    message = f"PingOne refused {what}: {body.get('code')}: {body.get('message', '')}"
    if details:
        message += " (" + "; ".join(details) + ")"
    return PingOneError(message, status=response.status_code, provider_code=body.get("code"), details=details)


class PingOneClient(ProviderClient):
    """PingOne's MFA devices API for one environment and one worker app."""

    def __init__(self, settings: PingOneSettings, *, transport: httpx.BaseTransport | None = None, sleep=None) -> None:
        missing = [n for n in ("environment_id", "client_id") if getattr(settings, n) is None]
        if missing:
            raise CustomerConfigError(f"missing pingone setting {', '.join(missing)} "
                                      f"(STATION_PINGONE_{missing[0].upper()} or [pingone] {missing[0]})")
        self.settings = settings
        env = settings.environment_id
        secret = settings.secret()
        self._auth = httpx.Client(base_url=settings.auth_base, timeout=settings.timeout, transport=transport)

        form = {"grant_type": "client_credentials", "client_id": settings.client_id, "client_secret": secret}
        self._closables = (self._auth,)
        fetch = functools.partial(client_credentials_token, self._auth, f"/{env}/as/token", form,
                                  who="PingOne's auth service")
        self.tokens = TokenCache(fetch)
        extra = {"sleep": sleep} if sleep is not None else {}
        self._http = ProviderHttp(
            settings.api_base, name="PingOne", timeout=settings.timeout, max_retries=settings.max_retries,
            max_retry_wait=settings.max_retry_wait, tokens=self.tokens, transport=transport,
            throttled=lambda r, wait: PingOneThrottled(
                f"PingOne is limiting this worker app (429 REQUEST_LIMITED); retry after {wait:g} s",
                status=429, provider_code="REQUEST_LIMITED", retry_after=wait),
            **extra,
        )
        self._prefix = f"/v1/environments/{env}"

    def __repr__(self) -> str:
        return f"PingOneClient({self.settings.api_base!r}, environment {self.settings.environment_id!r})"

    _refusal = staticmethod(lambda response, what: _ping_error(response, what))

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

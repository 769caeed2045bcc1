"""An HTTP client of Microsoft Graph's FIDO2 provisioning (beta) with an app-only token.

- Token: OAuth2 client credentials from `{login}/{tenant}/oauth2/v2.0/token` (form `client_id`,
  `client_secret`, `scope=https://graph.microsoft.com/.default`, `grant_type=client_credentials`),
  cached until shortly before `expires_in`, fetched again after a 401.
- `creation_options(user, minutes)`: `GET /beta/users/{id}/authentication/fido2Methods/
  creationOptions(challengeTimeoutInMinutes=N)`, N in 5..43200 (v1.0 fixes 5 minutes: too short
  for a key that has to be made and shipped).
- `register(user, display_name, credential)`: `POST /beta/users/{id}/authentication/fido2Methods`
  with exactly `{displayName, publicKeyCredential: {id, response: {clientDataJSON,
  attestationObject}, clientExtensionResults}}`, whatever else the RegistrationResponseJSON holds.
- `list_methods`, `delete_method`: the user's fido2Methods.

Graph's error object `{"error": {"code", "message", "innerError"}}` becomes `GraphError`; 429
becomes `GraphThrottled` once the Retry-After waits allowed are used; 405 (an administrator
provisioning their own account: self-service is not supported) is `SelfServiceNotSupported`.
"""

from __future__ import annotations

import functools

from pydantic import BaseModel

import httpx

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
from station.customer.settings import GraphSettings

SCOPE = "https://graph.microsoft.com/.default"
MAX_DISPLAY_NAME = 30
MIN_TIMEOUT, MAX_TIMEOUT = 5, 43200


class _Rp(BaseModel):
    id: str


class _PublicKey(BaseModel):
    rp: _Rp
    challenge: str


class WebauthnCredentialCreationOptions(BaseModel):
    """What the connector reads of creationOptions."""

    challengeTimeoutDateTime: str
    publicKey: _PublicKey


class Fido2AuthenticationMethod(BaseModel):
    id: str
    displayName: str


class _MethodList(BaseModel):
    value: list[dict]


class GraphError(ProviderError):
    code = "graph_error"


class GraphThrottled(Throttled):
    code = "graph_throttled"


class SelfServiceNotSupported(GraphError):
    """405: the signed-in administrator targeted their own account; Graph's FIDO2 provisioning
    does not do self-service. Use another administrator, or app-only credentials."""

    code = "graph_self_service"


def display_name(serial: str | None, model: str = "Security key") -> str:
    """The method's displayName: the model and the key's serial, at most 30 characters (Graph's
    limit in practice), the serial always kept whole."""
    if not serial:
        return model[:MAX_DISPLAY_NAME]
    room = MAX_DISPLAY_NAME - len(serial) - 1
    return f"{model[:room].rstrip()} {serial}" if room > 0 else serial[-MAX_DISPLAY_NAME:]


def fido2_method_body(name: str, credential: dict) -> dict:
    """The documented members of a fido2Methods create, taken from a RegistrationResponseJSON."""
    if len(name) > MAX_DISPLAY_NAME:
        raise ValueError(f"displayName is at most {MAX_DISPLAY_NAME} characters")
    response = credential["response"]
    return {
        "displayName": name,
        "publicKeyCredential": {
            "id": credential["id"],
            "response": {"clientDataJSON": response["clientDataJSON"], "attestationObject": response["attestationObject"]},
            "clientExtensionResults": dict(credential.get("clientExtensionResults") or {}),
        },
    }


def _graph_error(response: httpx.Response, what: str) -> GraphError:
    body = json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return GraphError(f"Graph answered {what} with HTTP {response.status_code} and no error object",
                          status=response.status_code)
    request_id = (error.get("innerError") or {}).get("request-id")
    message = f"Graph refused {what}: {error.get('code')}: {error.get('message', '')}"
    if request_id:
        message += f" (request-id {request_id})"
    cls = SelfServiceNotSupported if response.status_code == 405 else GraphError
    return cls(message, status=response.status_code, provider_code=error.get("code"))


class GraphClient(ProviderClient):
    """Graph's FIDO2 provisioning for one tenant and one app registration."""

    def __init__(self, settings: GraphSettings, *, transport: httpx.BaseTransport | None = None, sleep=None) -> None:
        missing = [n for n in ("tenant_id", "client_id") if getattr(settings, n) is None]
        if missing:
            from station.customer.settings import CustomerConfigError

            raise CustomerConfigError(f"missing graph setting {', '.join(missing)} "
                                      f"(STATION_GRAPH_{missing[0].upper()} or [graph] {missing[0]})")
        self.settings = settings
        secret = settings.secret()
        self._login = httpx.Client(base_url=settings.login_url, timeout=settings.timeout, transport=transport)

        form = {"client_id": settings.client_id, "client_secret": secret, "scope": SCOPE,
                "grant_type": "client_credentials"}
        self._closables = (self._login,)
        fetch = functools.partial(client_credentials_token, self._login, f"/{settings.tenant_id}/oauth2/v2.0/token",
                                  form, who="the Microsoft identity platform", default_lifetime=3599)
        self.tokens = TokenCache(fetch)
        extra = {"sleep": sleep} if sleep is not None else {}
        self._http = ProviderHttp(
            settings.url, name="Graph", timeout=settings.timeout, max_retries=settings.max_retries,
            max_retry_wait=settings.max_retry_wait, tokens=self.tokens, transport=transport,
            throttled=lambda r, wait: GraphThrottled(
                f"Graph is throttling this app (429); retry after {wait:g} s", status=429,
                provider_code="TooManyRequests", retry_after=wait),
            **extra,
        )

    def __repr__(self) -> str:
        return f"GraphClient({self.settings.url!r}, tenant {self.settings.tenant_id!r})"

    _refusal = staticmethod(lambda response, what: _graph_error(response, what))
    _prefix = "/beta"

    def creation_options(self, user_id: str, challenge_timeout_minutes: int | None = None) -> dict:
        """`webauthnCredentialCreationOptions` `{challengeTimeoutDateTime, publicKey}` for the user."""
        minutes = challenge_timeout_minutes or self.settings.challenge_timeout_minutes
        if not MIN_TIMEOUT <= minutes <= MAX_TIMEOUT:
            raise ValueError(f"challengeTimeoutInMinutes is {MIN_TIMEOUT} to {MAX_TIMEOUT}")
        return checked(WebauthnCredentialCreationOptions, self._call(
            "GET", f"/users/{user_id}/authentication/fido2Methods/creationOptions(challengeTimeoutInMinutes={minutes})",
            "creationOptions"), who="Graph", what="creationOptions")

    def register(self, user_id: str, name: str, credential: dict) -> dict:
        """Create the fido2AuthenticationMethod from a RegistrationResponseJSON → the method."""
        return checked(Fido2AuthenticationMethod, self._call(
            "POST", f"/users/{user_id}/authentication/fido2Methods", "the fido2Methods create", expect=201,
            json=fido2_method_body(name, credential)), who="Graph", what="the fido2Methods create")

    def list_methods(self, user_id: str) -> list[dict]:
        return checked(_MethodList, self._call("GET", f"/users/{user_id}/authentication/fido2Methods",
                                               "the fido2Methods list"), who="Graph", what="the fido2Methods list")["value"]

    def delete_method(self, user_id: str, method_id: str) -> None:
        self._call("DELETE", f"/users/{user_id}/authentication/fido2Methods/{method_id}", "the fido2Methods delete",
                   expect=204)

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
- The directory (v1.0), for directory-connected provisioning: `verify()` (a token and `GET
  /users?$top=1`), `get_user(id | userPrincipalName)`, `group_members(displayName)` (every
  `@odata.nextLink` followed, only to Graph's own host), `user_group_ids(id)` (getMemberGroups,
  transitive) and `fido2_policy()` (the Passkey (FIDO2) authentication method configuration).
- Every call sends a fresh `client-request-id`; `last_correlation_id` is Graph's `request-id` of
  the last answer (one client per thread if several threads need their own ids).

Graph's error object `{"error": {"code", "message", "innerError"}}` becomes `GraphError`; 429
becomes `GraphThrottled` once the Retry-After waits allowed are used; 405 (an administrator
provisioning their own account: self-service is not supported) is `SelfServiceNotSupported`;
403 (a missing application permission or admin consent) is `GraphForbidden`.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic import BaseModel

import httpx

from station.customer.http import (
    Correlation,
    Forbidden,
    ProviderClient,
    ProviderError,
    Throttled,
    checked,
    provider_refusal,
)
from station.customer.settings import GraphSettings

SCOPE = "https://graph.microsoft.com/.default"
MAX_DISPLAY_NAME = 30
MIN_TIMEOUT, MAX_TIMEOUT = 5, 43200
FIDO2_POLICY = "/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/fido2"
ODATA_USER = "#microsoft.graph.user"


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


class _Collection(BaseModel):
    value: list[dict]


class _IdList(BaseModel):
    value: list[str]


class _User(BaseModel):
    id: str
    userPrincipalName: str | None = None


class _Fido2Configuration(BaseModel):
    """What the pre-flight reads of fido2AuthenticationMethodConfiguration (Graph v1.0)."""

    state: str
    includeTargets: list[dict] = []


class GraphError(ProviderError):
    code = "graph_error"


class GraphThrottled(Throttled):
    code = "graph_throttled"


class GraphForbidden(GraphError, Forbidden):
    """403 Authorization_RequestDenied: the app registration lacks the application permission
    this call needs, or an administrator has not granted admin consent for it (an app-only
    token then carries no `roles`)."""

    code = "graph_forbidden"


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


def _read_graph_error(body) -> tuple[str, str, list[str], str | None] | None:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    return (str(error.get("code")), str(error.get("message", "")), [],
            (error.get("innerError") or {}).get("request-id"))


def _graph_error(response: httpx.Response, what: str) -> GraphError:
    return provider_refusal(response, what, name="Graph", error=GraphError, read=_read_graph_error,
                            classes={403: GraphForbidden, 405: SelfServiceNotSupported})


def _quote(value: str) -> str:
    """A path segment (an object id or a userPrincipalName) percent-encoded, '@' kept."""
    return quote(value, safe="@")


def _odata_string(value: str) -> str:
    """An OData string literal: single quotes doubled ("OData URL conventions" §5.1.1.6.1)."""
    return "'" + value.replace("'", "''") + "'"


#: What enrollment reads of a user ("user resource type", Graph v1.0): the names, mail and
#: phones (returned by default) and the postal address members, which Graph returns "only on
#: $select" (streetAddress, city, state, postalCode, country, companyName). `country` is a
#: free-form string ("US", "United States"): the service maps it to ISO 3166 alpha-2.
ADDRESS_FIELDS = ("givenName", "surname", "mail", "mobilePhone", "businessPhones", "companyName",
                  "streetAddress", "city", "state", "postalCode", "country")
USER_FIELDS = ",".join(("id", "userPrincipalName", "displayName") + ADDRESS_FIELDS)


def _person(body: dict) -> dict:
    """{"id", "userPrincipalName", "displayName"} and the ADDRESS_FIELDS as Graph gave them
    (None, or [] for businessPhones, where the directory holds nothing)."""
    person = {"id": body.get("id"), "userPrincipalName": body.get("userPrincipalName"),
              "displayName": body.get("displayName")}
    for name in ADDRESS_FIELDS:
        value = body.get(name)
        if name == "businessPhones":
            person[name] = [p for p in value if isinstance(p, str)] if isinstance(value, list) else []
        else:
            person[name] = value if isinstance(value, str) else None
    return person


class GraphClient(ProviderClient):
    """Graph's FIDO2 provisioning for one tenant and one app registration, and the directory
    reads the provider needs around it (users, groups, the FIDO2 method policy)."""

    def __init__(self, settings: GraphSettings, *, transport: httpx.BaseTransport | None = None, sleep=None) -> None:
        self._require(settings, ("tenant_id", "client_id"))
        self.settings = settings
        form = {"client_id": settings.client_id, "client_secret": settings.secret(), "scope": SCOPE,
                "grant_type": "client_credentials"}
        # Graph echoes our client-request-id and adds its own request-id ("Microsoft Graph
        # REST API: headers", response headers); the token endpoint puts correlation_id in its body.
        self._client_credentials(
            settings, auth_base=settings.login_url, token_path=f"/{settings.tenant_id}/oauth2/v2.0/token", form=form,
            who="the Microsoft identity platform", default_lifetime=3599, api_base=settings.url, name="Graph",
            throttled=lambda r, wait: GraphThrottled(
                f"Graph is throttling this app (429); retry after {wait:g} s", status=429,
                provider_code="TooManyRequests", retry_after=wait),
            correlation=Correlation(("request-id", "client-request-id")), transport=transport, sleep=sleep)

    def __repr__(self) -> str:
        return f"GraphClient({self.settings.url!r}, tenant {self.settings.tenant_id!r})"

    _error = GraphError
    _refusal = staticmethod(lambda response, what: _graph_error(response, what))
    _prefix = "/beta"
    _v1 = "/v1.0"

    def creation_options(self, user_id: str, challenge_timeout_minutes: int | None = None) -> dict:
        """`webauthnCredentialCreationOptions` `{challengeTimeoutDateTime, publicKey}` for the user."""
        minutes = challenge_timeout_minutes or self.settings.challenge_timeout_minutes
        if not MIN_TIMEOUT <= minutes <= MAX_TIMEOUT:
            raise ValueError(f"challengeTimeoutInMinutes is {MIN_TIMEOUT} to {MAX_TIMEOUT}")
        return checked(WebauthnCredentialCreationOptions, self._call(
            "GET", f"/users/{_quote(user_id)}/authentication/fido2Methods/creationOptions(challengeTimeoutInMinutes={minutes})",
            "creationOptions"), who="Graph", what="creationOptions")

    def register(self, user_id: str, name: str, credential: dict) -> dict:
        """Create the fido2AuthenticationMethod from a RegistrationResponseJSON → the method."""
        return checked(Fido2AuthenticationMethod, self._call(
            "POST", f"/users/{_quote(user_id)}/authentication/fido2Methods", "the fido2Methods create", expect=201,
            json=fido2_method_body(name, credential)), who="Graph", what="the fido2Methods create")

    def list_methods(self, user_id: str) -> list[dict]:
        return checked(_MethodList, self._call("GET", f"/users/{_quote(user_id)}/authentication/fido2Methods",
                                               "the fido2Methods list"), who="Graph", what="the fido2Methods list")["value"]

    def delete_method(self, user_id: str, method_id: str) -> None:
        self._call("DELETE", f"/users/{_quote(user_id)}/authentication/fido2Methods/{_quote(method_id)}",
                   "the fido2Methods delete", expect=204)

    # -- the directory (v1.0) -----------------------------------------------------------------------

    def verify(self) -> dict:
        """A token, then one user read (`GET /v1.0/users?$top=1`, User.Read.All): the check of
        a new directory configuration. → {"ok": True, "users_readable": N}. Raises TokenRefused
        (wrong tenant, client id or secret: 400/401) or GraphForbidden (403: no application
        permission with admin consent)."""
        answer = checked(_Collection, self._call("GET", "/users", "the users read", prefix=self._v1,
                                                 params={"$top": "1", "$select": "id"}),
                         who="Graph", what="the users read")
        return {"ok": True, "users_readable": len(answer["value"])}

    def get_user(self, user: str) -> dict:
        """A user by object id or userPrincipalName (`GET /v1.0/users/{id | userPrincipalName}`)
        → {"id", "userPrincipalName", "displayName", and the ADDRESS_FIELDS}."""
        if not user or not user.strip():
            raise ValueError("a user id or userPrincipalName is required")
        body = checked(_User, self._call("GET", f"/users/{_quote(user.strip())}", f"the read of user {user!r}",
                                         prefix=self._v1, params={"$select": USER_FIELDS}),
                       who="Graph", what="the user read")
        return _person(body)

    def group_members(self, group_name: str) -> list[dict]:
        """The users who are direct members of the one group with this displayName
        (`GET /v1.0/groups?$filter=displayName eq '...'`, then `/groups/{id}/members`, every
        `@odata.nextLink` page followed; members that are not users, such as devices or nested
        groups, are left out) → [{"id", "userPrincipalName", "displayName", ADDRESS_FIELDS...}]."""
        group = self._one_group(group_name)
        people: list[dict] = []
        page: str = f"/groups/{_quote(group['id'])}/members"
        params: dict | None = {"$select": USER_FIELDS}
        what = f"the members of group {group_name!r}"
        while page:
            body = checked(_Collection, self._call("GET", page, what, prefix=self._v1, params=params),
                           who="Graph", what=what)
            people.extend(_person(m) for m in body["value"]
                          if isinstance(m, dict) and m.get("@odata.type", ODATA_USER) == ODATA_USER)
            link = body.get("@odata.nextLink")
            page, params = (self._same_origin(link, what), None) if link else ("", None)
        return people

    def _one_group(self, group_name: str) -> dict:
        if not group_name or not group_name.strip():
            raise ValueError("a group name is required")
        body = checked(_Collection, self._call(
            "GET", "/groups", f"the search for group {group_name!r}", prefix=self._v1,
            params={"$filter": f"displayName eq {_odata_string(group_name)}", "$select": "id,displayName"}),
            who="Graph", what="the groups search")
        groups = body["value"]
        if not groups:
            raise self._fail(f"no group named {group_name!r} in the tenant (Entra admin center → Groups → "
                             "All groups shows its exact display name)", code="graph_group_not_found")
        if len(groups) > 1:
            raise self._fail(f"{len(groups)} groups are named {group_name!r}; rename all but one in the Entra "
                             "admin center → Groups, or give the users one by one", code="graph_group_ambiguous")
        return groups[0]

    def user_group_ids(self, user_id: str) -> set[str]:
        """The ids of every group the user is a member of, directly or through nested groups
        (`POST /v1.0/users/{id}/getMemberGroups {"securityEnabledOnly": false}`)."""
        body = checked(_IdList, self._call("POST", f"/users/{_quote(user_id)}/getMemberGroups",
                                           f"the groups of user {user_id!r}", prefix=self._v1,
                                           json={"securityEnabledOnly": False}),
                       who="Graph", what="getMemberGroups")
        return set(body["value"])

    def fido2_policy(self) -> dict:
        """The Passkey (FIDO2) authentication method policy as Graph returns it
        (`GET /v1.0/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/fido2`,
        Policy.Read.AuthenticationMethod): state, isAttestationEnforced, keyRestrictions,
        includeTargets, excludeTargets."""
        return checked(_Fido2Configuration, self._call("GET", FIDO2_POLICY, "the FIDO2 method policy read",
                                                       prefix=self._v1),
                       who="Graph", what="the FIDO2 method policy")

"""What the three identity-provider clients share: an httpx client that waits out 429s
(Retry-After) a bounded number of times, an OAuth2 client-credentials token cache with expiry,
and the named errors every provider's refusal becomes.

Secrets (tokens, client secrets) never reach a repr, an exception message or a log.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from station.errors import StationError
from station.tls import client_tls_context


class ProviderError(StationError):
    """A refusal of an identity provider: `status` (HTTP), `provider_code` (the provider's own
    error code: Okta's `E0000001`, Graph's `error.code`, PingOne's `code`), and its message."""

    code = "idp_error"

    def __init__(self, message: str, *, status: int | None = None, provider_code: str | None = None,
                 details: list[str] = (), code: str | None = None, correlation_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.provider_code = provider_code
        self.details = list(details)
        self.correlation_id = correlation_id


class ProviderUnreachable(ProviderError):
    """The provider could not be reached (connection refused, DNS, TLS, time-out)."""

    code = "idp_unreachable"


class Throttled(ProviderError):
    """429 Too Many Requests, still after the retries allowed (or a Retry-After longer than
    `max_retry_wait`): `retry_after` is the wait the provider asked for, in seconds."""

    code = "idp_throttled"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Forbidden(ProviderError):
    """403: the credentials are good but the application lacks a permission (Graph: an
    application permission with admin consent; PingOne: a role of the worker app)."""

    code = "idp_forbidden"


class TokenRefused(ProviderError):
    """The token endpoint refused the client credentials (wrong id or secret, unknown tenant)."""

    code = "idp_token_refused"


@dataclass
class _Token:
    value: str
    expires_at: float


class TokenCache:
    """An access token from `fetch()` → (token, expires_in), reused until `skew` seconds before
    it expires; `invalidate()` after a 401 so the next call fetches a fresh one."""

    def __init__(self, fetch: Callable[[], tuple[str, float]], *, skew: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._skew = skew
        self._clock = clock
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return "TokenCache(******)"

    def get(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._token.expires_at:
                value, expires_in = self._fetch()
                self.fetches += 1
                lifetime = max(float(expires_in) - self._skew, min(float(expires_in), 1.0))
                self._token = _Token(value, self._clock() + lifetime)
            return self._token.value

    def invalidate(self) -> None:
        with self._lock:
            self._token = None


class Correlation:
    """The correlation id of a client's calls: every request carries a fresh `client-request-id`
    (a uuid4; Microsoft Graph documents the header and echoes it, with its own `request-id`,
    in the response: "Microsoft Graph REST API: headers"); after each response `last` is the
    id the provider answered with (the first of `echoes` present: Graph's `request-id`,
    PingOne's `correlation-id`, Okta's `X-Okta-Request-Id`), else the one we sent. The
    service's audit records it."""

    HEADER = "client-request-id"

    def __init__(self, echoes: tuple[str, ...] = ()) -> None:
        self.echoes = echoes
        self.last: str | None = None
        self._sent: str | None = None

    def headers(self) -> dict:
        self._sent = str(uuid.uuid4())
        return {self.HEADER: self._sent}

    def record(self, response: httpx.Response | None) -> str | None:
        found = None
        if response is not None:
            found = next((response.headers[h] for h in self.echoes if response.headers.get(h)), None)
        self.last = found or self._sent
        return self.last


def retry_after_seconds(response: httpx.Response, default: float = 1.0) -> float:
    """Retry-After (seconds), else Okta's X-Rate-Limit-Reset (epoch seconds), else `default`."""
    value = response.headers.get("retry-after")
    if value is not None:
        try:
            return max(float(value), 0.0)
        except ValueError:
            pass
    reset = response.headers.get("x-rate-limit-reset")
    if reset is not None:
        try:
            return max(float(reset) - time.time(), 0.0)
        except ValueError:
            pass
    return default


class ProviderHttp:
    """httpx with the provider's base URL; `call()` answers the response of a non-429 status,
    having waited out up to `max_retries` 429s (none longer than `max_retry_wait`), and
    refreshed the token once after a 401 when `tokens` is given."""

    def __init__(self, base_url: str, *, name: str, timeout: float, max_retries: int, max_retry_wait: float,
                 tokens: TokenCache | None = None, auth_header: Callable[[], dict] | None = None,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep,
                 throttled: Callable[[httpx.Response, float], Throttled] | None = None,
                 correlation: Correlation | None = None) -> None:
        self.name = name
        self.correlation = correlation or Correlation()
        self.http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                 verify=client_tls_context())
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.tokens = tokens
        self._auth_header = auth_header
        self._sleep = sleep
        self._throttled = throttled or (lambda r, wait: Throttled(
            f"{name} is throttling this client (429); retry after {wait:g} s", status=429, retry_after=wait))
        self.waits: list[float] = []

    def __repr__(self) -> str:
        return f"ProviderHttp({self.name}, {str(self.http.base_url)!r})"

    def close(self) -> None:
        self.http.close()

    def headers(self) -> dict:
        if self.tokens is not None:
            return {"Authorization": f"Bearer {self.tokens.get()}"}
        return self._auth_header() if self._auth_header else {}

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        refreshed = False
        attempt = 0
        extra = kw.pop("headers", None) or {}
        while True:
            auth = self.headers()  # may fetch a token first (its own correlation id, recorded on failure)
            try:
                response = self.http.request(method, path, headers={**auth, **self.correlation.headers(), **extra},
                                             **kw)
            except httpx.HTTPError as exc:
                raise ProviderUnreachable(f"{self.name} at {self.http.base_url} cannot be reached "
                                          f"({exc.__class__.__name__})",
                                          correlation_id=self.correlation.record(None)) from None
            self.correlation.record(response)
            if response.status_code == 401 and self.tokens is not None and not refreshed:
                self.tokens.invalidate()  # expired or revoked: one fresh token, then the same call
                refreshed = True
                continue
            if response.status_code != 429:
                return response
            wait = retry_after_seconds(response)
            if attempt >= self.max_retries or wait > self.max_retry_wait:
                error = self._throttled(response, wait)
                error.correlation_id = self.correlation.last
                raise error
            attempt += 1
            self.waits.append(wait)
            self._sleep(wait)


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def client_credentials_token(http: httpx.Client, path: str, form: dict, *, who: str,
                             default_lifetime: float = 3600.0,
                             correlation: Correlation | None = None) -> tuple[str, float]:
    """An OAuth2 client-credentials token from `path` of `http` (a form POST: the client id and
    secret travel in the body, as Entra's and PingOne's Client Secret Post take them)
    → (access_token, expires_in). Raises TokenRefused, never with the secret in it; its
    `correlation_id` is the token endpoint's (Entra's body carries `correlation_id`)."""
    correlation = correlation or Correlation()
    try:
        answer = http.post(path, data=form, headers=correlation.headers())
    except httpx.HTTPError as exc:
        raise TokenRefused(f"{who} at {http.base_url} cannot be reached ({exc.__class__.__name__})",
                           code="idp_unreachable", correlation_id=correlation.record(None)) from None
    correlation.record(answer)
    body = json_or_none(answer)
    if answer.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
        detail = str(body.get("error_description") or "") if isinstance(body, dict) else ""
        if isinstance(body, dict) and isinstance(body.get("correlation_id"), str):
            correlation.last = body["correlation_id"]
        raise TokenRefused(f"{who} refused the client credentials (HTTP {answer.status_code}): "
                           f"{detail.splitlines()[0] if detail else 'no detail'}", status=answer.status_code,
                           provider_code=body.get("error") if isinstance(body, dict) else None,
                           correlation_id=correlation.last)
    return body["access_token"], float(body.get("expires_in", default_lifetime))


class ProviderClient:
    """What the three clients share: `_http` (a ProviderHttp), a path prefix, the other httpx
    clients to close (a token endpoint's), and `_refusal(response, what)` → the named error."""

    _prefix = ""
    _http: ProviderHttp
    _closables: tuple = ()
    _error: type[ProviderError] = ProviderError  # the provider's own error class

    def close(self) -> None:
        self._http.close()
        for other in self._closables:
            other.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def waits(self) -> list[float]:
        """The 429 waits honoured so far (seconds)."""
        return self._http.waits

    @property
    def last_correlation_id(self) -> str | None:
        """The provider's id of the last call (its echoed request or correlation id), else the
        `client-request-id` we sent; None before any call."""
        return self._http.correlation.last

    def _client_credentials(self, settings, *, auth_base: str, token_path: str, form: dict, who: str,
                            api_base: str, name: str, throttled: Callable, correlation: Correlation,
                            transport: httpx.BaseTransport | None, sleep=None,
                            default_lifetime: float | None = None) -> None:
        """The OAuth2 client-credentials wiring Graph and PingOne share: a token endpoint client
        of its own (closed with this one), a TokenCache over it, and `_http` for the API."""
        auth = httpx.Client(base_url=auth_base, timeout=settings.timeout, transport=transport,
                            verify=client_tls_context())
        self._closables = (auth,)
        lifetime = {"default_lifetime": default_lifetime} if default_lifetime is not None else {}
        self.tokens = TokenCache(functools.partial(client_credentials_token, auth, token_path, form, who=who,
                                                   correlation=correlation, **lifetime))
        extra = {"sleep": sleep} if sleep is not None else {}
        self._http = ProviderHttp(
            api_base, name=name, timeout=settings.timeout, max_retries=settings.max_retries,
            max_retry_wait=settings.max_retry_wait, tokens=self.tokens, transport=transport,
            throttled=throttled, correlation=correlation, **extra)

    @staticmethod
    def _require(settings, names: tuple[str, ...]) -> None:
        """Refuse settings that lack one of `names`, naming the variable and the TOML key."""
        missing = [n for n in names if getattr(settings, n) is None]
        if missing:
            from station.customer.settings import CustomerConfigError

            prefix = settings.model_config["env_prefix"]
            raise CustomerConfigError(f"missing {settings.TABLE} setting {', '.join(missing)} "
                                      f"({prefix}{missing[0].upper()} or [{settings.TABLE}] {missing[0]})")

    @staticmethod
    def _refusal(response: httpx.Response, what: str) -> ProviderError:
        raise NotImplementedError

    def _call(self, method: str, path: str, what: str, *, expect: int = 200, prefix: str | None = None,
              **kw: Any) -> Any:
        """`path` under `prefix` (default the client's), or an absolute URL (a next link)."""
        if not path.startswith(("http://", "https://")):
            path = (self._prefix if prefix is None else prefix) + path
        response = self._http.call(method, path, **kw)
        if response.status_code != expect:
            error = self._refusal(response, what)
            error.correlation_id = self.last_correlation_id
            raise error
        if expect == 204:
            return None
        body = json_or_none(response)
        if body is None:
            raise ProviderError(f"{self._http.name} answered {what} with a body that is not JSON",
                                status=response.status_code, code="idp_unexpected_answer",
                                correlation_id=self.last_correlation_id)
        return body

    def _fail(self, message: str, **kw: Any) -> ProviderError:
        """The provider's error for what its answer means (no such group, two of them...),
        with the correlation id of the call that answered."""
        return self._error(message, correlation_id=self.last_correlation_id, **kw)

    def _same_origin(self, link: str, what: str) -> str:
        """A next link the provider returned, only if it points at the provider itself: the
        bearer token is never sent anywhere else."""
        from urllib.parse import urlsplit

        base, other = urlsplit(str(self._http.http.base_url)), urlsplit(link)
        if (other.scheme, other.netloc) != (base.scheme, base.netloc):
            raise self._fail(f"{self._http.name} answered {what} with a next link to another host "
                                f"({other.netloc or 'none'}); not followed", code="idp_unexpected_answer")
        return link


def provider_refusal(response: httpx.Response, what: str, *, name: str, error: type[ProviderError],
                     read: Callable[[Any], tuple[str, str, list[str], str | None] | None],
                     classes: dict[int, type[ProviderError]] | None = None) -> ProviderError:
    """The named error of a refusal: `read(body)` → (provider code, message, details, the
    provider's request id) from the provider's error object, or None when the body is not one."""
    body = json_or_none(response)
    parsed = read(body) if body is not None else None
    cls = (classes or {}).get(response.status_code, error)
    if parsed is None:
        return cls(f"{name} answered {what} with HTTP {response.status_code} and no error object",
                   status=response.status_code)
    code, text, details, request_id = parsed
    message = f"{name} refused {what}: {code}: {text}"
    if details:
        message += " (" + "; ".join(details) + ")"
    if request_id:
        message += f" (request-id {request_id})"
    return cls(message, status=response.status_code, provider_code=code, details=details)


def checked(model, body: Any, *, who: str, what: str) -> Any:
    """`body` validated against the pydantic `model` of what the provider documents (unknown
    members kept, as providers add members); a body of another shape is a ProviderError that
    says which member, never a KeyError later."""
    from pydantic import ValidationError

    try:
        model.model_validate(body)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                          for e in exc.errors(include_input=False, include_url=False)[:3])
        raise ProviderError(f"{who} answered {what} with an unexpected body ({where})",
                            code="idp_unexpected_answer") from None
    return body

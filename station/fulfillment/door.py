"""The service's door under abuse: what every HTTP request passes before the app sees it.

`Door` (an ASGI middleware, outermost) and `server_config` (how uvicorn is started) together:

- **the real peer**: uvicorn's own `X-Forwarded-For` handling is off; the peer is the socket's
  address, unless it is inside an explicit `--trusted-proxy CIDR`, and then the right-most
  address of `X-Forwarded-For` that is not itself a trusted proxy;
- **no token in a query string**: a request with `access_token=`, `token=` (and the like) in its
  query is refused (400 `token_in_query`) before anything else, and no log line shows the query;
- **authentication before the body**: every `/v1/` route needs `Authorization: Bearer`; the token
  is looked up before one byte of the body is read; a refusal before the body closes the
  connection (`Connection: close`), so the unread body is never buffered;
- **failed-token limiting** per peer (`FailedTokenLimit`): past the limit an unknown token is
  answered 429 with Retry-After; a known token is never refused (a station restarting with a
  wrong token cannot lock out the stations behind the same address);
- **per-tenant quotas** on `POST /v1/fpr/shipments` (`TenantQuota`: shipments and bytes per
  minute): 429 `quota_exceeded` with Retry-After, checked before the body is read;
- **the body**: at most `max_body_bytes` (413), read within `body_timeout` seconds (408);
- **access log** (logger `station.access`): peer, method, path without query, status, bytes,
  milliseconds, and the tenant or station name; never a header, never a token;
- **uvicorn** (`server_config`): h11 with a header limit (`max_header_bytes`: a head still
  arriving past it is refused 400 by h11, a complete one 431 by the Door), a deadline for the request head (`head_timeout`: a slowloris connection is
  closed), a connection cap (`max_connections`: past it new requests get 503), keep-alive 5 s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from station.fulfillment.errors import RateLimited

access_log = logging.getLogger("station.access")

#: query parameters that carry a credential in the usual conventions (RFC 6750 §2.3 and others)
TOKEN_QUERY_NAMES = frozenset({"access_token", "token", "bearer", "bearer_token", "api_key", "apikey",
                               "key", "auth", "authorization", "jwt", "id_token"})
SHIPMENTS_PATH = "/v1/fpr/shipments"


@dataclass(frozen=True)
class DoorLimits:
    """The door's limits (`station serve` options of the same names)."""

    max_body_bytes: int = 1024 * 1024
    max_header_bytes: int = 16 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    keep_alive: float = 5.0
    max_connections: int = 200
    trusted_proxies: tuple[str, ...] = ()
    shipments_per_minute: int = 120
    shipment_bytes_per_minute: int = 16 * 1024 * 1024
    docs: bool = False
    networks: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            nets = tuple(ipaddress.ip_network(c, strict=False) for c in self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"--trusted-proxy: {exc}") from None
        object.__setattr__(self, "networks", nets)
        for name in ("max_body_bytes", "max_header_bytes", "max_connections", "shipments_per_minute",
                     "shipment_bytes_per_minute"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("head_timeout", "body_timeout", "keep_alive"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0")


# -- failed tokens and quotas ----------------------------------------------------------------


class FailedTokenLimit:
    """The failed-token limit: at most `limit` unknown bearer tokens per client address within
    any `window` seconds (a sliding window). Once an address reaches it, every *unknown* token it
    presents is answered 429 (`RateLimited`) until its oldest failure leaves the window; a known
    token is always let through, so one misconfigured station never locks out the others behind
    its address. Known tokens are never counted, and a success does not forgive failures. At
    most `max_addresses` addresses are tracked, the least recently failing forgotten first.
    (Tokens are 256-bit random: the limit bounds the noise and the database work of guessing.)"""

    def __init__(self, limit: int, window: float, *, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("the failed-token limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self.clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, address: str) -> None:
        """Raise RateLimited while `address` is at the limit."""
        with self._lock:
            now = self.clock()
            failures = self._recent(address, now)
            if len(failures) >= self.limit:
                wait = max(1, math.ceil(failures[0] + self.window - now))
                raise RateLimited(
                    f"too many unknown bearer tokens from this address: retry in {wait} s",
                    error_data={"retry_after": wait},
                )

    def failed(self, address: str) -> None:
        """Count one unknown token presented by `address`."""
        with self._lock:
            now = self.clock()
            failures = self._recent(address, now)
            failures.append(now)
            self._failures[address] = failures
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)

    def _recent(self, address: str, now: float) -> deque[float]:
        """The failures of `address` still inside the window (an address with none is forgotten)."""
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures


class TenantQuota:
    """Per-tenant shipment quotas over any 60 s: at most `shipments` accepted shipments and
    `max_bytes` bytes of accepted bodies. `check` before the body is read (with its declared
    length), `record` once a shipment was accepted. In memory, per service process."""

    WINDOW = 60.0

    def __init__(self, shipments: int, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.shipments = shipments
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._accepted: dict[Any, deque[tuple[float, int]]] = {}

    def check(self, tenant: Any, incoming: int) -> None:
        """RateLimited (code `quota_exceeded`, with the seconds to wait) when one more shipment of
        `incoming` bytes would pass either quota of `tenant`."""
        with self._lock:
            now = self.clock()
            window = self._window(tenant, now)
            wait = None
            if len(window) >= self.shipments:
                wait = window[0][0] + self.WINDOW - now
            used = sum(size for _, size in window)
            if used + incoming > self.max_bytes:
                freed, at = used, None
                for when, size in window:  # wait until enough of the window's bytes have left it
                    freed -= size
                    if freed + incoming <= self.max_bytes:
                        at = when
                        break
                wait = max(wait or 0, (at + self.WINDOW - now) if at is not None else self.WINDOW)
            if wait is not None:
                seconds = max(1, math.ceil(wait))
                raise RateLimited(
                    f"this tenant's shipment quota ({self.shipments} shipments and {self.max_bytes} bytes "
                    f"a minute) is used up: retry in {seconds} s",
                    code="quota_exceeded", error_data={"retry_after": seconds},
                )

    def record(self, tenant: Any, size: int) -> None:
        with self._lock:
            now = self.clock()
            self._window(tenant, now).append((now, size))

    def _window(self, tenant: Any, now: float) -> deque[tuple[float, int]]:
        window = self._accepted.setdefault(tenant, deque())
        while window and window[0][0] <= now - self.WINDOW:
            window.popleft()
        return window


# -- the middleware --------------------------------------------------------------------------


def peer_address(scope: Scope, networks: tuple) -> tuple[str, str | None]:
    """(the client address the door trusts, the proxy it came through or None)."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not networks or not _in(peer, networks):
        return peer, None
    forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
    hops = [h.strip() for h in ",".join(forwarded).split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # a malformed hop: trust nothing left of it
        if not _in(hop, networks):
            return hop, peer
    return peer, None


def _in(address: str, networks: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


Refusal = Callable[..., Any]


class Door:
    """The ASGI middleware of the module docstring. `authenticate(token)` → principal or None
    (run in a worker thread); `refuse(status, code, message, headers)` → an ASGI response;
    `tenant_of(principal)` → the quota key of a customer principal, None for others."""

    def __init__(self, app: ASGIApp, *, limits: DoorLimits, failed_tokens: FailedTokenLimit,
                 quota: TenantQuota, authenticate: Callable[[str], Any], refuse: Refusal,
                 tenant_of: Callable[[Any], Any], name_of: Callable[[Any], str]) -> None:
        self.app = app
        self.limits = limits
        self.failed_tokens = failed_tokens
        self.quota = quota
        self.authenticate = authenticate
        self.refuse = refuse
        self.tenant_of = tenant_of
        self.name_of = name_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        peer, proxy = peer_address(scope, self.limits.networks)
        state = scope.setdefault("state", {})
        state["peer"] = peer
        record = {"status": 0, "bytes": 0, "who": "-"}

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            elif message["type"] == "http.response.body":
                record["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self._serve(scope, receive, logged_send, state, record)
        finally:
            client = scope.get("client")
            where = f"{peer}:{client[1]}" if client and proxy is None else peer
            via = f" via {proxy}" if proxy else ""
            access_log.info('%s%s - "%s %s" %d %d %dms %s', where, via, scope["method"], scope["path"],
                            record["status"], record["bytes"], (time.monotonic() - started) * 1000, record["who"])

    async def _serve(self, scope: Scope, receive: Receive, send: Send, state: dict, record: dict) -> None:
        headers = scope["headers"]
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
            len(k) + len(v) + 4 for k, v in headers)
        if head > self.limits.max_header_bytes:  # h11 bounds only a head still arriving; this, one that came whole
            await self._close_with(scope, receive, send, 431, "header_too_large",
                                   f"the request head exceeds {self.limits.max_header_bytes} bytes")
            return
        if _token_in_query(scope.get("query_string", b"")):
            await self._close_with(scope, receive, send, 400, "token_in_query",
                                   "a token in the query string is never accepted: send it as Authorization: Bearer")
            return
        principal = None
        if scope["path"].startswith("/v1/"):
            token = _bearer(headers)
            if token is None:
                await self._close_with(scope, receive, send, 401, "unauthorized", "a bearer token is required",
                                       {"WWW-Authenticate": "Bearer"})
                return
            principal = await anyio.to_thread.run_sync(self.authenticate, token)
            if principal is None:
                try:
                    self.failed_tokens.check(state["peer"])
                except RateLimited as exc:
                    await self._close_with(scope, receive, send, 429, exc.code, exc.message,
                                           {"Retry-After": str(exc.retry_after)}, exc.error_data)
                    return
                self.failed_tokens.failed(state["peer"])
                await self._close_with(scope, receive, send, 401, "unauthorized", "the bearer token is not known",
                                       {"WWW-Authenticate": "Bearer"})
                return
            state["principal"] = principal
            record["who"] = self.name_of(principal)
        declared = _content_length(headers)
        if declared is not None and declared > self.limits.max_body_bytes:
            await self._close_with(scope, receive, send, 413, "payload_too_large",
                                   f"the body exceeds {self.limits.max_body_bytes} bytes")
            return
        tenant = self.tenant_of(principal) if principal is not None else None
        quota_counted = tenant is not None and scope["method"] == "POST" and scope["path"].rstrip("/") == SHIPMENTS_PATH
        if quota_counted:
            try:
                self.quota.check(tenant, declared or 0)
            except RateLimited as exc:
                await self._close_with(scope, receive, send, 429, exc.code, exc.message,
                                       {"Retry-After": str(exc.retry_after)}, exc.error_data)
                return
        body = b""
        if declared or _chunked(headers):
            try:
                body = await self._read_body(receive)
            except _TooLarge:
                await self._close_with(scope, receive, send, 413, "payload_too_large",
                                       f"the body exceeds {self.limits.max_body_bytes} bytes")
                return
            except TimeoutError:
                await self._close_with(scope, receive, send, 408, "request_timeout",
                                       f"the body did not arrive within {self.limits.body_timeout:g} s")
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = {"code": 0}

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replay, watched)
        if quota_counted and status["code"] == 201:
            self.quota.record(tenant, len(body))

    async def _read_body(self, receive: Receive) -> bytes:
        deadline = time.monotonic() + self.limits.body_timeout
        chunks, size = [], 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(receive(), remaining)
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _close_with(self, scope, receive, send, status: int, code: str, message: str,
                          headers: dict | None = None, data: Any = None) -> None:
        """A refusal before (or instead of) reading the body: the connection closes after it."""
        response = self.refuse(status, code, message, data, {**(headers or {}), "Connection": "close"})
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def _bearer(headers) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                return token
            return None
    return None


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else 1 << 62  # a malformed length is "too large"
    return None


def _chunked(headers) -> bool:
    return any(name == b"transfer-encoding" for name, _ in headers)


def _token_in_query(query: bytes) -> bool:
    if not query:
        return False
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return False
    return any(name.lower() in TOKEN_QUERY_NAMES for name, _ in pairs)


# -- how uvicorn is started ------------------------------------------------------------------


def guarded_protocol(head_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request head: a connection that has not
    sent a complete request line and headers within `head_timeout` seconds of connecting (or of
    its previous response) is closed. uvicorn alone has none: its keep-alive timer is cancelled
    by every byte received, so a client sending one header byte a second holds a connection
    forever (slowloris)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            cycle = self.cycle
            self.loop.call_later(head_timeout, self._head_deadline, cycle)

        def _head_deadline(self, cycle_at_arming) -> None:
            """No request head completed since the deadline was armed (no new cycle) and none
            is being answered: the connection only holds a socket. Close it."""
            idle = self.cycle is cycle_at_arming and (self.cycle is None or self.cycle.response_complete)
            if idle and not self.transport.is_closing():
                self.conn.send(h11.ConnectionClosed()) if self.conn.our_state is not h11.ERROR else None
                self.transport.close()

    GuardedH11Protocol.head_timeout = head_timeout
    return GuardedH11Protocol


def server_config(app: ASGIApp, limits: DoorLimits, **options) -> Any:
    """The uvicorn.Config `station serve` runs with (and the door tests start on loopback)."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=guarded_protocol(limits.head_timeout),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive,
        proxy_headers=False,  # the Door alone decides whom to believe (--trusted-proxy)
        server_header=False,
        access_log=False,  # the Door writes station.access: no query strings, the real peer
        **options,
    )

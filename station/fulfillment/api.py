"""The fulfillment service over HTTP (FastAPI): the customer API of PROTOCOL.md §4, the
station API under `/v1/station/`, the two JWKS, and the OpenAPI document at `/openapi.json`.

Every refusal is an `ErrorBody` `{error_code, error_message, error_data}`: 400 for a field limit
or a JWE header refused at the door (never FastAPI's 422 shape), 401 for a missing or unknown
bearer token, 403 for a token of the wrong role, 404 for a shipment that is not the caller's,
409 for a lease the station does not hold, 413 for a body over `MAX_BODY_BYTES`, 429 (with
Retry-After) for a client address that presented too many unknown bearer tokens lately.
The service never opens a request JWE: it checks headers only (`check_request_header`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from station.errors import StationError
from station.fulfillment.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
)
from station.fulfillment.models import (
    MAX_ITEM_ID,
    ClaimedItem,
    ConfirmRequest,
    FailedSubmit,
    FencedLeaseRequest,
    FulfilledSubmit,
    ItemStateView,
    Jwks,
    LeaseRequest,
    LeaseView,
    QueueView,
    ReleasedView,
    ReleaseRequest,
    ShipmentCreated,
    ShipmentItemView,
    ShipmentStateBody,
    ShipmentView,
    SubmitRequest,
)
from station.fulfillment.store import ItemState, NewItem, Principal, Role, Shipment, ShipmentState, Store
from station.protocol.jose import check_request_header
from station.protocol.keys import KeyStore
from station.protocol.messages import ErrorBody, ItemError, ProductData, ShipmentRequest

MAX_BODY_BYTES = 1024 * 1024
DEFAULT_PURGE_INTERVAL_SECONDS = 3600.0
DEFAULT_FAILED_TOKEN_LIMIT = 10
DEFAULT_FAILED_TOKEN_WINDOW_SECONDS = 60.0

_ERRORS = {
    "4XX": {"model": ErrorBody, "description": "Refused: `{error_code, error_message, error_data}`"},
    "503": {"model": ErrorBody, "description": "The database is unavailable"},
}
_bearer = HTTPBearer(auto_error=False, description="A token from `station tokens create`")

ShipmentId = Annotated[str, Path(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
ItemId = Annotated[int, Path(ge=1, le=MAX_ITEM_ID)]


def create_app(
    store: Store,
    keystore: KeyStore,
    *,
    purge_interval: float | None = DEFAULT_PURGE_INTERVAL_SECONDS,
    failed_token_limit: int = DEFAULT_FAILED_TOKEN_LIMIT,
    failed_token_window: float = DEFAULT_FAILED_TOKEN_WINDOW_SECONDS,
) -> FastAPI:
    """The service's ASGI app over `store` and `keystore`; purges every `purge_interval` seconds
    (None: never, the caller runs `store.purge`). A client address that presents
    `failed_token_limit` unknown bearer tokens within `failed_token_window` seconds is answered
    429 until the window lets the oldest of them go (`FailedTokenLimit`)."""
    app = FastAPI(
        title="FIDO pre-registration fulfillment service",
        version="1",
        lifespan=_purging(store, purge_interval),
        responses=_ERRORS,
    )
    app.state.store = store
    app.state.keystore = keystore
    app.state.failed_tokens = FailedTokenLimit(failed_token_limit, failed_token_window)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    _add_error_handlers(app)
    _add_customer_routes(app)
    _add_station_routes(app)
    return app


def _purging(store: Store, interval: float | None) -> Callable[[FastAPI], Any]:
    """A lifespan that runs `store.purge()` every `interval` seconds while the app serves."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(ServiceUnavailable):  # the database is back next round
                await run_in_threadpool(store.purge)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        task = asyncio.create_task(loop()) if interval is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return lifespan


# -- errors --------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, data: Any = None, headers: dict | None = None) -> JSONResponse:
    body = ErrorBody(error_code=code, error_message=message, error_data=data)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": str(e["msg"]), "type": str(e["type"])}
            for e in exc.errors()
        ]
        message = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return _error(400, "invalid_request", message or "invalid request", errors)

    @app.exception_handler(ServiceError)
    async def refused(_request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after)}
        return _error(exc.status, exc.code, exc.message, exc.error_data, headers)

    @app.exception_handler(StationError)
    async def station_error(_request: Request, exc: StationError) -> JSONResponse:
        return _error(400, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)


class BodyLimit:
    """Refuses (413) a request body over `max_bytes`, declared or streamed: the body is read
    up to the limit before the app sees it, then handed on as one message."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        body = None if not declared.isdigit() or int(declared) > self.max_bytes else await self._read(receive)
        if body is None:
            refusal = _error(413, PayloadTooLarge.code, f"the body exceeds {self.max_bytes} bytes")
            await refusal(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


# -- authentication ------------------------------------------------------------------------


class FailedTokenLimit:
    """The failed-token limit: at most `limit` unknown bearer tokens per client address within
    any `window` seconds (a sliding window). Once an address reaches it, every token it presents
    is refused unseen (`RateLimited`) until its oldest failure leaves the window, so guessing
    gains no answers. Known tokens are never counted; an address's failures are not forgiven by
    a success either (a customer token must not buy guesses at a station token). At most
    `max_addresses` addresses are tracked, the least recently failing forgotten first."""

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


def _principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    if credentials is None:
        raise Unauthorized("a bearer token is required")
    limit: FailedTokenLimit = request.app.state.failed_tokens
    address = request.client.host if request.client is not None else "unknown"
    limit.check(address)
    principal = request.app.state.store.authenticate(credentials.credentials)
    if principal is None:
        limit.failed(address)
        raise Unauthorized("the bearer token is not known")
    return principal


def _role(role: Role) -> Callable[..., Principal]:
    def check(principal: Principal = Depends(_principal)) -> Principal:
        if principal.role is not role:
            raise Forbidden(f"this route needs a {role.value} token")
        return principal

    return check


Customer = Annotated[Principal, Depends(_role(Role.CUSTOMER))]
Station = Annotated[Principal, Depends(_role(Role.STATION))]


def _store(request: Request) -> Store:
    return request.app.state.store


# -- customer API (PROTOCOL.md §4) ---------------------------------------------------------


def _add_customer_routes(app: FastAPI) -> None:
    @app.post("/v1/fpr/shipments", status_code=201, response_model=ShipmentCreated, tags=["customer"])
    def post_shipment(body: ShipmentRequest, customer: Customer, request: Request) -> ShipmentCreated:
        """Queue a shipment; every request JWE's header is checked here, none is opened."""
        check_headers(body, request.app.state.keystore)
        shipment_id = _store(request).create_shipment(
            customer.name, _envelope(body), [_new_item(item) for item in body.shipment_items]
        )
        return ShipmentCreated(
            shipment_id=shipment_id,
            shipment_state=ShipmentStateBody(shipment_state_id=int(ShipmentState.RECEIVED)),
        )

    @app.get("/v1/fpr/shipments/{shipment_id}", response_model=ShipmentView, tags=["customer"])
    def get_shipment(shipment_id: ShipmentId, customer: Customer, request: Request) -> ShipmentView:
        """The caller's shipment with its state and, per finished item, its product_data."""
        return shipment_view(_store(request).get_shipment(customer.name, shipment_id))

    @app.get("/.well-known/transport-keys.jwks", response_model=Jwks, tags=["keys"])
    def transport_keys(request: Request) -> Jwks:
        """The public transport keys customers encrypt requests to."""
        return Jwks.model_validate(request.app.state.keystore.jwks("transport"))

    @app.get("/.well-known/signing-keys.jwks", response_model=Jwks, tags=["keys"])
    def signing_keys(request: Request) -> Jwks:
        """The public signing keys responses are signed with."""
        return Jwks.model_validate(request.app.state.keystore.jwks("signing"))


def check_headers(body: ShipmentRequest, keystore: KeyStore) -> None:
    """Check every request JWE's protected header (kid known, alg/enc allowed, epk P-384);
    BadRequest names the first one refused in `error_data`."""
    for index, item in enumerate(body.shipment_items):
        for customization in item.product_customizations:
            named = [("fido_pin_request", customization.fido_pin_request)] + [
                (f"fido_credential_requests[{i}]", jwe)
                for i, jwe in enumerate(customization.fido_credential_requests)
            ]
            for member, jwe in named:
                try:
                    check_request_header(jwe, keystore=keystore)
                except StationError as exc:
                    raise BadRequest(
                        exc.message, code=exc.code,
                        error_data={"shipment_item": index, "member": member},
                    ) from exc


def _envelope(body: ShipmentRequest) -> dict[str, Any]:
    return body.model_dump(include={"delivery_type", "recipient", "mailing_address"})


def _new_item(item) -> NewItem:
    customization = item.product_customizations[0]
    return NewItem(
        descriptor=item.model_dump(
            include={"product_id", "inventory_product_id", "product_quantity", "customization_id"}
        ),
        pin_request=customization.fido_pin_request,
        credential_requests=list(customization.fido_credential_requests),
    )


def shipment_view(shipment: Shipment) -> ShipmentView:
    """A stored shipment as `GET /v1/fpr/shipments/{id}` answers it."""
    return ShipmentView(
        shipment_id=shipment.id,
        shipment_state=ShipmentStateBody(shipment_state_id=int(shipment.state)),
        **shipment.envelope,
        shipment_items=[
            ShipmentItemView(**item.descriptor, product_data=_product_data(item.state, item.result))
            for item in shipment.items
        ],
    )


def _product_data(state: ItemState, result: dict[str, Any] | None) -> list[ProductData | ItemError]:
    if state is ItemState.FULFILLED:
        return [ProductData.model_validate(result)]
    if state is ItemState.FAILED:
        return [ItemError.model_validate(result)]
    return []


# -- station API ---------------------------------------------------------------------------


def _add_station_routes(app: FastAPI) -> None:
    @app.post(
        "/v1/station/claim",
        response_model=ClaimedItem,
        responses={204: {"description": "The queue is empty"}},
        tags=["station"],
    )
    def claim(station: Station, request: Request, body: LeaseRequest | None = None) -> Any:
        """Lease the next item (an expired lease first, then the oldest queued)."""
        lease = body or LeaseRequest()
        claimed = _store(request).claim(station, lease.lease_seconds)
        if claimed is None:
            return Response(status_code=204)
        return ClaimedItem(
            item_id=claimed.item_id,
            shipment_id=claimed.shipment_id,
            lease_expires_at=claimed.lease_expires,
            fido_pin_request=claimed.pin_request,
            fido_credential_requests=claimed.credential_requests,
            generation=claimed.generation,
            attempts=claimed.attempts,
        )

    @app.get("/v1/station/queue", response_model=QueueView, tags=["station"])
    def queue(station: Station, request: Request) -> QueueView:
        """How many items are queued (not claimed, not finished)."""
        return QueueView(queued=_store(request).counts().get(ItemState.QUEUED.value, 0))

    @app.post("/v1/station/items/{item_id}/heartbeat", response_model=LeaseView, tags=["station"])
    def heartbeat(item_id: ItemId, station: Station, request: Request,
                  body: FencedLeaseRequest | None = None) -> LeaseView:
        """Extend the lease this station holds on an item (409 `stale_lease` for a superseded claim)."""
        lease = body or FencedLeaseRequest()
        expires = _store(request).heartbeat(station, item_id, lease.lease_seconds, generation=lease.generation)
        return LeaseView(item_id=item_id, lease_expires_at=expires)

    @app.post("/v1/station/items/{item_id}/confirm", response_model=LeaseView, tags=["station"])
    def confirm(item_id: ItemId, body: ConfirmRequest, station: Station, request: Request) -> LeaseView:
        """Before the first write to a key: confirm the claim (409 `stale_lease` if superseded) and
        record the write; the item then goes to no other station until the lease expired a grace
        period ago."""
        expires = _store(request).confirm(station, item_id, body.lease_seconds, generation=body.generation)
        return LeaseView(item_id=item_id, lease_expires_at=expires)

    @app.post("/v1/station/items/{item_id}/submit", response_model=ItemStateView, tags=["station"])
    def submit(item_id: ItemId, body: SubmitRequest, station: Station, request: Request) -> ItemStateView:
        """Finish an item with its product_data or its error; the same result again is OK,
        a different one for a finished item is 409."""
        state = _store(request).submit(
            station,
            item_id,
            product_data=body.product_data.model_dump() if isinstance(body, FulfilledSubmit) else None,
            error=body.error.model_dump() if isinstance(body, FailedSubmit) else None,
            serial_number=body.audit_serial,
            generation=body.generation,
        )
        return ItemStateView(item_id=item_id, item_state=state.value)

    @app.post("/v1/station/items/{item_id}/release", response_model=ReleasedView, tags=["station"])
    def release(item_id: ItemId, station: Station, request: Request,
                body: ReleaseRequest | None = None) -> ReleasedView:
        """Give back an item this station holds: untouched, or with the ItemError of the key that
        faulted on it (an attempt; the item fails once `max_attempts` keys faulted)."""
        body = body or ReleaseRequest()
        released = _store(request).release(station, item_id, generation=body.generation,
                                           error=None if body.error is None else body.error.model_dump())
        return ReleasedView(item_id=item_id, item_state=released.state.value, attempts=released.attempts)


def serve(db_url: str | None, keys_dir: str, *, host: str = "127.0.0.1", port: int = 8080,
          retention_seconds: float | None = None, max_attempts: int | None = None) -> None:
    """`station serve`: the service under uvicorn until interrupted."""
    import uvicorn

    keystore = KeyStore.open(keys_dir)
    options = {k: v for k, v in {"retention_seconds": retention_seconds, "max_attempts": max_attempts}.items()
               if v is not None}
    store = Store.open(db_url, **options)
    try:
        uvicorn.run(create_app(store, keystore), host=host, port=port)
    finally:
        store.close()

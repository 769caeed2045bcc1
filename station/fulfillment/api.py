"""The fulfillment service over HTTP (FastAPI): the customer API of PROTOCOL.md §4, the
station API under `/v1/station/`, the two JWKS, and the OpenAPI document at `/openapi.json`.

Every refusal is an `ErrorBody` `{error_code, error_message, error_data}`: 400 for a field limit
or a JWE header refused at the door (never FastAPI's 422 shape), 401 for a missing or unknown
bearer token, 403 for a token of the wrong role, 404 for a shipment that is not the caller's,
409 for a lease the station does not hold, 408 for a body that did not arrive in time, 413 for a
body over `MAX_BODY_BYTES`, 429 (with Retry-After) for a client address that presented too many
unknown bearer tokens lately (`rate_limited`) or a tenant past its shipment quota
(`quota_exceeded`), 400 `token_in_query` for a token in a query string. Authentication, limits
and quotas run in the Door (station.fulfillment.door) before the body is read.
The service never opens a request JWE: it checks headers only (`check_request_header`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from station.fulfillment.door import Door, DoorLimits, FailedTokenLimit, TenantQuota, server_config
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
    ShipmentList,
    ShipmentStateBody,
    ShipmentSummaryView,
    ShipmentView,
    StationStatusReport,
    SubmitRequest,
)
from station.fulfillment.store import (
    ItemState,
    NewItem,
    Principal,
    Role,
    Shipment,
    ShipmentState,
    ShipmentSummary,
    Store,
)
from station.protocol.backend import PublicKeys
from station.protocol.jose import check_request_header
from station.protocol.keys import KeyStore, PublishedKeys, holds_private_keys
from station.protocol.messages import (
    ErrorBody,
    ItemError,
    MailingAddress,
    ProductData,
    Recipient,
    ShipmentOrder,
    ShipmentPatch,
    ShipmentRequest,
    check_envelope,
)

MAX_BODY_BYTES = DoorLimits().max_body_bytes
__all__ = ["FailedTokenLimit", "create_app", "serve"]  # FailedTokenLimit lives in door.py
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
    keystore: PublishedKeys | KeyStore,
    *,
    purge_interval: float | None = DEFAULT_PURGE_INTERVAL_SECONDS,
    failed_token_limit: int = DEFAULT_FAILED_TOKEN_LIMIT,
    failed_token_window: float = DEFAULT_FAILED_TOKEN_WINDOW_SECONDS,
    limits: DoorLimits | None = None,
    directory_key: str | None = None,
    directories: Any = None,
) -> FastAPI:
    """The service's ASGI app over `store` and `keystore`; purges every `purge_interval` seconds
    (None: never, the caller runs `store.purge`). A client address that presents
    `failed_token_limit` unknown bearer tokens within `failed_token_window` seconds is answered
    429 until the window lets the oldest of them go (`FailedTokenLimit`). `limits`: the door's
    (station.fulfillment.door: body, quotas, trusted proxies, whether /docs is served).
    `directory_key`: the key file sealing directory secrets (default: sealing.open_box's);
    `directories`: a ready Directories (tests)."""
    limits = limits or DoorLimits()
    app = FastAPI(
        title="FIDO pre-registration fulfillment service",
        version="1",
        lifespan=_purging(store, purge_interval),
        responses=_ERRORS,
        docs_url="/docs" if limits.docs else None,
        redoc_url="/redoc" if limits.docs else None,
    )
    app.state.store = store
    app.state.keystore = published_keys(keystore)
    app.state.failed_tokens = FailedTokenLimit(failed_token_limit, failed_token_window)
    app.state.quota = TenantQuota(limits.shipments_per_minute, limits.shipment_bytes_per_minute)
    app.add_middleware(
        Door, limits=limits, failed_tokens=app.state.failed_tokens,
        quota=app.state.quota,
        authenticate=store.authenticate, refuse=_error, tenant_of=_tenant_of, name_of=lambda p: p.name,
    )
    _add_error_handlers(app)
    _add_customer_routes(app)
    _add_station_routes(app)
    from station.fulfillment.directories.api import add_directory_routes

    app.state.directory_key, app.state.directories = directory_key, directories
    add_directory_routes(app, Customer)
    from station.fulfillment.console import add_console
    from station.fulfillment.operator import add_operator_routes

    add_operator_routes(app)
    add_console(app)
    return app


def published_keys(keys: PublishedKeys | KeyStore) -> PublishedKeys:
    """What the app holds of the factory's keys: public keys only. A key store given here (the
    demo, the tests, `--allow-private-keys`) is followed through its public half, re-read as its
    metadata changes; the app never holds a private key object."""
    if isinstance(keys, PublishedKeys):
        return keys
    if isinstance(keys, KeyStore):
        return PublishedKeys.of_store(keys.path)
    raise TypeError("create_app needs PublishedKeys or a KeyStore")


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


# -- authentication ------------------------------------------------------------------------


def _principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    """The caller, as the Door authenticated it before the body was read (station.fulfillment.door);
    for a route outside /v1/ the same checks run here: an unknown token counts against the
    caller's address, a known one is never refused."""
    found = request.scope.get("state", {}).get("principal")
    if found is not None:
        return found
    if credentials is None:
        raise Unauthorized("a bearer token is required")
    principal = request.app.state.store.authenticate(credentials.credentials)
    if principal is None:
        limit: FailedTokenLimit = request.app.state.failed_tokens
        address = request.scope.get("state", {}).get("peer") or "unknown"
        limit.check(address)
        limit.failed(address)
        raise Unauthorized("the bearer token is not known")
    return principal


def _tenant_of(principal: Principal) -> Any:
    """The quota key of a customer: its tenant, as its shipments' owner (None for stations)."""
    if principal.role is not Role.CUSTOMER:
        return None
    return principal.owner


def _role(role: Role) -> Callable[..., Principal]:
    def check(principal: Principal = Depends(_principal)) -> Principal:
        if principal.role is not role:
            raise Forbidden(f"this route needs a {role.value} token")
        return principal

    return check


Customer = Annotated[Principal, Depends(_role(Role.CUSTOMER))]
Station = Annotated[Principal, Depends(_role(Role.STATION))]
Operator = Annotated[Principal, Depends(_role(Role.OPERATOR))]


def _store(request: Request) -> Store:
    return request.app.state.store


# -- customer API (PROTOCOL.md §4) ---------------------------------------------------------


def _add_customer_routes(app: FastAPI) -> None:
    @app.post("/v1/fpr/shipments", status_code=201, response_model=ShipmentCreated, tags=["customer"])
    def post_shipment(body: ShipmentOrder, customer: Customer, request: Request) -> ShipmentCreated:
        """Queue a shipment of exactly one key; every request JWE's header is checked here,
        none is opened."""
        shipment_id = accept_shipment(_store(request), request.app.state.keystore, customer.owner, body)
        return ShipmentCreated(
            shipment_id=shipment_id,
            shipment_state=ShipmentStateBody(shipment_state_id=int(ShipmentState.RECEIVED)),
        )

    @app.get("/v1/fpr/shipments", response_model=ShipmentList, tags=["customer"],
             dependencies=[known_query(*Listing.PARAMETERS)])
    def list_shipments(customer: Customer, request: Request, listing: Annotated[Listing, Depends()]) -> ShipmentList:
        """The caller's shipments, newest first: `limit` (at most 100), `offset`, `state`, and
        `q` (a part of the id, the recipient's names or email)."""
        page = _store(request).list_shipments(customer.owner, **listing.query())
        return ShipmentList(shipments=[summary_view(s) for s in page.shipments], total=page.total)

    @app.get("/v1/fpr/shipments/{shipment_id}", response_model=ShipmentView, tags=["customer"])
    def get_shipment(shipment_id: ShipmentId, customer: Customer, request: Request) -> ShipmentView:
        """The caller's shipment with its state and, per finished item, its product_data."""
        return shipment_view(_store(request).get_shipment(customer.owner, shipment_id))

    @app.patch("/v1/fpr/shipments/{shipment_id}", response_model=ShipmentView, tags=["customer"])
    def patch_shipment(shipment_id: ShipmentId, body: ShipmentPatch, customer: Customer,
                       request: Request) -> ShipmentView:
        """Change the recipient, the mailing address or the delivery type while the shipment is
        100; 409 `shipment_locked` after. The products and their requests cannot change."""
        store = _store(request)
        current = store.get_shipment(customer.owner, shipment_id)
        changes = patch_changes(current.envelope, body)
        return shipment_view(store.update_shipment(customer.owner, shipment_id, changes, actor=customer))

    @app.delete("/v1/fpr/shipments/{shipment_id}", status_code=204, tags=["customer"])
    def delete_shipment(shipment_id: ShipmentId, customer: Customer, request: Request) -> Response:
        """Delete the shipment while it is 100 (its JWEs are purged; it then answers 404);
        409 `shipment_locked` after."""
        _store(request).delete_shipment(customer.owner, shipment_id, actor=customer)
        return Response(status_code=204)

    @app.get("/.well-known/transport-keys.jwks", response_model=Jwks, tags=["keys"])
    def transport_keys(request: Request) -> Jwks:
        """The public transport keys customers encrypt requests to."""
        return Jwks.model_validate(request.app.state.keystore.jwks("transport"))

    @app.get("/.well-known/signing-keys.jwks", response_model=Jwks, tags=["keys"])
    def signing_keys(request: Request) -> Jwks:
        """The public signing keys responses are signed with."""
        return Jwks.model_validate(request.app.state.keystore.jwks("signing"))


def accept_shipment(store: Store, keystore: PublicKeys, owner: str, body: ShipmentOrder) -> str:
    """The one path a shipment enters the store by (POST /v1/fpr/shipments and a directory
    enrollment alike): every request JWE's header checked, replays refused → its id."""
    check_headers(body, keystore)
    return store.create_shipment(owner, _envelope(body), [_new_item(item) for item in body.shipment_items])


def check_headers(body: ShipmentRequest, keystore: PublicKeys) -> None:
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


def known_query(*names: str) -> Any:
    """A dependency refusing (400) any query parameter but `names`, and any given twice: a
    misspelt or repeated filter must not silently list something else."""

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(names))
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0]!r}: this route takes {', '.join(names)}",
                             error_data=[{"loc": ["query", unknown[0]], "msg": "unknown", "type": "extra_forbidden"}])
        repeated = sorted(n for n in set(request.query_params) if len(request.query_params.getlist(n)) > 1)
        if repeated:
            raise BadRequest(f"query parameter {repeated[0]!r} is given more than once",
                             error_data=[{"loc": ["query", repeated[0]], "msg": "repeated", "type": "repeated"}])

    return Depends(check)


class Listing:
    """The query of a shipment listing: `limit` 1..100 (default 100), `offset`, `state`, `q`."""

    PARAMETERS = ("limit", "offset", "state", "q")

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=100)] = 100,
        offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
        state: Annotated[ShipmentState | None, Query(description="a shipment_state_id")] = None,
        q: Annotated[str | None, Query(max_length=100)] = None,
    ) -> None:
        self.limit, self.offset, self.state, self.q = limit, offset, state, (q or "").strip() or None

    def query(self) -> dict[str, Any]:
        return {"limit": self.limit, "offset": self.offset, "state": self.state, "q": self.q}


def patch_changes(envelope: dict[str, Any], patch: ShipmentPatch) -> dict[str, Any]:
    """The envelope members a PATCH replaces, checked together with what stays (the telephone's
    limit depends on the country); BadRequest names the field."""
    changes = patch.model_dump(exclude_none=True, include={"delivery_type", "recipient", "mailing_address"})
    merged = envelope | changes
    try:
        check_envelope(Recipient.model_validate(merged["recipient"]),
                       MailingAddress.model_validate(merged["mailing_address"]))
    except ValueError as exc:
        raise BadRequest(str(exc), error_data=[{"loc": ["body", "recipient", "recipient_telephone"],
                                                "msg": str(exc), "type": "value_error"}]) from exc
    return changes


def summary_view(summary: ShipmentSummary, *, with_tenant: bool = False) -> ShipmentSummaryView:
    """One listed shipment (no JWE)."""
    envelope = summary.envelope
    return ShipmentSummaryView(
        shipment_id=summary.id,
        shipment_state=ShipmentStateBody(shipment_state_id=int(summary.state)),
        created_at=summary.created,
        updated_at=summary.updated,
        delivery_type=envelope["delivery_type"],
        recipient=envelope["recipient"],
        mailing_address=envelope["mailing_address"],
        tracking_number=summary.tracking_number,
        tenant=summary.owner if with_tenant else None,
    )


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
        tracking_number=shipment.tracking_number,
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

    @app.post("/v1/station/status", status_code=204, tags=["station"])
    def status(body: StationStatusReport, station: Station, request: Request) -> Response:
        """The daemon's report of its slots (what each waits for or works on): the operator's
        view of the floor, and the station's heartbeat."""
        _store(request).record_station_status(station, body.model_dump(mode="json"))
        return Response(status_code=204)

    @app.post("/v1/station/items/{item_id}/release", response_model=ReleasedView, tags=["station"])
    def release(item_id: ItemId, station: Station, request: Request,
                body: ReleaseRequest | None = None) -> ReleasedView:
        """Give back an item this station holds: untouched, or with the ItemError of the key that
        faulted on it (an attempt; the item fails once `max_attempts` keys faulted)."""
        body = body or ReleaseRequest()
        released = _store(request).release(station, item_id, generation=body.generation,
                                           error=None if body.error is None else body.error.model_dump())
        return ReleasedView(item_id=item_id, item_state=released.state.value, attempts=released.attempts)


def load_service_keys(*, jwks_file: str | None, keys_dir: str | None,
                      allow_private_keys: bool = False) -> PublishedKeys:
    """The keys `station serve` runs on: the exported JWKS (`--jwks FILE`, public keys only), or
    a key store's public half (`--keys DIR`), which is refused unless `allow_private_keys`:
    whoever takes the service host must not find a key that opens a request or signs a response."""
    from station.errors import KeyStoreError, UsageError

    if (jwks_file is None) == (keys_dir is None):
        raise UsageError("give exactly one of --jwks FILE (public keys: station keys export-public) and --keys DIR")
    if jwks_file is not None:
        return PublishedKeys.from_file(jwks_file)
    if holds_private_keys(keys_dir) and not allow_private_keys:
        raise KeyStoreError(
            f"{keys_dir} holds private keys, which the service never needs: run "
            f"`station keys export-public --dir {keys_dir} --out FILE` and `station serve --jwks FILE`, "
            f"keep {keys_dir} on the stations only (or pass --allow-private-keys, for a test machine)"
        )
    KeyStore.open(keys_dir)  # a clear error for a folder that is no key store
    return PublishedKeys.of_store(keys_dir)


def serve(db_url: str | None, keys_dir: str | None = None, *, jwks_file: str | None = None,
          allow_private_keys: bool = False, host: str = "127.0.0.1", port: int = 8080,
          retention_seconds: float | None = None, limits: DoorLimits | None = None,
          max_attempts: int | None = None, directory_key: str | None = None,
          registration_interval: float = 10.0) -> None:
    """`station serve`: the service under uvicorn until interrupted (how uvicorn is started:
    door.server_config; the access log: logger `station.access` on stderr), with the pass over
    pending directory registrations in a background thread every `registration_interval` s."""
    import uvicorn

    limits = limits or DoorLimits()
    keystore = load_service_keys(jwks_file=jwks_file, keys_dir=keys_dir, allow_private_keys=allow_private_keys)
    options = {k: v for k, v in {"retention_seconds": retention_seconds, "max_attempts": max_attempts}.items()
               if v is not None}
    store = Store.open(db_url, **options)
    _log_access()
    from station.fulfillment.directories.api import directories_for_app
    from station.fulfillment.directories.service import RegistrationLoop

    app = create_app(store, keystore, limits=limits, directory_key=directory_key)
    registrations = RegistrationLoop(store, lambda: directories_for_app(app), interval=registration_interval).start()
    try:
        uvicorn.Server(server_config(app, limits, host=host, port=port)).run()
    finally:
        registrations.stop()
        store.close()


def _log_access() -> None:
    logger = logging.getLogger("station.access")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

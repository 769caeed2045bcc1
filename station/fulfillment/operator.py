"""The operator's API (`/v1/operator/…`, tokens of role `operator`): every tenant's shipments
with their timelines, the stations and their slots, the failed items with what to do, the
audit trail and per-tenant counts; and the operator's moves (shipped with a tracking number,
delivered, an error state).

An operator never sees a request or response JWE, nor a PIN (which the service never has):
the views here are built from the store's JWE-free reads (`Store.shipment_for_operator`).
The console (console/) renders the same views as HTML.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from station.fulfillment.api import Listing, Operator, ShipmentId, known_query, summary_view
from station.fulfillment.models import ShipmentList, json_integer
from station.fulfillment.store import (
    AuditEvent,
    AuditRecord,
    FailedItem,
    Principal,
    Shipment,
    ShipmentState,
    StationView,
    Store,
)

#: a station whose last report is older than this is shown as silent
STATION_SILENT_SECONDS = 60.0

#: what an operator does about an item that failed with each error code (PROTOCOL.md §4)
WHAT_TO_DO = {
    "decrypt_failed": "The request could not be opened with our transport keys (wrong or retired key, "
                      "or a corrupt JWE): ask the customer to seal a new request to a key of "
                      "/.well-known/transport-keys.jwks and post a new shipment.",
    "invalid_request": "The request itself is wrong (bad payload, a requestId already fulfilled, or "
                       "stopped by an operator): the customer must post a corrected shipment.",
    "expired": "The request's notAfter passed before a station took it: the customer must post a fresh request; "
               "if this repeats, the queue is too slow for the customers' timeouts.",
    "device_unsupported": "No key tried can do what the request asks (a forced PIN change, credProtect, "
                          "an algorithm): stock a model that can (CTAP 2.1), then ask the customer to post again.",
    "device_not_fresh": "The keys tried already held a PIN or credentials: reset them "
                        "(station reset --device SPEC --yes) before they go back into the hub.",
    "device_error": "Several keys failed while being programmed: check the hub or reader and the keys' "
                    "batch (a key that failed needs a reset before reuse); the customer posts again.",
    "user_presence_timeout": "Nobody touched the keys in time: check that the technician sees the touch "
                             "prompts (station run on a terminal); the customer posts again.",
    "directory_refused": "The customer's directory refused to register this key's credential (expired "
                         "challenge, policy, AAGUID not allowed): do not ship the key; reset it "
                         "(station reset --device SPEC --yes). The customer fixes its directory and "
                         "enrolls the user again.",
}


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class StateView(_View):
    shipment_state_id: int
    meaning: str


class AttemptView(_View):
    """One station's go at an item: from its claim to its result or the loss of its lease."""

    claimed_at: float
    station: str | None
    slot: int | None = None
    serial_number: str | None = None
    ended_at: float | None = None
    outcome: str  # in_progress, fulfilled, failed: CODE, released, lease expired


class ItemView(_View):
    item_id: int
    position: int
    product_id: int | None = None
    customization_id: str | None = None
    item_state: str
    serial_number: str | None = None
    firmware_version: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int
    attempt_history: list[AttemptView] = []
    what_to_do: str | None = None


class TimelineEntry(_View):
    at: float
    event: str
    item_id: int | None = None
    state: int | None = None
    actor: str | None = None
    slot: int | None = None
    serial_number: str | None = None
    detail: str


class OperatorShipment(_View):
    """One shipment as the operator sees it: no JWE, ever."""

    shipment_id: str
    tenant: str
    shipment_state: StateView
    created_at: float
    updated_at: float | None
    delivery_type: int
    recipient: dict[str, Any]
    mailing_address: dict[str, Any]
    tracking_number: str | None
    items: list[ItemView]
    timeline: list[TimelineEntry]
    editable: bool
    next_states: list[StateView]


class SlotView(_View):
    slot: int
    state: str
    item: int | None = None
    shipment: str | None = None
    device: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    message: str | None = None
    since: float | None = None


class StationStatusView(_View):
    name: str
    reported_at: float | None
    last_activity: float | None
    silent: bool
    leases: int
    version: str | None = None
    items_done: int = 0
    slots: list[SlotView]


class AuditView(_View):
    at: float
    event: str
    item_id: int
    shipment_id: str
    actor: str | None
    serial_number: str | None
    outcome: str | None


class AuditPage(_View):
    records: list[AuditView]
    total: int


class FailedItemView(_View):
    item_id: int
    shipment_id: str
    tenant: str
    error_code: str
    error_message: str
    finished_at: float | None
    attempts: int
    keys_tried: list[str]
    stations: list[str]
    what_to_do: str


class TenantCounts(_View):
    tenant: str
    total: int
    by_state: dict[str, int]


def _settable(value: int) -> int:
    from station.fulfillment.store import OPERATOR_TRANSITIONS

    if value not in {int(s) for s in OPERATOR_TRANSITIONS}:
        raise ValueError(f"an operator sets one of {', '.join(str(int(s)) for s in OPERATOR_TRANSITIONS)}")
    return value


class StateChange(BaseModel):
    """`POST /v1/operator/shipments/{id}/state`: 103 needs `tracking_number`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shipment_state_id: Annotated[int, BeforeValidator(json_integer), AfterValidator(_settable),
                                 Field(json_schema_extra={"enum": [103, 104, 1, 6, 7, 9, 99, 105, 106]})]
    tracking_number: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9 -]+$")] | None = None


# -- views (shared with the console) ------------------------------------------------------------


def state_view(state: ShipmentState) -> StateView:
    return StateView(shipment_state_id=int(state), meaning=state.meaning)


def attempt_history(records: list[AuditRecord], item_id: int) -> list[AttemptView]:
    """Each claim of `item_id` and how it ended, oldest first, from the audit trail."""
    attempts: list[dict[str, Any]] = []
    for r in records:
        if r.item_id != item_id:
            continue
        if r.event is AuditEvent.CLAIMED:
            attempts.append({"claimed_at": r.at, "station": r.station, "outcome": "in_progress"})
        elif attempts and attempts[-1]["outcome"] == "in_progress":
            current = attempts[-1]
            if r.event is AuditEvent.ON_SLOT:
                current.update(slot=_slot_of(r.outcome), serial_number=r.serial_number or current.get("serial_number"))
                continue
            ended = {AuditEvent.FULFILLED: "fulfilled", AuditEvent.FAILED: f"failed: {r.outcome}",
                     AuditEvent.RELEASED: "released", AuditEvent.EXPIRED: "lease expired"}.get(r.event)
            if ended:
                current.update(outcome=ended, ended_at=r.at, serial_number=r.serial_number or current.get("serial_number"))
    return [AttemptView(**a) for a in attempts]


def _slot_of(outcome: str | None) -> int | None:
    if outcome and outcome.startswith("slot "):
        tail = outcome.removeprefix("slot ")
        return int(tail) if tail.isdigit() else None
    return None


def timeline(shipment: Shipment, records: list[AuditRecord]) -> list[TimelineEntry]:
    """What happened to a shipment, oldest first: received, each claim, slot, lease loss, result,
    edit and state change, with the station, slot and key serial where known."""
    firmware = {item.id: (item.result or {}).get("firmware_version") for item in shipment.items}
    out = [TimelineEntry(at=shipment.created, event="received", state=int(ShipmentState.RECEIVED),
                         detail="received; editable and deletable until a station takes it")]
    for r in records:
        entry: dict[str, Any] = {"at": r.at, "event": r.event.value, "item_id": r.item_id, "actor": r.station,
                                 "serial_number": r.serial_number}
        if r.event is AuditEvent.CLAIMED:
            entry |= {"state": int(ShipmentState.IN_FULFILLMENT), "detail": f"claimed by station {r.station}"}
        elif r.event is AuditEvent.ON_SLOT:
            slot = _slot_of(r.outcome)
            entry |= {"slot": slot, "detail": f"in slot {slot} of {r.station}"
                      + (f", key {r.serial_number}" if r.serial_number else "")}
        elif r.event is AuditEvent.EXPIRED:
            entry |= {"detail": f"the lease of {r.station} ran out: back to the queue"}
        elif r.event is AuditEvent.RELEASED:
            entry |= {"detail": f"given back by {r.station}: back to the queue"}
        elif r.event is AuditEvent.FULFILLED:
            fw = firmware.get(r.item_id)
            entry |= {"state": int(ShipmentState.PROGRAMMED),
                      "detail": f"programmed by {r.station}" + (f" on key {r.serial_number}" if r.serial_number else "")
                      + (f", firmware {fw}" if fw else "")}
        elif r.event is AuditEvent.FAILED:
            entry |= {"detail": f"failed on {r.station}: {r.outcome}"
                      + (f" (key {r.serial_number})" if r.serial_number else "")}
        elif r.event is AuditEvent.EDITED:
            entry |= {"detail": f"edited by {r.station or 'the customer'}: {r.outcome}"}
        elif r.event is AuditEvent.STATE:
            state = ShipmentState(int(r.outcome)) if (r.outcome or "").isdigit() else None
            extra = f", tracking {shipment.tracking_number}" if state is ShipmentState.SHIPPED and shipment.tracking_number else ""
            entry |= {"state": int(state) if state else None,
                      "detail": f"set to {r.outcome} ({state.meaning if state else '?'}) by {r.station or 'an operator'}{extra}"}
        else:
            entry |= {"detail": r.event.value}
        out.append(TimelineEntry(**entry))
    return out


def operator_shipment(store: Store, shipment_id: str) -> OperatorShipment:
    from station.fulfillment.store import OPERATOR_TRANSITIONS

    shipment = store.shipment_for_operator(shipment_id)
    records = store.shipment_audit(shipment_id)
    items = []
    for item in shipment.items:
        result = item.result or {}
        error = result.get("error_code")
        history = attempt_history(records, item.id)
        items.append(ItemView(
            item_id=item.id, position=item.position, product_id=item.descriptor.get("product_id"),
            customization_id=item.descriptor.get("customization_id"), item_state=item.state.value,
            serial_number=result.get("serial_number"), firmware_version=result.get("firmware_version"),
            error_code=error, error_message=result.get("error_message"), attempts=len(history),
            attempt_history=history,
            what_to_do=WHAT_TO_DO.get(error) if error else None,
        ))
    state = shipment.state
    return OperatorShipment(
        shipment_id=shipment.id, tenant=shipment.owner, shipment_state=state_view(state),
        created_at=shipment.created, updated_at=shipment.updated,
        delivery_type=shipment.envelope["delivery_type"], recipient=shipment.envelope["recipient"],
        mailing_address=shipment.envelope["mailing_address"], tracking_number=shipment.tracking_number,
        items=items, timeline=timeline(shipment, records), editable=state is ShipmentState.RECEIVED,
        next_states=[state_view(s) for s, sources in OPERATOR_TRANSITIONS.items() if state in sources],
    )


def station_views(store: Store, *, now: float | None = None) -> list[StationStatusView]:
    now = time.time() if now is None else now
    return [_station_view(s, now) for s in store.stations()]


def _station_view(s: StationView, now: float) -> StationStatusView:
    report = s.report or {}
    return StationStatusView(
        name=s.name, reported_at=s.reported_at, last_activity=s.last_activity,
        silent=s.reported_at is None or now - s.reported_at > STATION_SILENT_SECONDS, leases=s.leases,
        version=report.get("version"), items_done=report.get("items_done", 0),
        slots=[SlotView(**slot) for slot in report.get("slots", [])],
    )


def failed_views(store: Store, *, limit: int = 100) -> list[FailedItemView]:
    return [_failed_view(f) for f in store.failed_items(limit=limit)]


def _failed_view(f: FailedItem) -> FailedItemView:
    claims = [r for r in f.attempts if r.event is AuditEvent.CLAIMED]
    keys = [r.serial_number for r in f.attempts if r.serial_number and r.event in (AuditEvent.FAILED, AuditEvent.ON_SLOT)]
    return FailedItemView(
        item_id=f.item_id, shipment_id=f.shipment_id, tenant=f.owner, error_code=f.error_code,
        error_message=f.error_message, finished_at=f.finished_at, attempts=len(claims),
        keys_tried=list(dict.fromkeys(keys)), stations=list(dict.fromkeys(r.station for r in claims if r.station)),
        what_to_do=WHAT_TO_DO.get(f.error_code, "See the error message; the customer may post again."),
    )


def audit_page(store: Store, *, limit: int = 100, offset: int = 0, event: str | None = None) -> AuditPage:
    records, total = store.recent_audit(limit=limit, offset=offset, event=event)
    return AuditPage(records=[AuditView(at=r.at, event=r.event.value, item_id=r.item_id, shipment_id=r.shipment_id,
                                        actor=r.station, serial_number=r.serial_number, outcome=r.outcome)
                              for r in records], total=total)


def tenant_counts(store: Store) -> list[TenantCounts]:
    return [TenantCounts(tenant=tenant, total=sum(by_state.values()),
                         by_state={str(k): v for k, v in sorted(by_state.items())})
            for tenant, by_state in sorted(store.tenant_counts().items())]


def set_state(store: Store, shipment_id: str, change: StateChange, actor: Principal | None) -> OperatorShipment:
    from station.errors import InvalidRequest

    try:
        state = ShipmentState(change.shipment_state_id)
    except ValueError:
        raise InvalidRequest(f"{change.shipment_state_id} is not a shipment_state_id of PROTOCOL.md §4") from None
    store.set_state(shipment_id, state, tracking_number=change.tracking_number, actor=actor)
    return operator_shipment(store, shipment_id)


# -- routes ------------------------------------------------------------------------------------


def add_operator_routes(app: FastAPI) -> None:
    def store_of(request: Request) -> Store:
        return request.app.state.store

    @app.get("/v1/operator/shipments", response_model=ShipmentList, tags=["operator"],
             dependencies=[known_query(*Listing.PARAMETERS, "tenant")])
    def shipments(_operator: Operator, request: Request, listing: Annotated[Listing, Depends()],
                  tenant: Annotated[str | None, Query(max_length=200)] = None) -> ShipmentList:
        """Every tenant's shipments (or one `tenant`'s), newest first; no JWE."""
        page = store_of(request).list_shipments(tenant, **listing.query())
        return ShipmentList(shipments=[summary_view(s, with_tenant=True) for s in page.shipments], total=page.total)

    @app.get("/v1/operator/shipments/{shipment_id}", response_model=OperatorShipment, tags=["operator"])
    def shipment(shipment_id: ShipmentId, _operator: Operator, request: Request) -> OperatorShipment:
        """A shipment's items (state, serial, firmware, attempts, errors) and its timeline."""
        return operator_shipment(store_of(request), shipment_id)

    @app.post("/v1/operator/shipments/{shipment_id}/state", response_model=OperatorShipment, tags=["operator"])
    def change_state(shipment_id: ShipmentId, body: StateChange, operator: Operator,
                     request: Request) -> OperatorShipment:
        """Set 103 (shipped, with `tracking_number`), 104 (delivered) or an error state; 409
        `invalid_transition` when the shipment is not where that state can follow."""
        return set_state(store_of(request), shipment_id, body, operator)

    @app.get("/v1/operator/stations", response_model=list[StationStatusView], tags=["operator"])
    def stations(_operator: Operator, request: Request) -> list[StationStatusView]:
        """Every station with its slots as it last reported them, and whether it went silent."""
        return station_views(store_of(request))

    @app.get("/v1/operator/items/failed", response_model=list[FailedItemView], tags=["operator"],
             dependencies=[known_query("limit")])
    def failed(_operator: Operator, request: Request,
               limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[FailedItemView]:
        """Failed items, newest first: error code, keys and stations tried, what to do."""
        return failed_views(store_of(request), limit=limit)

    @app.get("/v1/operator/audit", response_model=AuditPage, tags=["operator"],
             dependencies=[known_query("limit", "offset", "event")])
    def audit(_operator: Operator, request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 100,
              offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
              event: Annotated[str | None, Query(pattern="^(" + "|".join(e.value for e in AuditEvent) + ")$")] = None,
              ) -> AuditPage:
        """The audit trail, newest first (never a secret)."""
        return audit_page(store_of(request), limit=limit, offset=offset, event=event)

    @app.get("/v1/operator/tenants", response_model=list[TenantCounts], tags=["operator"])
    def tenants(_operator: Operator, request: Request) -> list[TenantCounts]:
        """Per tenant: how many shipments, by state."""
        return tenant_counts(store_of(request))


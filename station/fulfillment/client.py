"""An httpx client of the fulfillment service, for customers and for stations.

Every refusal becomes the ServiceError subclass of its HTTP status (BadRequest, Unauthorized,
Forbidden, NotFound, Conflict, PayloadTooLarge, ServiceUnavailable) carrying the answer's
`error_code`, `error_message` and `error_data`; a service that cannot be reached is
ServiceUnavailable. The token is sent as a bearer token and never appears in a repr or an error.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from station.fulfillment.errors import BY_STATUS, ServiceError, ServiceUnavailable
from station.fulfillment.models import (
    DEFAULT_LEASE_SECONDS,
    ClaimedItem,
    FailedSubmit,
    FulfilledSubmit,
    ItemStateView,
    Jwks,
    LeaseView,
    QueueView,
    ReleasedView,
    ShipmentCreated,
    ShipmentList,
    ShipmentView,
)
from station.protocol.messages import ItemError, ProductData, ShipmentRequest
from station.tls import client_tls_context


class FulfillmentClient:
    """The service at `base_url`, spoken to with `token` (customer or station)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout,
                                  transport=transport, verify=client_tls_context())

    def __repr__(self) -> str:
        return f"FulfillmentClient({str(self._http.base_url)!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FulfillmentClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- customer ------------------------------------------------------------------------------
    def post_shipment(self, body: ShipmentRequest | dict[str, Any]) -> ShipmentCreated:
        """`POST /v1/fpr/shipments` (PROTOCOL.md §4)."""
        return ShipmentCreated.model_validate(self._call("POST", "/v1/fpr/shipments", body))

    def get_shipment(self, shipment_id: str) -> ShipmentView:
        """`GET /v1/fpr/shipments/{id}`."""
        return ShipmentView.model_validate(self._call("GET", f"/v1/fpr/shipments/{shipment_id}"))

    def list_shipments(self, *, limit: int = 100, offset: int = 0, state: int | None = None,
                       q: str | None = None) -> ShipmentList:
        """`GET /v1/fpr/shipments`: this tenant's shipments, newest first (no JWE)."""
        params = {"limit": limit, "offset": offset} | ({"state": state} if state is not None else {}) | (
            {"q": q} if q else {})
        return ShipmentList.model_validate(self._call("GET", "/v1/fpr/shipments", params=params))

    def patch_shipment(self, shipment_id: str, changes: dict[str, Any]) -> ShipmentView:
        """`PATCH /v1/fpr/shipments/{id}` with any of recipient, mailing_address, delivery_type
        (Conflict `shipment_locked` once a station took it)."""
        return ShipmentView.model_validate(self._call("PATCH", f"/v1/fpr/shipments/{shipment_id}", changes))

    def delete_shipment(self, shipment_id: str) -> None:
        """`DELETE /v1/fpr/shipments/{id}` while it is 100 (Conflict `shipment_locked` after)."""
        self._call("DELETE", f"/v1/fpr/shipments/{shipment_id}")

    def jwks(self, kind: str) -> dict[str, Any]:
        """The public JWKS of `kind` ("transport" or "signing"); needs no token."""
        if kind not in ("transport", "signing"):
            raise ValueError("kind is 'transport' or 'signing'")
        return Jwks.model_validate(self._call("GET", f"/.well-known/{kind}-keys.jwks")).model_dump()

    # -- station -------------------------------------------------------------------------------
    def claim(self, lease_seconds: int = DEFAULT_LEASE_SECONDS) -> ClaimedItem | None:
        """Lease the next item, or None when the queue is empty."""
        data = self._call("POST", "/v1/station/claim", {"lease_seconds": lease_seconds})
        return None if data is None else ClaimedItem.model_validate(data)

    def queued(self) -> int:
        """How many items wait in the queue."""
        return QueueView.model_validate(self._call("GET", "/v1/station/queue")).queued

    def heartbeat(self, item_id: int, lease_seconds: int = DEFAULT_LEASE_SECONDS, *,
                  generation: int | None = None) -> LeaseView:
        """Extend the lease on `item_id`; Conflict when this station no longer holds it."""
        data = self._call("POST", f"/v1/station/items/{item_id}/heartbeat",
                          _without_none({"lease_seconds": lease_seconds, "generation": generation}))
        return LeaseView.model_validate(data)

    def confirm(self, item_id: int, lease_seconds: int = DEFAULT_LEASE_SECONDS, *, generation: int) -> LeaseView:
        """Before the first write to a key: Conflict (`stale_lease`) unless this claim still holds."""
        data = self._call("POST", f"/v1/station/items/{item_id}/confirm",
                          {"lease_seconds": lease_seconds, "generation": generation})
        return LeaseView.model_validate(data)

    def submit(
        self,
        item_id: int,
        *,
        product_data: ProductData | dict[str, Any] | None = None,
        error: ItemError | dict[str, Any] | None = None,
        serial_number: str | None = None,
        generation: int | None = None,
    ) -> ItemStateView:
        """Finish `item_id` with its product_data or its error (safe to repeat)."""
        if (product_data is None) == (error is None):
            raise ValueError("give exactly one of product_data and error")
        body = (FulfilledSubmit(product_data=product_data, serial_number=serial_number, generation=generation)
                if product_data is not None
                else FailedSubmit(error=error, serial_number=serial_number, generation=generation))
        data = self._call("POST", f"/v1/station/items/{item_id}/submit", body)
        return ItemStateView.model_validate(data)

    def report_status(self, report: dict[str, Any]) -> None:
        """`POST /v1/station/status`: this station's slots, for the operator (status.py)."""
        self._call("POST", "/v1/station/status", report)

    def release(self, item_id: int, *, generation: int | None = None,
                error: ItemError | dict[str, Any] | None = None) -> ReleasedView:
        """Give back an item: untouched, or with the error of the key that faulted on it."""
        if isinstance(error, ItemError):
            error = error.model_dump()
        body = _without_none({"generation": generation, "error": error}) or None
        return ReleasedView.model_validate(self._call("POST", f"/v1/station/items/{item_id}/release", body))

    # -- transport -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: BaseModel | dict[str, Any] | None = None, *,
              params: dict[str, Any] | None = None) -> Any:
        if isinstance(body, BaseModel):
            body = body.model_dump(mode="json")
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"{method} {path}: {exc.__class__.__name__}") from exc
        if response.status_code == 204:
            return None
        if response.is_success:
            return response.json()
        raise _refusal(response)


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _refusal(response: httpx.Response) -> ServiceError:
    """The ServiceError an error answer stands for."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    cls = BY_STATUS.get(response.status_code, ServiceError)
    return cls(
        str(body.get("error_message") or response.reason_phrase),
        code=str(body.get("error_code") or cls.code),
        status=response.status_code,
        error_data=body.get("error_data"),
    )

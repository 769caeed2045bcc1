"""The JSON bodies of the fulfillment service that PROTOCOL.md §4 does not define itself.

Customer side: the answers of `POST` and `GET /v1/fpr/shipments` (the request body is
`station.protocol.messages.ShipmentRequest`). Station side (our own design, under
`/v1/station/`): claim an item with a lease, heartbeat, submit a result, release.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, model_serializer

from station.protocol.messages import ItemError, MailingAddress, ProductData, Recipient, StationItemError

MAX_LEASE_SECONDS = 3600
DEFAULT_LEASE_SECONDS = 300
MAX_ITEM_ID = 2**31 - 1

_SERIAL = re.compile(r"[0-9]{1,20}")
SerialNumber = Annotated[StrictStr, Field(pattern=r"^[0-9]{1,20}$")]
"""A device serial number as a decimal string (PROTOCOL.md §3)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# -- customer side -------------------------------------------------------------------------


class ShipmentStateBody(_Body):
    """`shipment_state`: one of PROTOCOL.md §4's state ids (100 received, 101 locked, 102
    programmed, 103 shipped, 104 delivered, or an error state 1, 6, 7, 8, 9, 99, 105, 106)."""

    shipment_state_id: Literal[100, 101, 102, 103, 104, 1, 6, 7, 8, 9, 99, 105, 106]


class ShipmentCreated(_Body):
    """The answer to `POST /v1/fpr/shipments` (201)."""

    shipment_id: str
    shipment_state: ShipmentStateBody


class ShipmentItemView(_Body):
    """One `shipment_items[]` entry as the customer reads it back; `product_data` stays empty
    until the item is finished, then holds one ProductData, or one ItemError if it failed."""

    product_id: int
    inventory_product_id: int
    product_quantity: int
    customization_id: str
    product_data: list[ProductData | ItemError]


class ShipmentView(_Body):
    """The answer to `GET /v1/fpr/shipments/{id}`; `tracking_number` from state 103 on."""

    shipment_id: str
    shipment_state: ShipmentStateBody
    delivery_type: int
    recipient: Recipient
    mailing_address: MailingAddress
    shipment_items: list[ShipmentItemView]
    tracking_number: str | None = None

    @model_serializer(mode="wrap")
    def _tracking_only_once_shipped(self, handler):
        data = handler(self)
        if data.get("tracking_number") is None:
            data.pop("tracking_number", None)
        return data


class ShipmentSummaryView(_Body):
    """One shipment of a listing: its envelope and state, never its items' JWEs. `created_at`
    and `updated_at` are seconds since the epoch; `tenant` only in the operator's listing."""

    shipment_id: str
    shipment_state: ShipmentStateBody
    created_at: float
    updated_at: float | None = None
    delivery_type: int
    recipient: Recipient
    mailing_address: MailingAddress
    tracking_number: str | None = None
    tenant: str | None = None


class ShipmentList(_Body):
    """The answer to `GET /v1/fpr/shipments`: a page, newest first, and how many match."""

    shipments: list[ShipmentSummaryView]
    total: int


class Jwks(_Body):
    """A public JWKS (PROTOCOL.md §1): `{"keys": [JWK, ...]}`, never a private member."""

    keys: list[dict[str, str]]


# -- station side --------------------------------------------------------------------------

def json_integer(value: Any) -> Any:
    """A JSON Schema integer: a number with no fraction (`30` or `30.0`), never `true` or `"30"`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be an integer")
    return value


LeaseSeconds = Annotated[int, Field(ge=1, le=MAX_LEASE_SECONDS), BeforeValidator(json_integer)]

MAX_SLOTS = 64


class SlotStatus(_Body):
    """One slot of a station as the daemon last saw it: what it waits for or works on."""

    slot: Annotated[int, Field(ge=1, le=MAX_SLOTS), BeforeValidator(json_integer)]
    state: Annotated[StrictStr, Field(max_length=32, pattern=r"^[a-z_]+$")]
    item: Annotated[int, Field(ge=1, le=MAX_ITEM_ID), BeforeValidator(json_integer)] | None = None
    shipment: Annotated[StrictStr, Field(max_length=36)] | None = None
    device: Annotated[StrictStr, Field(max_length=200)] | None = None
    model: Annotated[StrictStr, Field(max_length=100)] | None = None
    serial: SerialNumber | None = None
    firmware: Annotated[StrictStr, Field(max_length=32)] | None = None
    message: Annotated[StrictStr, Field(max_length=300)] | None = None
    since: float | None = None


class StationStatusReport(_Body):
    """`POST /v1/station/status`: the daemon's own report of its slots (its heartbeat for the
    operator's floor view). Never a PIN, a request or a response."""

    slots: list[SlotStatus] = Field(max_length=MAX_SLOTS)
    version: Annotated[StrictStr, Field(max_length=40)] | None = None
    items_done: Annotated[int, Field(ge=0, le=2**53 - 1), BeforeValidator(json_integer)] = 0  # JSON-safe integers only


class LeaseRequest(_Body):
    """How long a station wants an item for (claim and heartbeat)."""

    lease_seconds: LeaseSeconds = DEFAULT_LEASE_SECONDS


Generation = Annotated[int, Field(ge=1, le=MAX_ITEM_ID), BeforeValidator(json_integer)]


class ClaimedItem(_Body):
    """An item leased to the calling station until `lease_expires_at` (seconds since the epoch).
    `generation` fences this claim: heartbeat, confirm, submit and release name it, and are
    refused (409 `stale_lease`) once the item was claimed again. `attempts` counts the keys
    that already faulted on the item."""

    item_id: int
    shipment_id: str
    lease_expires_at: float
    fido_pin_request: str
    fido_credential_requests: list[str]
    generation: int = 1
    attempts: int = 0


class LeaseView(_Body):
    item_id: int
    lease_expires_at: float


class FencedLeaseRequest(LeaseRequest):
    """Heartbeat: the lease wanted, and the claim's generation (optional for older stations)."""

    generation: Generation | None = None


class ConfirmRequest(LeaseRequest):
    """Confirm: the lease wanted and the generation of the claim about to write a key."""

    generation: Generation


class ReleaseRequest(_Body):
    """Release: the claim's generation and, when a key's fault sends the item back, that key's
    ItemError (it counts an attempt; the last allowed attempt fails the item with it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generation: Generation | None = None
    error: StationItemError | None = None


class QueueView(_Body):
    """How many items wait in the queue (a station with no key in hand and --until-empty asks)."""

    queued: int


class ReleasedView(_Body):
    item_id: int
    item_state: Literal["queued", "failed"]
    attempts: int = 0


class _Submit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    serial_number: SerialNumber | None = None
    """Names the device for the audit when `product_data` does not (a failed item whose key was
    touched); never required."""
    generation: Generation | None = None
    """The claim this result belongs to: a result of a superseded claim is refused (409)."""


class FulfilledSubmit(_Submit):
    """An item fulfilled: its sealed responses."""

    product_data: ProductData

    @property
    def audit_serial(self) -> str | None:
        """The serial number the audit records (a decimal string, or None)."""
        serial = self.serial_number or self.product_data.serial_number
        return serial if serial is not None and _SERIAL.fullmatch(serial) else None


class FailedSubmit(_Submit):
    """An item failed with one of the PROTOCOL.md §4 item error codes a station reports."""

    error: StationItemError

    @property
    def audit_serial(self) -> str | None:
        return self.serial_number


SubmitRequest = FulfilledSubmit | FailedSubmit
"""The body of submit: exactly one of `product_data` and `error` (unknown members refused)."""


class ItemStateView(_Body):
    item_id: int
    item_state: Literal["queued", "claimed", "fulfilled", "failed"]

"""The JSON bodies of the fulfillment service that PROTOCOL.md §4 does not define itself.

Customer side: the answers of `POST` and `GET /v1/fpr/shipments` (the request body is
`station.protocol.messages.ShipmentRequest`). Station side (our own design, under
`/v1/station/`): claim an item with a lease, heartbeat, submit a result, release.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from station.protocol.messages import ItemError, MailingAddress, ProductData, Recipient

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
    """`shipment_state`: 100 received, 101 in fulfillment, 103 fulfilled, 8 processing error."""

    shipment_state_id: Literal[100, 101, 103, 8]


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
    """The answer to `GET /v1/fpr/shipments/{id}`."""

    shipment_id: str
    shipment_state: ShipmentStateBody
    delivery_type: int
    recipient: Recipient
    mailing_address: MailingAddress
    shipment_items: list[ShipmentItemView]


class Jwks(_Body):
    """A public JWKS (PROTOCOL.md §1): `{"keys": [JWK, ...]}`, never a private member."""

    keys: list[dict[str, str]]


# -- station side --------------------------------------------------------------------------

def _json_integer(value: Any) -> Any:
    """A JSON Schema integer: a number with no fraction (`30` or `30.0`), never `true` or `"30"`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be an integer")
    return value


LeaseSeconds = Annotated[int, Field(ge=1, le=MAX_LEASE_SECONDS), BeforeValidator(_json_integer)]


class LeaseRequest(_Body):
    """How long a station wants an item for (claim and heartbeat)."""

    lease_seconds: LeaseSeconds = DEFAULT_LEASE_SECONDS


Generation = Annotated[int, Field(ge=1, le=MAX_ITEM_ID), BeforeValidator(_json_integer)]


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
    error: ItemError | None = None


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
    """An item failed with one of the PROTOCOL.md §4 item error codes."""

    error: ItemError

    @property
    def audit_serial(self) -> str | None:
        return self.serial_number


SubmitRequest = FulfilledSubmit | FailedSubmit
"""The body of submit: exactly one of `product_data` and `error` (unknown members refused)."""


class ItemStateView(_Body):
    item_id: int
    item_state: Literal["queued", "claimed", "fulfilled", "failed"]

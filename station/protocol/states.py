"""The shipment states of PROTOCOL.md §4 (`shipment_state_id`, YubiEnterprise's numbering where
it has one): what each means, which let a customer read the responses, which are errors.
Both sides speak them: the service sets them, the customer side polls for them."""

from __future__ import annotations

import enum


class ShipmentState(enum.IntEnum):
    RECEIVED = 100
    IN_FULFILLMENT = 101
    PROGRAMMED = 102
    SHIPPED = 103
    DELIVERED = 104
    INCOMPLETE_REQUEST = 1
    INCOMPLETE = 6
    ADDRESS_UNDELIVERABLE = 7
    PROCESSING_ERROR = 8
    DENIED_PARTY = 9
    SHIPPING_ERROR = 99
    LOST = 105
    DELIVERY_EXCEPTION = 106

    @property
    def meaning(self) -> str:
        return MEANINGS[self]

    @property
    def is_error(self) -> bool:
        return self in ERROR_STATES


MEANINGS = {
    ShipmentState.RECEIVED: "received; editable and deletable",
    ShipmentState.IN_FULFILLMENT: "locked for processing: a station holds the item",
    ShipmentState.PROGRAMMED: "programmed: responses readable, key not yet shipped",
    ShipmentState.SHIPPED: "shipped",
    ShipmentState.DELIVERED: "delivered",
    ShipmentState.INCOMPLETE_REQUEST: "incomplete shipping request",
    ShipmentState.INCOMPLETE: "incomplete",
    ShipmentState.ADDRESS_UNDELIVERABLE: "address undeliverable",
    ShipmentState.PROCESSING_ERROR: "processing error: the item failed (see its error_code)",
    ShipmentState.DENIED_PARTY: "denied-party list match",
    ShipmentState.SHIPPING_ERROR: "shipping error",
    ShipmentState.LOST: "lost or missing",
    ShipmentState.DELIVERY_EXCEPTION: "delivery exception",
}

ERROR_STATES = frozenset({
    ShipmentState.INCOMPLETE_REQUEST, ShipmentState.INCOMPLETE, ShipmentState.ADDRESS_UNDELIVERABLE,
    ShipmentState.PROCESSING_ERROR, ShipmentState.DENIED_PARTY, ShipmentState.SHIPPING_ERROR,
    ShipmentState.LOST, ShipmentState.DELIVERY_EXCEPTION,
})
#: the states in which a customer reads the responses
READABLE_STATES = frozenset({ShipmentState.PROGRAMMED, ShipmentState.SHIPPED, ShipmentState.DELIVERED})

"""The customer's order: seal a PIN request and credential requests for one key (PROTOCOL.md §2).

An identity provider does this when it orders a pre-registered key: it picks a transport key of
the factory's published JWKS, makes a response key pair that only it holds, and seals one PIN
request and one credential request per WebAuthn creation options.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any, Protocol

from jwcrypto.jwk import JWK

from station.errors import StationError
from station.protocol.jose import seal_request


def new_response_key(kid: str | None = None) -> JWK:
    """A customer response key pair (EC P-384, use "enc"); the kid is Okta's keyId."""
    return JWK.generate(kty="EC", crv="P-384", use="enc", kid=kid or f"resp-{uuid.uuid4().hex[:20]}")


def public_response_key(key: JWK) -> dict[str, Any]:
    return key.export_public(as_dict=True)


def pick_transport_key(transport_jwks: dict) -> dict:
    """Any key of the published set will do (PROTOCOL.md §1); the first one."""
    keys = transport_jwks.get("keys") or []
    if not keys:
        raise ValueError("the factory publishes no transport key")
    return keys[0]


@dataclass
class SealedItem:
    """One key's worth of sealed requests, and what the customer keeps to open the answers."""

    pin_request_jwe: str
    credential_request_jwes: list[str]
    response_key: JWK = field(repr=False)
    pin_request_id: str
    credential_request_ids: list[str]
    options: list[dict]

    @property
    def customization(self) -> dict:
        """The `product_customizations[]` entry of PROTOCOL.md §4."""
        return {"fido_pin_request": self.pin_request_jwe, "fido_credential_requests": list(self.credential_request_jwes)}


def seal_item(
    *,
    transport_jwks: dict,
    options: list[dict],
    length: int = 6,
    min_pin_length: int | None = None,
    force_pin_change: bool = True,
    origin: str | None = None,
    not_after: datetime | None = None,
    response_key: JWK | None = None,
) -> SealedItem:
    """Seal a PIN request and one credential request per `options` (PublicKeyCredentialCreationOptionsJSON)."""
    transport = pick_transport_key(transport_jwks)
    response_key = response_key or new_response_key()
    public = public_response_key(response_key)
    pin_request: dict[str, Any] = {
        "version": 1,
        "requestId": str(uuid.uuid4()),
        "type": "generate",
        "length": length,
        "forcePINChange": force_pin_change,
        "responseKey": public,
    }
    if min_pin_length is not None:
        pin_request["minPINLength"] = min_pin_length
    pin_jwe = seal_request(pin_request, transport_jwk=transport, kid=transport["kid"])
    cred_jwes, cred_ids = [], []
    for public_key in options:
        request: dict[str, Any] = {
            "version": 1,
            "requestId": str(uuid.uuid4()),
            "responseKey": public,
            "publicKey": public_key,
        }
        if origin:
            request["origin"] = origin
        if not_after:
            request["notAfter"] = not_after.isoformat().replace("+00:00", "Z")
        cred_jwes.append(seal_request(request, transport_jwk=transport, kid=transport["kid"]))
        cred_ids.append(request["requestId"])
    return SealedItem(pin_jwe, cred_jwes, response_key, pin_request["requestId"], cred_ids, list(options))


def shipment_body(items: list[SealedItem | dict], *, email: str = "jane.doe@example.com",
                  recipient: dict | None = None, address: dict | None = None) -> dict:
    """A `POST /v1/fpr/shipments` body (YubiEnterprise shape) with one shipment item per key
    (the service takes exactly one: PROTOCOL.md §4). An item is a SealedItem or its
    `product_customizations` entry; `recipient` and `address` default to an example person."""
    return {
        "delivery_type": 1,
        "recipient": recipient or {
            "recipient_company": "Example Corp",
            "recipient_email": email,
            "recipient_firstname": "Jane",
            "recipient_lastname": "Doe",
            "recipient_telephone": "+1 555 0100",
        },
        "mailing_address": address or {
            "street_line1": "1 Example Way",
            "street_line2": "",
            "city": "Springfield",
            "region": "IL",
            "postal_code": "62701",
            "country_code_2": "US",
        },
        "shipment_items": [
            {
                "product_id": 29,
                "inventory_product_id": 18,
                "product_quantity": 1,
                "customization_id": "CUST01",
                "product_customizations": [item.customization if isinstance(item, SealedItem) else item],
            }
            for item in items
        ],
    }


# -- the fulfillment service as a customer sees it (PROTOCOL.md §4) ---------------------------


class FulfillmentPort(Protocol):
    """What a customer side needs of the fulfillment service: `FulfillmentClient` or a fake.
    Answers may be plain dicts or pydantic models (`model_dump`)."""

    def post_shipment(self, body: dict) -> Any: ...

    def get_shipment(self, shipment_id: str) -> Any: ...

    def jwks(self, kind: str) -> dict: ...


class ShipmentState(IntEnum):
    """`shipment_state_id` (PROTOCOL.md §4, YubiEnterprise's numbering)."""

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


#: responses readable: the poll returns the shipment (8 too: its items carry their error_code)
FINISHED_STATES = (ShipmentState.PROGRAMMED, ShipmentState.SHIPPED, ShipmentState.DELIVERED,
                   ShipmentState.PROCESSING_ERROR)
#: the error states on which the poll stops with ShipmentFailed, and what each means
STOP_STATES = {
    ShipmentState.INCOMPLETE_REQUEST: "incomplete shipping request",
    ShipmentState.INCOMPLETE: "incomplete",
    ShipmentState.ADDRESS_UNDELIVERABLE: "address undeliverable",
    ShipmentState.DENIED_PARTY: "denied-party list match",
    ShipmentState.SHIPPING_ERROR: "shipping error",
    ShipmentState.LOST: "lost or missing",
    ShipmentState.DELIVERY_EXCEPTION: "delivery exception",
}


class ShipmentTimeout(StationError):
    """A shipment was not finished (programmed, shipped, delivered or processing error) in the time allowed."""

    code = "shipment_timeout"


class ShipmentFailed(StationError):
    """The fulfillment provider stopped a shipment in an error state (PROTOCOL.md §4)."""

    code = "shipment_failed"


def as_json(answer: Any) -> dict:
    """A service answer as a JSON dict, whether the port gave a dict or a pydantic model."""
    return answer.model_dump(mode="json") if hasattr(answer, "model_dump") else answer


def post_shipment(port: FulfillmentPort, body: dict) -> str:
    """`POST /v1/fpr/shipments` → the `shipment_id`."""
    return as_json(port.post_shipment(body))["shipment_id"]


def wait_shipment(
    port: FulfillmentPort,
    shipment_id: str,
    *,
    timeout: float,
    poll_interval: float = 0.2,
    on_poll: Callable[[dict], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Poll `GET /v1/fpr/shipments/{id}` until its responses are readable (102, 103, 104) or it
    failed in processing (8: its items carry `error_code`), and return that shipment. Raises
    ShipmentFailed on any other error state and ShipmentTimeout when time runs out."""
    deadline = clock() + timeout
    while True:
        shipment = as_json(port.get_shipment(shipment_id))
        if on_poll:
            on_poll(shipment)
        state = shipment["shipment_state"]["shipment_state_id"]
        if state in FINISHED_STATES:
            return shipment
        if state in STOP_STATES:
            raise ShipmentFailed(f"shipment {shipment_id} was stopped by the fulfillment provider: "
                                 f"state {state} ({STOP_STATES[state]})")
        if clock() >= deadline:
            raise ShipmentTimeout(f"shipment {shipment_id} still in state {state} after {timeout:g} s")
        sleep(poll_interval)

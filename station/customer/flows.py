"""The customer side's orchestration of both vendors' flows, one key per shipment:

- **Yubico, Okta** (the Okta Workflows card sequence): Okta `enroll` with the factory's transport
  key → Okta seals the requests → shipment → poll → Okta `activate` with the sealed responses,
  the serial, the firmware version and the factory's signing keys → Okta `send-pin` (Okta mails
  the PIN). A key the factory could not make: Okta `mark-error`.
- **Yubico, Entra ID** (its FIDO Connector): Graph `creationOptions` (a challenge that outlives
  the shipping) → we seal the options' `publicKey` (PROTOCOL.md §2.2, origin from the options'
  RP ID, `notAfter` the challenge timeout) → shipment → poll → open and check the responses
  (§3) → Graph `fido2Methods` with the key's serial in its display name → the PIN to the
  delivery hook.
- **HID, PingOne**: PingOne FIDO2 device (ACTIVATION_REQUIRED, its options normalised) → seal →
  shipment → poll → open → PingOne activation (origin https://{rp.id}) → the PIN to the hook.

Each order is one shipment with exactly one item (`product_quantity` 1) to that user's own
recipient and address (PROTOCOL.md §4). `collect` polls until the responses are readable (102,
103, 104; or 8, whose item carries its error code) and finishes the order, or stops on any other
error state (`orders.ShipmentFailed`): the order then fails with `shipment_failed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from station.customer.graph import GraphClient, display_name
from station.customer.okta import OktaClient
from station.customer.orders import (
    FulfillmentPort,
    SealedItem,
    ShipmentFailed,
    as_json,
    pick_transport_key,
    post_shipment,
    seal_item,
    shipment_body,
    wait_shipment,
)
from station.customer.pingone import PingOneClient
from station.customer.verify import MailedPin, open_item_responses
from station.errors import StationError

PIN_LENGTH = 6

#: Where a PIN goes for Entra and PingOne (Okta mails its own): `deliver(order, pin)`.
PinDelivery = Callable[["Order", MailedPin], None]


@dataclass(frozen=True)
class Recipient:
    """Who receives one key, and where (YubiEnterprise's recipient and mailing address)."""

    first_name: str
    last_name: str
    email: str
    company: str = "Example Corp"
    telephone: str = "+1 555 0100"
    street_line1: str = "1 Example Way"
    street_line2: str = ""
    city: str = "Springfield"
    region: str = "IL"
    postal_code: str = "62701"
    country_code_2: str = "US"

    def shipment(self, customization: dict) -> dict:
        """The `POST /v1/fpr/shipments` body for one key to this recipient."""
        return shipment_body([customization], recipient={
            "recipient_company": self.company, "recipient_email": self.email,
            "recipient_firstname": self.first_name, "recipient_lastname": self.last_name,
            "recipient_telephone": self.telephone,
        }, address={
            "street_line1": self.street_line1, "street_line2": self.street_line2, "city": self.city,
            "region": self.region, "postal_code": self.postal_code, "country_code_2": self.country_code_2,
        })


@dataclass
class Order:
    """One key for one user: what was ordered and, once finished, what came of it."""

    provider: str
    user_id: str
    recipient: Recipient
    shipment_id: str = ""
    enrollment_id: str = ""  # Okta's authenticatorEnrollmentId, PingOne's device id
    sealed: SealedItem | None = field(default=None, repr=False)
    origin: str = ""
    rp_id: str = ""
    registered: dict | None = None  # the provider's answer: Okta activation, Graph method, PingOne device
    serial_number: str | None = None
    firmware_version: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.registered is not None and self.error_code is None

    def fail(self, code: str, message: str) -> Order:
        self.error_code, self.error_message = code, message
        return self


def wait_for_shipment(fulfillment: FulfillmentPort, order: Order, *, timeout: float,
                      poll_interval: float = 0.2, on_poll: Callable[[dict], None] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> dict:
    """The shipment once its responses are readable (or its item failed). Raises ShipmentFailed
    on the other error states, ShipmentTimeout when time runs out. `sleep(poll_interval)` runs
    between two polls: a caller that hears of the shipment's progress (the demo, whose station
    runs in the same process) waits for that instead, returning early."""
    return wait_shipment(fulfillment, order.shipment_id, timeout=timeout, poll_interval=poll_interval,
                         on_poll=on_poll, sleep=sleep)


def collect(flow, fulfillment: FulfillmentPort, order: Order, *, timeout: float, poll_interval: float = 0.2,
            sleep: Callable[[float], None] = time.sleep) -> Order:
    """Wait for the order's shipment and finish the order (activate or register, PIN delivery);
    a shipment stopped in an error state fails the order (`shipment_failed`). ShipmentTimeout."""
    try:
        shipment = wait_for_shipment(fulfillment, order, timeout=timeout, poll_interval=poll_interval, sleep=sleep)
    except ShipmentFailed as exc:
        return flow.failed(order, exc.code, exc.message)
    return flow.finish(order, shipment)


def _product(order: Order, shipment: dict) -> dict | None:
    """The item's product data, or None with the order failed (factory error, error state)."""
    state = shipment["shipment_state"]["shipment_state_id"]
    items = shipment.get("shipment_items") or []
    products = items[0].get("product_data") if items else None
    if products and "error_code" in products[0]:
        order.fail(products[0]["error_code"], products[0].get("error_message", ""))
        return None
    if not products:
        order.fail("shipment_failed", f"shipment {order.shipment_id} is in state {state} without responses")
        return None
    product = products[0]
    order.serial_number, order.firmware_version = product.get("serial_number"), product.get("firmware_version")
    return product


class OktaWorkflow:
    """Yubico's Okta Workflows sequence, through Okta's preregistration API."""

    provider = "Okta"

    def __init__(self, okta: OktaClient, fulfillment: FulfillmentPort) -> None:
        self.okta, self.fulfillment = okta, fulfillment

    def order(self, user_id: str, recipient: Recipient) -> Order:
        transport = pick_transport_key(self.fulfillment.jwks("transport"))
        enrolled = self.okta.enroll(user_id=user_id, transport_key=transport)
        order = Order(self.provider, user_id, recipient,
                      enrollment_id=enrolled["credRequests"][0]["authenticatorEnrollmentId"])
        customization = {"fido_pin_request": enrolled["pinRequestJwe"],
                         "fido_credential_requests": [c["credRequestJwe"] for c in enrolled["credRequests"]]}
        order.shipment_id = post_shipment(self.fulfillment, recipient.shipment(customization))
        return order

    def failed(self, order: Order, code: str, message: str) -> Order:
        """The key will not come: Okta's factor becomes FULFILLMENT_ERRORED."""
        order.fail(code, message)
        self.okta.mark_error(order.user_id, order.enrollment_id)
        return order

    def finish(self, order: Order, shipment: dict) -> Order:
        product = _product(order, shipment)
        if product is None:
            return self.failed(order, order.error_code or "shipment_failed", order.error_message or "")
        try:
            order.registered = self.okta.activate(
                user_id=order.user_id, enrollment_id=order.enrollment_id,
                pin_response_jwe=product["fido_pin_response"],
                cred_response_jwes=product["fido_credential_responses"],
                serial=product.get("serial_number") or "", version=product.get("firmware_version") or "",
                signing_jwks=self.fulfillment.jwks("signing")["keys"])
            self.okta.send_pin(user_id=order.user_id, enrollment_id=order.enrollment_id)
        except StationError as exc:
            return order.fail(exc.code, exc.message)
        return order


class _SealingConnector:
    """What the Entra and PingOne connectors share: seal the provider's options, open the answers."""

    provider = ""

    def __init__(self, fulfillment: FulfillmentPort, deliver_pin: PinDelivery) -> None:
        self.fulfillment = fulfillment
        self.deliver_pin = deliver_pin  # required: a PIN nobody receives makes the key useless

    def _ship(self, order: Order, options: dict, not_after: datetime | None) -> Order:
        order.rp_id = options["rp"]["id"]
        order.origin = f"https://{order.rp_id}"
        order.sealed = seal_item(transport_jwks=self.fulfillment.jwks("transport"), options=[options],
                                 length=PIN_LENGTH, min_pin_length=PIN_LENGTH, force_pin_change=True,
                                 origin=order.origin, not_after=not_after)
        order.shipment_id = post_shipment(self.fulfillment, order.recipient.shipment(order.sealed.customization))
        return order

    def failed(self, order: Order, code: str, message: str) -> Order:
        return order.fail(code, message)

    def finish(self, order: Order, shipment: dict) -> Order:
        product = _product(order, shipment)
        if product is None or order.sealed is None:
            return order
        try:  # each order stands alone: one bad key does not hide the others' outcome
            opened = open_item_responses(sealed=order.sealed, pin_response_jwe=product["fido_pin_response"],
                                         credential_response_jwes=product["fido_credential_responses"],
                                         signing_jwks=self.fulfillment.jwks("signing"))
            order.registered = self._register(order, opened.credentials[0], opened.serial_number)
        except StationError as exc:
            return order.fail(exc.code, exc.message)
        self.deliver_pin(order, opened.pin)
        return order

    def _register(self, order: Order, credential: dict, serial: str | None) -> dict:
        raise NotImplementedError


class EntraConnector(_SealingConnector):
    """Yubico's FIDO Connector for Entra ID, through Microsoft Graph (beta)."""

    provider = "Entra ID"

    def __init__(self, graph: GraphClient, fulfillment: FulfillmentPort, *, deliver_pin: PinDelivery,
                 challenge_timeout_minutes: int | None = None) -> None:
        super().__init__(fulfillment, deliver_pin)
        self.graph = graph
        self.challenge_timeout_minutes = challenge_timeout_minutes

    def order(self, user_id: str, recipient: Recipient) -> Order:
        options = self.graph.creation_options(user_id, self.challenge_timeout_minutes)
        expires = datetime.fromisoformat(options["challengeTimeoutDateTime"].replace("Z", "+00:00"))
        return self._ship(Order(self.provider, user_id, recipient), options["publicKey"], expires)

    def _register(self, order: Order, credential: dict, serial: str | None) -> dict:
        return self.graph.register(order.user_id, display_name(serial), credential)


class PingOneConnector(_SealingConnector):
    """HID's flow for PingOne: a FIDO2 device per key, activated with the key's attestation."""

    provider = "PingOne"

    def __init__(self, pingone: PingOneClient, fulfillment: FulfillmentPort, *,
                 deliver_pin: PinDelivery) -> None:
        super().__init__(fulfillment, deliver_pin)
        self.pingone = pingone

    def order(self, user_id: str, recipient: Recipient) -> Order:
        device, options = self.pingone.create_fido2_device(user_id)
        order = Order(self.provider, user_id, recipient, enrollment_id=device["id"])
        return self._ship(order, options, None)

    def _register(self, order: Order, credential: dict, serial: str | None) -> dict:
        return self.pingone.activate_fido2_device(order.user_id, order.enrollment_id, origin=order.origin,
                                                  credential=credential)


def shipment_of(answer: Any) -> dict:
    return as_json(answer)

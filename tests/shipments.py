"""What a customer posts and checks, shared by the daemon, fleet and hardening tests."""

from __future__ import annotations

from station.customer.orders import shipment_body
from station.protocol.jose import open_response


def post_each(customer, items) -> list[str]:
    """One shipment per sealed item (PROTOCOL.md §4: one key per shipment): their ids, in order."""
    return [customer.post_shipment(shipment_body([item])).shipment_id for item in items]


def merged_view(customer, shipment_ids) -> dict:
    """The shipments of `post_each` read back as one view: every item in order, and the state
    they share (or the list of their states when they differ)."""
    ids = [shipment_ids] if isinstance(shipment_ids, str) else list(shipment_ids)
    views = [customer.get_shipment(i).model_dump(mode="json") for i in ids]
    states = sorted({v["shipment_state"]["shipment_state_id"] for v in views})
    return {"shipment_state": {"shipment_state_id": states[0] if len(states) == 1 else states},
            "shipment_items": [item for v in views for item in v["shipment_items"]]}


def check_fulfilled(customer, shipment_ids, items):
    shipment = merged_view(customer, shipment_ids)
    assert shipment["shipment_state"]["shipment_state_id"] == 102  # programmed
    serials = set()
    for view, sealed in zip(shipment["shipment_items"], items):
        product = view["product_data"][0]
        pin = open_response(product["fido_pin_response"], response_private_key=sealed.response_key,
                            signing_jwks=customer.jwks("signing"), request_jwe=sealed.pin_request_jwe)
        for jwe, req in zip(product["fido_credential_responses"], sealed.credential_request_jwes):
            open_response(jwe, response_private_key=sealed.response_key, signing_jwks=customer.jwks("signing"),
                          request_jwe=req)
        serials.add(pin.serial_number)
    assert len(serials) == len(items)  # one key per item

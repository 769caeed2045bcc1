"""What a customer checks of a fulfilled shipment, shared by the daemon and fleet tests."""

from __future__ import annotations

from station.protocol.jose import open_response


def check_fulfilled(customer, shipment_id, items):
    shipment = customer.get_shipment(shipment_id).model_dump(mode="json")
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

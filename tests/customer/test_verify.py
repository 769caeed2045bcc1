"""open_item_responses: every response answers its own request and names one key; MailedPin."""

from __future__ import annotations

import pickle

import pytest

from station.customer.orders import seal_item
from station.customer.verify import MailedPin, open_item_responses
from station.protocol.jose import ResponseRejected, open_response, request_digest, seal_response

OPTIONS = {
    "rp": {"id": "example.com", "name": "Example"},
    "user": {"id": "dXNlci0x", "name": "alice", "displayName": "Alice"},
    "challenge": "Y2hhbGxlbmdlLWNoYWxsZW5nZS1jaGFsbGVuZ2U",
    "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
    "authenticatorSelection": {"residentKey": "required", "userVerification": "required"},
    "attestation": "direct",
}


@pytest.fixture
def item(factory):
    """A two-credential item, programmed; → (sealed, product_data)."""
    sealed = seal_item(transport_jwks=factory.jwks("transport"), options=[OPTIONS, dict(OPTIONS, rp={"id": "example.org", "name": "Org"})])
    product, _ = factory.program(sealed.pin_request_jwe, sealed.credential_request_jwes)
    return sealed, product


def open_all(sealed, factory, pin_jwe, cred_jwes):
    return open_item_responses(sealed=sealed, pin_response_jwe=pin_jwe, credential_response_jwes=cred_jwes,
                               signing_jwks=factory.jwks("signing"))


def payload_of(jwe, request_jwe, sealed, factory):
    return open_response(jwe, response_private_key=sealed.response_key, signing_jwks=factory.jwks("signing"),
                         request_jwe=request_jwe)


def reseal(model, sealed, factory, **changes):
    """What a faulty factory might sign: the payload with `changes` (wire names)."""
    payload = type(model).model_validate({**model.model_dump(mode="json", by_alias=True), **changes})
    return seal_response(payload, response_key=sealed.response_key.export_public(as_dict=True), keystore=factory.keystore)


def test_opens_the_pin_and_every_credential_in_order(item, factory):
    sealed, product = item
    opened = open_all(sealed, factory, product["fido_pin_response"], product["fido_credential_responses"])
    assert [c["id"] for c in opened.credentials] == [
        payload_of(j, r, sealed, factory).credential.id
        for j, r in zip(product["fido_credential_responses"], sealed.credential_request_jwes)
    ]
    assert opened.force_pin_change is True and len(opened.pin) == 6
    assert opened.firmware_version == product["firmware_version"] and opened.serial_number == product["serial_number"]


def test_credential_responses_in_the_wrong_order_are_refused_by_request_digest(item, factory):
    sealed, product = item
    with pytest.raises(ResponseRejected, match="requestDigest"):
        open_all(sealed, factory, product["fido_pin_response"], product["fido_credential_responses"][::-1])


def test_a_response_for_another_request_id_is_refused(item, factory):
    sealed, product = item
    pin = payload_of(product["fido_pin_response"], sealed.pin_request_jwe, sealed, factory)
    wrong = reseal(pin, sealed, factory, requestId="another-request")
    with pytest.raises(ResponseRejected, match="another requestId"):
        open_all(sealed, factory, wrong, product["fido_credential_responses"])


def test_a_credential_response_in_the_pin_slot_is_refused(item, factory):
    sealed, product = item
    cred = payload_of(product["fido_credential_responses"][0], sealed.credential_request_jwes[0], sealed, factory)
    as_pin_answer = reseal(cred, sealed, factory, requestId=sealed.pin_request_id,
                           requestDigest=request_digest(sealed.pin_request_jwe))
    with pytest.raises(ResponseRejected, match="does not hold a PIN response"):
        open_all(sealed, factory, as_pin_answer, product["fido_credential_responses"])


def test_a_pin_response_in_a_credential_slot_is_refused(item, factory):
    sealed, product = item
    pin = payload_of(product["fido_pin_response"], sealed.pin_request_jwe, sealed, factory)
    as_cred_answer = reseal(pin, sealed, factory, requestId=sealed.credential_request_ids[0],
                            requestDigest=request_digest(sealed.credential_request_jwes[0]))
    with pytest.raises(ResponseRejected, match="holds a PIN response"):
        open_all(sealed, factory, product["fido_pin_response"], [as_cred_answer, product["fido_credential_responses"][1]])


def test_responses_naming_different_keys_are_refused(item, factory):
    sealed, product = item
    cred = payload_of(product["fido_credential_responses"][1], sealed.credential_request_jwes[1], sealed, factory)
    other_key = reseal(cred, sealed, factory, serialNumber="99999999")
    with pytest.raises(ResponseRejected, match="different keys"):
        open_all(sealed, factory, product["fido_pin_response"], [product["fido_credential_responses"][0], other_key])


def test_mailed_pin_never_shows_its_digits():
    pin = MailedPin("482913")
    for shown in (repr(pin), str(pin), f"{pin}", f"{pin!r}", "%s" % pin):
        assert "482913" not in shown
    assert pin.reveal() == "482913" and len(pin) == 6
    with pytest.raises(TypeError):
        pickle.dumps(pin)
    with pytest.raises(ValueError) as caught:
        MailedPin("12a4")
    assert "12a4" not in str(caught.value)

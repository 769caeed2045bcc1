"""The Okta-like tenant: enroll → factory → activate → sign-in, and every refusal of activate."""

from __future__ import annotations

import pytest
from fido2.utils import websafe_decode

from station.customer.okta import OktaTenant, OktaUser, UnknownEnrollment
from station.customer.orders import seal_item
from station.customer.signin import sign_in
from station.customer.verify import MailedPin, NotGenuine
from station.protocol.jose import ResponseRejected, open_request, open_response, seal_response
from station.protocol.keys import KeyStore
from station.protocol.messages import CredentialRequest
from station.virtual import open_virtual

USER = OktaUser("00u1a2b3c4d5e6f7g8h9", "jdoe@acme.com", "Jane Doe")
DOMAIN = "acme.okta.com"


@pytest.fixture
def tenant(factory) -> OktaTenant:
    return OktaTenant(DOMAIN, factory.jwks("transport"), factory.jwks("signing"), trust_test_ca=True)


def program(factory, enrollment):
    body = enrollment.body
    return factory.program(body["pinRequestJwe"], [c["credRequestJwe"] for c in body["credRequests"]])


def cred_responses(enrollment, product):
    return [
        {"authenticatorEnrollmentId": enrollment.authenticator_enrollment_id, "credResponseJwe": jwe}
        for jwe in product["fido_credential_responses"]
    ]


def test_enroll_makes_the_okta_shapes_with_a_response_key_per_enrollment(tenant, factory):
    first, second = tenant.enroll(USER), tenant.enroll(USER)
    body = first.body
    assert set(body) == {"fulfillmentProvider", "pinRequestJwe", "credRequests"}
    [cred] = body["credRequests"]
    assert cred["authenticatorEnrollmentId"] == first.authenticator_enrollment_id
    assert cred["keyId"] == first.sealed.response_key["kid"] != second.key_id
    request = open_request(cred["credRequestJwe"], keystore=factory.keystore)
    assert isinstance(request, CredentialRequest)
    assert request.response_key.kid == cred["keyId"]
    options = request.public_key
    assert options.rp.id == DOMAIN and request.effective_origin == f"https://{DOMAIN}"
    assert options.alg_preference() == [-7, -257]
    assert options.authenticator_selection.resident_key == "required"
    assert options.authenticator_selection.user_verification == "required"
    assert options.attestation == "direct"
    assert len(websafe_decode(options.challenge)) == 32
    assert first.challenge != second.challenge


def test_okta_round_trip_ends_in_a_sign_in_after_the_forced_pin_change(tenant, factory):
    enrollment = tenant.enroll(USER)
    product, statefile = program(factory, enrollment)
    activation = tenant.activate(enrollment, product["fido_pin_response"], cred_responses(enrollment, product))

    assert activation.body == {
        "fulfillmentProvider": "yubico",
        "userId": USER.id,
        "authenticatorEnrollmentIds": [enrollment.authenticator_enrollment_id],
    }
    assert activation.firmware_version == product["firmware_version"]
    assert activation.serial_number == product["serial_number"]
    assert len(activation.pin) == 6 and "******" in repr(activation) and activation.pin.reveal() not in repr(activation)
    [stored] = tenant.credentials(USER)
    assert stored.user_id == USER.id.encode() and stored.aaguid == "a25342c0-3cdc-4414-8e46-f4807fca511c"

    key = open_virtual(statefile)
    try:
        before = stored.sign_count
        new_pin = MailedPin("583920")
        first = sign_in(key, rp_id=DOMAIN, origin=tenant.origin, credentials=tenant.credentials(USER),
                        pin=activation.pin, new_pin=new_pin)
        assert first.pin_change_forced and first.first_refusal == "PIN_INVALID"  # CTAP 2.1 §6.5.5.7.2
        assert first.user_verified and first.sign_count > before
        assert first.credential_id == stored.credential_id and first.user_id == USER.id.encode()
        assert new_pin.reveal() not in repr(first) and activation.pin.reveal() not in repr(first)

        again = sign_in(key, rp_id=DOMAIN, origin=tenant.origin, credentials=tenant.credentials(USER),
                        pin=new_pin, new_pin=new_pin)
        assert not again.pin_change_forced and again.first_refusal is None
        assert again.sign_count > first.sign_count and stored.sign_count == again.sign_count
    finally:
        key.close()


def test_activate_refuses_a_tampered_response(tenant, factory):
    enrollment = tenant.enroll(USER)
    product, _ = program(factory, enrollment)
    jwe = product["fido_credential_responses"][0]
    head, rest = jwe.split(".", 1)
    parts = rest.split(".")
    parts[2] = parts[2][:10] + ("A" if parts[2][10] != "A" else "B") + parts[2][11:]  # the ciphertext
    tampered = [{"authenticatorEnrollmentId": enrollment.authenticator_enrollment_id,
                 "credResponseJwe": ".".join([head, *parts])}]
    with pytest.raises(ResponseRejected, match="does not decrypt"):
        tenant.activate(enrollment, product["fido_pin_response"], tampered)
    assert tenant.credentials(USER) == []


def _resealed(jwe, enrollment, request_jwe, factory, keystore):
    """The same payload, signed by `keystore`'s signing key and sealed to the enrollment again."""
    payload = open_response(jwe, response_private_key=enrollment.sealed.response_key,
                            signing_jwks=factory.jwks("signing"), request_jwe=request_jwe)
    public = enrollment.sealed.response_key.export_public(as_dict=True)
    return seal_response(payload, response_key=public, keystore=keystore)


def test_activate_refuses_a_response_signed_by_an_unknown_key(tenant, factory, tmp_path):
    enrollment = tenant.enroll(USER)
    product, _ = program(factory, enrollment)
    stranger = KeyStore.init(tmp_path / "stranger")
    forged = _resealed(product["fido_pin_response"], enrollment, enrollment.sealed.pin_request_jwe, factory, stranger)
    with pytest.raises(ResponseRejected, match="signing key not in the signing JWKS"):
        tenant.activate(enrollment, forged, cred_responses(enrollment, product))


def test_activate_refuses_a_forged_signature_under_a_published_kid(factory, tmp_path):
    """The tenant's JWKS holds another key under the factory's signing kid: the signature fails."""
    impostor = KeyStore.init(tmp_path / "impostor")
    kid = factory.jwks("signing")["keys"][0]["kid"]
    wrong_jwks = {"keys": [dict(impostor.jwks("signing")["keys"][0], kid=kid)]}
    tenant = OktaTenant(DOMAIN, factory.jwks("transport"), wrong_jwks, trust_test_ca=True)
    enrollment = tenant.enroll(USER)
    product, _ = program(factory, enrollment)
    with pytest.raises(ResponseRejected, match="signature does not verify"):
        tenant.activate(enrollment, product["fido_pin_response"], cred_responses(enrollment, product))


def test_activate_refuses_a_response_swapped_from_another_request(tenant, factory):
    enrollment = tenant.enroll(USER)
    product, _ = program(factory, enrollment)
    # another request of the same customer, sealed to the same response key (same keyId)
    other = seal_item(transport_jwks=factory.jwks("transport"), options=[tenant.creation_options(USER)],
                      response_key=enrollment.sealed.response_key)
    other_product, _ = factory.program(other.pin_request_jwe, other.credential_request_jwes)
    swapped = [{"authenticatorEnrollmentId": enrollment.authenticator_enrollment_id,
                "credResponseJwe": other_product["fido_credential_responses"][0]}]
    with pytest.raises(ResponseRejected, match="requestDigest"):
        tenant.activate(enrollment, product["fido_pin_response"], swapped)
    with pytest.raises(ResponseRejected, match="requestDigest"):
        tenant.activate(enrollment, other_product["fido_pin_response"], cred_responses(enrollment, product))


def test_with_vendor_roots_only_a_virtual_key_is_not_genuine(factory):
    strict = OktaTenant(DOMAIN, factory.jwks("transport"), factory.jwks("signing"), trust_test_ca=False)
    enrollment = strict.enroll(USER)
    product, _ = program(factory, enrollment)
    with pytest.raises(NotGenuine):
        strict.activate(enrollment, product["fido_pin_response"], cred_responses(enrollment, product))
    assert strict.credentials(USER) == []


def test_activate_refuses_an_unknown_or_already_activated_enrollment(tenant, factory):
    enrollment = tenant.enroll(USER)
    product, _ = program(factory, enrollment)
    other_tenant = OktaTenant(DOMAIN, factory.jwks("transport"), factory.jwks("signing"), trust_test_ca=True)
    with pytest.raises(UnknownEnrollment):
        other_tenant.activate(enrollment, product["fido_pin_response"], cred_responses(enrollment, product))
    tenant.activate(enrollment, product["fido_pin_response"], cred_responses(enrollment, product))
    with pytest.raises(UnknownEnrollment):
        tenant.activate(enrollment, product["fido_pin_response"], cred_responses(enrollment, product))


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda e, p: [{"authenticatorEnrollmentId": "pae-other", "credResponseJwe": p["fido_credential_responses"][0]}],
         "another authenticatorEnrollmentId"),
        (lambda e, p: [{"authenticatorEnrollmentId": e.authenticator_enrollment_id}], "no credResponseJwe"),
        (lambda e, p: [], "0 credential responses for 1 requests"),
        (lambda e, p: [{"authenticatorEnrollmentId": e.authenticator_enrollment_id,
                        "credResponseJwe": p["fido_pin_response"]}], "requestDigest"),
    ],
)
def test_activate_refuses_malformed_cred_responses(tenant, factory, mangle, message):
    enrollment = tenant.enroll(USER)
    product, _ = program(factory, enrollment)
    with pytest.raises(ResponseRejected, match=message):
        tenant.activate(enrollment, product["fido_pin_response"], mangle(enrollment, product))

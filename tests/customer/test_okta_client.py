"""OktaClient against the Okta stand-in: all seven preregistration endpoints, each documented
refusal, throttling, and the key's sign-in at Okta after activation."""

from __future__ import annotations

import httpx
import pytest

from station.customer.okta import OktaError, OktaNotFound, OktaThrottled, OktaUnauthorized
from station.customer.settings import OktaSettings
from station.customer.signin import ProviderSignIn, SignInFailed, sign_in_with
from station.customer.verify import MailedPin
from station.customer.okta import OktaClient
from station.protocol.jose import open_request
from station.protocol.messages import CredentialRequest, PinRequest
from station.virtual import open_virtual

OKTA_DOMAIN = "acme.okta.com"  # the org of the okta fixture


def enroll(okta, factory):
    transport = factory.jwks("transport")["keys"][0]
    return okta.client.enroll(user_id=okta.user_id, transport_key=transport)


def program(factory, enrolled):
    return factory.program(enrolled["pinRequestJwe"], [c["credRequestJwe"] for c in enrolled["credRequests"]])


def activate(okta, factory, enrolled, product, **changes):
    args = dict(user_id=okta.user_id, enrollment_id=enrolled["credRequests"][0]["authenticatorEnrollmentId"],
                pin_response_jwe=product["fido_pin_response"], cred_response_jwes=product["fido_credential_responses"],
                serial=product["serial_number"], version=product["firmware_version"],
                signing_jwks=factory.jwks("signing")["keys"])
    args.update(changes)
    return okta.client.activate(**args)


def raw(okta, method, path, **kw):
    headers = {"Authorization": f"SSWS {okta.settings.secret()}", **kw.pop("headers", {})}
    return httpx.request(method, okta.url + "/webauthn-registration/api/v1" + path, headers=headers, **kw)


def test_enroll_answers_okta_s_shape_with_requests_sealed_to_our_transport_key(okta, factory):
    enrolled = enroll(okta, factory)
    assert set(enrolled) == {"credRequests", "fulfillmentProvider", "pinRequestJwe", "userId"}
    [cred] = enrolled["credRequests"]
    assert set(cred) == {"authenticatorEnrollmentId", "credRequestJwe", "keyId"}
    pin_request = open_request(enrolled["pinRequestJwe"], keystore=factory.keystore)
    request = open_request(cred["credRequestJwe"], keystore=factory.keystore)
    assert isinstance(pin_request, PinRequest) and pin_request.force_pin_change and pin_request.length == 6
    assert isinstance(request, CredentialRequest)
    assert request.public_key.rp.id == OKTA_DOMAIN and request.effective_origin == f"https://{OKTA_DOMAIN}"
    assert request.response_key.kid == cred["keyId"] == pin_request.response_key.kid
    [factor] = okta.client.list_enrollments(okta.user_id)
    assert factor["id"] == cred["authenticatorEnrollmentId"] and factor["status"] == "PENDING_ACTIVATION"
    assert factor["factorType"] == "webauthn" and factor["_links"]["self"]["href"].endswith(factor["id"])


def test_activate_send_pin_and_sign_in_at_okta(okta, factory):
    enrolled = enroll(okta, factory)
    product, statefile = program(factory, enrolled)
    enrollment_id = enrolled["credRequests"][0]["authenticatorEnrollmentId"]
    answer = activate(okta, factory, enrolled, product)
    assert answer == {"authenticatorEnrollmentIds": [enrollment_id], "fulfillmentProvider": "yubico",
                      "userId": okta.user_id}
    [factor] = okta.client.list_enrollments(okta.user_id)
    assert factor["status"] == "ACTIVE" and factor["profile"]["serial"] == product["serial_number"]

    assert okta.user_id not in okta.standin.outbox
    okta.client.send_pin(user_id=okta.user_id, enrollment_id=enrollment_id)
    mailed = MailedPin(okta.standin.outbox[okta.user_id].reveal())
    okta.client.send_pin(user_id=okta.user_id, enrollment_id=enrollment_id)  # resend: allowed before sign-in

    key = open_virtual(statefile)
    try:
        result = sign_in_with(key, relying_party=ProviderSignIn(okta.url, okta.user_id),
                              origin=f"https://{OKTA_DOMAIN}", pin=mailed, new_pin=MailedPin("80413927"))
    finally:
        key.close()
    assert result.pin_change_forced and result.user_verified and result.rp_id == OKTA_DOMAIN
    with pytest.raises(OktaError, match="after the first sign-in") as refused:
        okta.client.send_pin(user_id=okta.user_id, enrollment_id=enrollment_id)
    assert refused.value.status == 400 and refused.value.provider_code == "E0000001"


def test_a_sign_in_with_the_wrong_origin_is_refused_by_okta(okta, factory):
    enrolled = enroll(okta, factory)
    product, statefile = program(factory, enrolled)
    activate(okta, factory, enrolled, product)
    key = open_virtual(statefile)
    try:
        with pytest.raises(SignInFailed):
            sign_in_with(key, relying_party=ProviderSignIn(okta.url, okta.user_id), origin="https://evil.example",
                         pin=MailedPin("123456"), new_pin=MailedPin("80413927"))
    finally:
        key.close()


def test_activate_refuses_a_second_activation_a_tampered_response_and_a_foreign_signing_key(okta, factory, tmp_path):
    from station.protocol.keys import KeyStore

    enrolled = enroll(okta, factory)
    product, _ = program(factory, enrolled)
    stranger = KeyStore.init(tmp_path / "stranger").jwks("signing")["keys"]
    with pytest.raises(OktaError, match="not in yubicoSigningJwks") as foreign:
        activate(okta, factory, enrolled, product, signing_jwks=stranger)
    assert foreign.value.provider_code == "E0000001"
    jwe = product["fido_credential_responses"][0]
    head, rest = jwe.split(".", 1)
    parts = rest.split(".")
    parts[2] = ("B" if parts[2][0] == "A" else "A") + parts[2][1:]
    with pytest.raises(OktaError, match="does not decrypt"):
        activate(okta, factory, enrolled, product, cred_response_jwes=[".".join([head, *parts])])
    with pytest.raises(OktaError, match="requestDigest"):
        activate(okta, factory, enrolled, product, cred_response_jwes=[product["fido_pin_response"]])
    with pytest.raises(OktaError, match="serial differs"):
        activate(okta, factory, enrolled, product, serial="1")
    activate(okta, factory, enrolled, product)
    with pytest.raises(OktaError, match="not PENDING_ACTIVATION"):
        activate(okta, factory, enrolled, product)


def test_activate_accepts_okta_s_other_spelling_credResponseJWE(okta, factory):
    enrolled = enroll(okta, factory)
    product, _ = program(factory, enrolled)
    enrollment_id = enrolled["credRequests"][0]["authenticatorEnrollmentId"]
    answer = raw(okta, "POST", "/activate", json={
        "credResponses": [{"authenticatorEnrollmentId": enrollment_id,
                           "credResponseJWE": product["fido_credential_responses"][0]}],
        "fulfillmentProvider": "yubico", "pinResponseJwe": product["fido_pin_response"],
        "serial": product["serial_number"], "userId": okta.user_id, "version": product["firmware_version"],
        "yubicoSigningJwks": factory.jwks("signing")["keys"]})
    assert answer.status_code == 200, answer.text


def test_mark_error_delete_and_initiate_fulfillment_request(okta, factory):
    enrolled = enroll(okta, factory)
    enrollment_id = enrolled["credRequests"][0]["authenticatorEnrollmentId"]
    okta.client.mark_error(okta.user_id, enrollment_id)
    assert okta.client.list_enrollments(okta.user_id)[0]["status"] == "FULFILLMENT_ERRORED"
    okta.client.delete_enrollment(okta.user_id, enrollment_id)
    assert okta.client.list_enrollments(okta.user_id) == []
    with pytest.raises(OktaNotFound, match="E0000007"):
        okta.client.delete_enrollment(okta.user_id, enrollment_id)
    okta.client.initiate_fulfillment_request(user_id=okta.user_id, fulfillment_data=[
        {"productId": "29", "inventoryProductId": "18", "customizationId": "CUST01"}])
    assert okta.standin.fulfillment_requests[0]["userId"] == okta.user_id


def test_send_pin_before_activation_is_refused(okta, factory):
    enrolled = enroll(okta, factory)
    with pytest.raises(OktaError, match="PENDING_ACTIVATION") as refused:
        okta.client.send_pin(user_id=okta.user_id, enrollment_id=enrolled["credRequests"][0]["authenticatorEnrollmentId"])
    assert refused.value.status == 400


def test_an_unknown_user_is_E0000007(okta, factory):
    transport = factory.jwks("transport")["keys"][0]
    with pytest.raises(OktaNotFound) as missing:
        okta.client.enroll(user_id="00unobody00000000000", transport_key=transport)
    assert missing.value.status == 404 and "(User)" in str(missing.value)
    with pytest.raises(OktaNotFound):
        okta.client.list_enrollments("00unobody00000000000")


def test_a_wrong_api_token_is_E0000011_and_never_echoed(okta, factory):
    bad = OktaClient(OktaSettings(url=okta.url, api_token="00-not-a-token-of-this-org"))
    with pytest.raises(OktaUnauthorized) as refused:
        bad.list_enrollments(okta.user_id)
    bad.close()
    assert refused.value.status == 401 and refused.value.provider_code == "E0000011"
    assert "not-a-token" not in str(refused.value) and "not-a-token" not in repr(bad)


def test_an_rp_id_of_another_org_is_refused(okta, factory):
    transport = factory.jwks("transport")["keys"][0]
    with pytest.raises(OktaError, match="not a relying party of this org") as refused:
        okta.client.enroll(user_id=okta.user_id, transport_key=transport, rp_ids=["evil.example"])
    assert refused.value.provider_code == "E0000001"


@pytest.mark.parametrize("body, code", [
    ({"enrollmentRpIds": [OKTA_DOMAIN], "fulfillmentProvider": "yubico", "userId": "u", "rawId": "x",
      "yubicoTransportKeyJWK": {}}, "E0000003"),  # an unknown member
    ({"enrollmentRpIds": [OKTA_DOMAIN], "fulfillmentProvider": "yubico"}, "E0000001"),  # missing members
    ({"enrollmentRpIds": [OKTA_DOMAIN], "fulfillmentProvider": "acme", "userId": "u",
      "yubicoTransportKeyJWK": {"kty": "EC", "crv": "P-384", "kid": "k", "x": "a", "y": "b"}}, "E0000001"),
])
def test_malformed_bodies_are_refused_as_okta_refuses_them(okta, body, code):
    answer = raw(okta, "POST", "/enroll", json=body)
    assert answer.status_code == 400
    error = answer.json()
    assert set(error) == {"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}
    assert error["errorCode"] == code


def test_a_body_that_is_not_json_and_a_wrong_method(okta):
    answer = raw(okta, "POST", "/enroll", content=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["errorCode"] == "E0000003"
    answer = raw(okta, "GET", "/enroll")
    assert answer.status_code == 405 and answer.json()["errorCode"] == "E0000022"


def test_429_is_waited_out_then_succeeds(okta):
    okta.standin.throttle.arm(2, retry_after=3)
    assert okta.client.list_enrollments(okta.user_id) == []
    # from X-Rate-Limit-Reset (epoch seconds, whole): at most the 3 s asked, less the time already gone
    assert len(okta.sleeps) == 2 and all(0 < s <= 3 for s in okta.sleeps)


def test_429_beyond_the_retries_allowed_is_a_named_error(okta):
    okta.standin.throttle.arm(10, retry_after=1)
    with pytest.raises(OktaThrottled, match="rate-limiting") as throttled:
        okta.client.list_enrollments(okta.user_id)
    assert throttled.value.status == 429 and throttled.value.provider_code == "E0000047"
    assert len(okta.sleeps) == okta.settings.max_retries

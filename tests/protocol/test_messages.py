"""station.protocol.messages: validation exactly as PROTOCOL.md §1–§4 says."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError

from station.errors import InvalidRequest
from station.protocol.messages import (
    CredentialRequest,
    CredentialResponse,
    ErrorBody,
    ItemError,
    PinRequest,
    PinResponse,
    ProductData,
    PublicKeyCredentialCreationOptions,
    RegistrationResponseJSON,
    ResponseKey,
    ShipmentRequest,
    decode_b64u,
    parse_request_payload,
    parse_response_payload,
)

from .conftest import load_options

AAGUID = "ee882879-721c-4913-9775-3dfcce97072a"


# -- PublicKeyCredentialCreationOptionsJSON --------------------------------------------------


def test_graph_options_validate_with_their_extensions():
    options = PublicKeyCredentialCreationOptions.model_validate(load_options("graph"))
    assert options.rp.id == "login.microsoft.com"
    assert options.alg_preference() == [-7, -257]
    assert options.cred_protect_level() == 1
    assert options.cred_protect_enforced() and options.hmac_secret_requested()
    assert options.exclude_credentials[0].transports == ["usb", "nfc"]
    assert len(options.excluded_ids()[0]) == 64


def test_graph_opaque_challenge_is_kept_verbatim():
    raw = load_options("graph")
    options = PublicKeyCredentialCreationOptions.model_validate_json(json.dumps(raw))
    assert options.challenge == raw["challenge"]
    assert json.loads(options.to_json_bytes())["challenge"] == raw["challenge"]


def test_okta_options_validate_and_ignore_unknown_members():
    options = PublicKeyCredentialCreationOptions.model_validate(load_options("okta"))
    assert options.rp.id == "acme.okta.com"
    assert options.cred_protect_level() is None and not options.cred_protect_enforced()
    assert "u2fParams" not in json.loads(options.to_json_bytes())


def test_to_fido2_gives_python_fido2_options():
    options = PublicKeyCredentialCreationOptions.model_validate(load_options("graph"))
    converted = options.to_fido2()
    assert converted.challenge == decode_b64u(options.challenge)
    assert converted.rp.id == "login.microsoft.com"
    assert [p.alg for p in converted.pub_key_cred_params] == [-7, -257]
    assert converted.extensions["credentialProtectionPolicy"] == "userVerificationOptional"


@pytest.mark.parametrize(
    "policy, level",
    [
        ("userVerificationOptional", 1),
        ("userVerificationOptionalWithCredentialIDList", 2),
        ("userVerificationRequired", 3),
    ],
)
def test_cred_protect_level_maps_each_policy(policy, level):
    raw = load_options("graph")
    raw["extensions"]["credentialProtectionPolicy"] = policy
    assert PublicKeyCredentialCreationOptions.model_validate(raw).cred_protect_level() == level


def test_unknown_cred_protect_policy_is_refused():
    raw = load_options("graph")
    raw["extensions"]["credentialProtectionPolicy"] = "sometimes"
    with pytest.raises(ValidationError):
        PublicKeyCredentialCreationOptions.model_validate(raw)


def test_alg_preference_skips_unknown_credential_types():
    raw = load_options("okta")
    raw["pubKeyCredParams"] = [{"type": "future-key", "alg": -8}, {"type": "public-key", "alg": -257}]
    assert PublicKeyCredentialCreationOptions.model_validate(raw).alg_preference() == [-257]


@pytest.mark.parametrize(
    "params", [[], [{"type": "future-key", "alg": -7}], [{"type": "public-key", "alg": "-7"}]]
)
def test_pub_key_cred_params_must_offer_a_public_key_alg(params):
    raw = load_options("okta")
    raw["pubKeyCredParams"] = params
    with pytest.raises(ValidationError):
        PublicKeyCredentialCreationOptions.model_validate(raw)


@pytest.mark.parametrize("challenge", ["", "abc+def", "abc/def", "YWJj=", "a", "ab c"])
def test_challenge_must_be_b64u_without_padding(challenge):
    raw = load_options("okta")
    raw["challenge"] = challenge
    with pytest.raises(ValidationError):
        PublicKeyCredentialCreationOptions.model_validate(raw)


@pytest.mark.parametrize(
    "path, value",
    [
        (("user", "id"), ""),
        (("user", "id"), "A" * 90),  # 67 bytes: above the 64-byte user handle
        (("rp", "id"), "Login.Microsoft.com"),
        (("rp", "id"), "https://login.microsoft.com"),
        (("excludeCredentials",), [{"type": "public-key", "id": "not b64u!"}]),
        (("timeout",), -1),
    ],
)
def test_malformed_members_are_refused(path, value):
    raw = load_options("graph")
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        PublicKeyCredentialCreationOptions.model_validate(raw)


@pytest.mark.parametrize("member", ["rp", "user", "challenge", "pubKeyCredParams"])
def test_required_option_members(member):
    raw = load_options("okta")
    del raw[member]
    with pytest.raises(ValidationError):
        PublicKeyCredentialCreationOptions.model_validate(raw)


def test_decode_b64u_refuses_what_websafe_decode_would_swallow():
    assert decode_b64u("YWJj") == b"abc"
    for bad in ("YW*Jj", "YWJj=", "Y"):
        with pytest.raises(ValueError):
            decode_b64u(bad)


# -- ResponseKey -----------------------------------------------------------------------------


def test_response_key_round_trips(response_key):
    key = ResponseKey.model_validate(response_key)
    assert key.kid == response_key["kid"]
    assert key.to_jwk().thumbprint()


@pytest.mark.parametrize(
    "change",
    [
        {"crv": "P-256"},
        {"use": "sig"},
        {"kty": "RSA"},
        {"kid": ""},
        {"x": "AAAA"},
        {"y": "not-b64u!"},
    ],
)
def test_response_key_must_be_p384_enc_with_kid(response_key, change):
    with pytest.raises(ValidationError):
        ResponseKey.model_validate({**response_key, **change})


def test_response_key_without_kid_is_refused(response_key):
    with pytest.raises(ValidationError):
        ResponseKey.model_validate({k: v for k, v in response_key.items() if k != "kid"})


def test_response_key_with_private_member_is_refused(response_private_key):
    private = json.loads(response_private_key.export_private())
    with pytest.raises(ValidationError, match="public only"):
        ResponseKey.model_validate(private)


def test_response_key_off_the_curve_is_refused(response_key):
    y = bytearray(decode_b64u(response_key["y"]))
    y[-1] ^= 1
    from fido2.utils import websafe_encode

    with pytest.raises(ValidationError):
        ResponseKey.model_validate({**response_key, "y": websafe_encode(bytes(y))})


# -- PIN request -----------------------------------------------------------------------------


def test_pin_request_defaults(response_key):
    request = PinRequest.model_validate(
        {"version": 1, "requestId": "r", "type": "generate", "responseKey": response_key}
    )
    assert request.length == 6 and request.min_pin_length is None
    assert request.force_pin_change is False


@pytest.mark.parametrize("length", [4, 63])
def test_pin_length_bounds_accepted(pin_request, length):
    pin_request.update(length=length, minPINLength=4)
    assert PinRequest.model_validate(pin_request).length == length


@pytest.mark.parametrize(
    "change",
    [
        {"length": 3},
        {"length": 64},
        {"length": "6"},
        {"length": 8, "minPINLength": 9},
        {"minPINLength": 3},
        {"type": "supplied"},
        {"version": 2},
        {"forcePINChange": "yes"},
        {"requestId": ""},
    ],
)
def test_pin_request_refusals(pin_request, change):
    pin_request.update(change)
    with pytest.raises(ValidationError):
        PinRequest.model_validate(pin_request)


@pytest.mark.parametrize("member", ["version", "requestId", "type", "responseKey"])
def test_pin_request_missing_members(pin_request, member):
    del pin_request[member]
    with pytest.raises(ValidationError):
        PinRequest.model_validate(pin_request)


# -- credential request ----------------------------------------------------------------------


def test_effective_origin_defaults_to_rp_id(credential_request):
    request = CredentialRequest.model_validate_json(json.dumps(credential_request))
    assert request.effective_origin == "https://" + credential_request["publicKey"]["rp"]["id"]


@pytest.mark.parametrize(
    "origin",
    ["https://login.microsoft.com", "https://eu.login.microsoft.com", "https://login.microsoft.com:8443"],
)
def test_origin_on_rp_id_or_subdomain_accepted(credential_request, origin):
    credential_request["publicKey"] = load_options("graph")
    credential_request["origin"] = origin
    assert CredentialRequest.model_validate(credential_request).effective_origin == origin


@pytest.mark.parametrize(
    "origin",
    [
        "http://login.microsoft.com",
        "https://evillogin.microsoft.com.example",
        "https://notlogin.microsoft.com.evil",
        "https://microsoft.com",
        "https://xlogin.microsoft.com",
        "https://login.microsoft.com/",
        "https://login.microsoft.com/path",
        "https://user@login.microsoft.com",
        "https://login.microsoft.com:443",
        "https://LOGIN.microsoft.com",
        "https://login.microsoft.com:99999",
        "login.microsoft.com",
    ],
)
def test_origin_off_rp_id_refused(credential_request, origin):
    credential_request["publicKey"] = load_options("graph")
    credential_request["origin"] = origin
    with pytest.raises(ValidationError):
        CredentialRequest.model_validate(credential_request)


@pytest.mark.parametrize("not_after", ["2026-12-06T10:00:00", 1796000000, "tomorrow"])
def test_not_after_must_be_rfc3339_with_zone(credential_request, not_after):
    credential_request["notAfter"] = not_after
    with pytest.raises(ValidationError):
        CredentialRequest.model_validate_json(json.dumps(credential_request))


def test_is_expired(credential_request):
    from datetime import datetime, timedelta, timezone

    credential_request["notAfter"] = "2026-12-06T10:00:00+01:00"
    request = CredentialRequest.model_validate_json(json.dumps(credential_request))
    deadline = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)
    assert not request.is_expired(deadline)
    assert request.is_expired(deadline + timedelta(seconds=1))
    del credential_request["notAfter"]
    assert not CredentialRequest.model_validate(credential_request).is_expired(deadline)


@pytest.mark.parametrize("member", ["version", "requestId", "responseKey", "publicKey"])
def test_credential_request_missing_members(credential_request, member):
    del credential_request[member]
    with pytest.raises(ValidationError):
        CredentialRequest.model_validate(credential_request)


# -- parse_request_payload -------------------------------------------------------------------


def test_parse_request_payload_tells_the_two_payloads_apart(pin_request, credential_request):
    assert isinstance(parse_request_payload(json.dumps(pin_request).encode()), PinRequest)
    parsed = parse_request_payload(json.dumps(credential_request).encode())
    assert isinstance(parsed, CredentialRequest)


def test_parse_request_payload_ignores_unknown_members(pin_request):
    pin_request["futureMember"] = {"anything": [1, 2]}
    assert parse_request_payload(json.dumps(pin_request).encode()).request_id


@pytest.mark.parametrize(
    "data",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null", b"{}", b"[" * 100000, b'{"publicKey": 1}'],
)
def test_parse_request_payload_refusals(data):
    with pytest.raises(InvalidRequest):
        parse_request_payload(data)


def test_invalid_request_message_names_the_member(pin_request):
    pin_request["length"] = 99
    with pytest.raises(InvalidRequest, match="length"):
        parse_request_payload(json.dumps(pin_request).encode())


# -- responses -------------------------------------------------------------------------------


def _pin_response(**change) -> dict:
    base = {
        "version": 1,
        "requestId": "r1",
        "requestDigest": "A" * 43,
        "serialNumber": "31337",
        "firmwareVersion": "5.7.1",
        "aaguid": AAGUID,
        "issuedAt": 1796000000,
        "pin": "482915",
        "forcePINChange": True,
    }
    return {**base, **change}


def test_pin_never_in_repr_or_validation_errors():
    response = PinResponse.model_validate(_pin_response())
    assert "482915" not in repr(response) and "482915" not in str(response)
    with pytest.raises(ValidationError) as caught:
        PinResponse.model_validate(_pin_response(pin="48291x", aaguid="nope"))
    assert "48291x" not in str(caught.value)


def test_null_serial_and_firmware_stay_on_the_wire():
    response = PinResponse.model_validate(_pin_response(serialNumber=None, firmwareVersion=None))
    wire = json.loads(response.to_json_bytes())
    assert wire["serialNumber"] is None and wire["firmwareVersion"] is None
    assert wire["forcePINChange"] is True and wire["requestDigest"] == "A" * 43


@pytest.mark.parametrize(
    "change",
    [
        {"aaguid": AAGUID.upper()},
        {"aaguid": AAGUID.replace("-", "")},
        {"serialNumber": "0x1234"},
        {"firmwareVersion": "5.7"},
        {"pin": "12ab"},
        {"pin": "123"},
        {"requestDigest": "short"},
    ],
)
def test_pin_response_refusals(change):
    with pytest.raises(ValidationError):
        PinResponse.model_validate(_pin_response(**change))


def test_serial_and_firmware_are_required_even_if_null():
    body = _pin_response()
    del body["serialNumber"]
    with pytest.raises(ValidationError):
        PinResponse.model_validate(body)


def _credential() -> dict:
    return {
        "id": "AQID",
        "rawId": "AQID",
        "type": "public-key",
        "authenticatorAttachment": "cross-platform",
        "response": {"clientDataJSON": "e30", "attestationObject": "oA", "transports": ["usb", "nfc"]},
        "clientExtensionResults": {"credProps": {"rk": True}, "hmacCreateSecret": True},
    }


def test_credential_response_round_trips():
    body = {k: v for k, v in _pin_response().items() if k not in ("pin", "forcePINChange")}
    body["credential"] = _credential()
    response = parse_response_payload(json.dumps(body).encode())
    assert isinstance(response, CredentialResponse)
    wire = json.loads(response.to_json_bytes())
    assert wire["credential"]["response"]["clientDataJSON"] == "e30"
    assert wire["credential"]["clientExtensionResults"]["credProps"] == {"rk": True}


def test_parse_response_payload_refusals():
    for data in (b"[]", b"nope", json.dumps(_pin_response(pin="1")).encode()):
        with pytest.raises(ValueError):
            parse_response_payload(data)


def test_registration_response_id_must_equal_raw_id():
    with pytest.raises(ValidationError, match="rawId"):
        RegistrationResponseJSON.model_validate({**_credential(), "rawId": "AQIE"})


def test_registration_response_from_python_fido2():
    from fido2.cose import ES256
    from fido2.webauthn import (
        AttestationObject,
        AttestedCredentialData,
        AuthenticatorAttestationResponse,
        AuthenticatorData,
        CollectedClientData,
        RegistrationResponse,
    )
    from cryptography.hazmat.primitives.asymmetric import ec

    cose_key = ES256.from_cryptography_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    credential_data = AttestedCredentialData.create(bytes(16), b"\x01\x02\x03", cose_key)
    auth_data = AuthenticatorData.create(bytes(32), AuthenticatorData.FLAG.AT, 0, credential_data)
    response = RegistrationResponse(
        raw_id=b"\x01\x02\x03",
        response=AuthenticatorAttestationResponse(
            client_data=CollectedClientData.create("webauthn.create", b"challenge", "https://acme.okta.com"),
            attestation_object=AttestationObject.create("none", auth_data, {}),
        ),
    )
    converted = RegistrationResponseJSON.from_fido2(response)
    assert converted.id == converted.raw_id == "AQID"
    assert decode_b64u(converted.response.attestation_object)[:1] == b"\xa3"


# -- §4 bodies -------------------------------------------------------------------------------

JWE = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyJ9.a2V5.aXY.Y2lwaGVy.dGFn"


def _shipment() -> dict:
    return {
        "delivery_type": 1,
        "recipient": {
            "recipient_company": "Contoso",
            "recipient_email": "kim.cook@contoso.com",
            "recipient_firstname": "Kim",
            "recipient_lastname": "Cook",
            "recipient_telephone": "+1 425 555 0100",
        },
        "mailing_address": {
            "street_line1": "1 Microsoft Way",
            "street_line2": "",
            "city": "Redmond",
            "region": "WA",
            "postal_code": "98052",
            "country_code_2": "US",
        },
        "shipment_items": [
            {
                "product_id": 29,
                "inventory_product_id": 18,
                "product_quantity": 1,
                "customization_id": "CUST01",
                "product_customizations": [
                    {"fido_pin_request": JWE, "fido_credential_requests": [JWE, JWE]}
                ],
            }
        ],
    }


def test_shipment_body_validates():
    body = ShipmentRequest.model_validate(_shipment())
    assert body.shipment_items[0].product_customizations[0].fido_credential_requests == [JWE, JWE]


@pytest.mark.parametrize(
    "path, value",
    [
        (("shipment_items", 0, "product_quantity"), 2),
        (("shipment_items", 0, "product_customizations", 0, "fido_credential_requests"), []),
        (("shipment_items", 0, "product_customizations", 0, "fido_pin_request"), "not a jwe"),
        (("shipment_items", 0, "product_customizations", 0, "fido_pin_request"), "a.b.c.d"),
        (("shipment_items", 0, "product_customizations"), []),
        (("shipment_items",), []),
        (("mailing_address", "country_code_2"), "us"),
        (("mailing_address", "street_line1"), ""),
        (("mailing_address", "postal_code"), "9" * 21),
        (("recipient", "recipient_firstname"), "K" * 101),
        (("recipient", "recipient_email"), "not-an-address"),
        (("recipient", "recipient_telephone"), "call me"),
        (("delivery_type",), 9),
        (("delivery_type",), "1"),
    ],
)
def test_shipment_field_limits(path, value):
    body = _shipment()
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        ShipmentRequest.model_validate(body)


def test_shipment_jwe_size_limit():
    body = _shipment()
    customization = body["shipment_items"][0]["product_customizations"][0]
    customization["fido_pin_request"] = JWE + "A" * (64 * 1024)
    with pytest.raises(ValidationError):
        ShipmentRequest.model_validate(body)


def test_product_data_item_error_and_error_body():
    data = ProductData(
        serial_number=None, firmware_version="5.7.1", fido_pin_response=JWE, fido_credential_responses=[JWE]
    )
    assert data.model_dump()["serial_number"] is None
    assert ItemError(error_code="expired", error_message="notAfter passed").error_code == "expired"
    with pytest.raises(ValidationError):
        ItemError(error_code="oops", error_message="x")
    body = ErrorBody(error_code="invalid_request", error_message="bad", error_data={"field": "x"})
    assert body.model_dump() == {"error_code": "invalid_request", "error_message": "bad", "error_data": {"field": "x"}}


def test_models_are_immutable(pin_request):
    request = PinRequest.model_validate(copy.deepcopy(pin_request))
    with pytest.raises(ValidationError):
        request.length = 8


def test_null_members_kept_under_either_spelling():
    response = PinResponse.model_validate(_pin_response(serialNumber=None))
    assert response.model_dump(exclude_none=True)["serialNumber"] is None
    snake = response.model_dump(by_alias=False, exclude_none=True)
    assert snake["serial_number"] is None and "serialNumber" not in snake

"""PingOneClient against the PingOne stand-in: worker token, FIDO2 device create (options
normalised), activation, list, delete, every documented refusal, throttling, an expired token."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from fido2.utils import websafe_decode, websafe_encode

from station.customer.http import TokenRefused
from station.customer.orders import seal_item
from station.customer.pingone import (
    ACTIVATE_CONTENT_TYPE,
    OptionsUnreadable,
    PingOneClient,
    PingOneError,
    PingOneThrottled,
    attestation_json,
    normalise_creation_options,
)
from station.customer.settings import PingOneSettings
from station.customer.signin import ProviderSignIn, sign_in_with
from station.customer.verify import MailedPin, open_item_responses
from station.protocol.jose import open_request
from station.protocol.messages import CredentialRequest
from station.virtual import open_virtual

PING_RP = "example.org"  # the relying party of the pingone fixture's policy


def programmed(pingone, factory, origin=None):
    """A FIDO2 device and a key programmed from its options → (device, credential, opened, statefile)."""
    device, options = pingone.client.create_fido2_device(pingone.user_id)
    sealed = seal_item(transport_jwks=factory.jwks("transport"), options=[options], min_pin_length=6,
                       origin=origin or f"https://{options['rp']['id']}")
    product, statefile = factory.program(sealed.pin_request_jwe, sealed.credential_request_jwes)
    opened = open_item_responses(sealed=sealed, pin_response_jwe=product["fido_pin_response"],
                                 credential_response_jwes=product["fido_credential_responses"],
                                 signing_jwks=factory.jwks("signing"))
    return device, opened.credentials[0], opened, statefile


def raw(pingone, method, path, **kw):
    token = pingone.client.tokens.get()
    return httpx.request(method, f"{pingone.url}/v1/environments/{pingone.standin.environment_id}/users/"
                         f"{pingone.user_id}/devices{path}",
                         headers={"Authorization": f"Bearer {token}", **kw.pop("headers", {})}, **kw)


# -- the options string and the attestation string -----------------------------------------------

def test_pingone_options_become_protocol_options():
    text = json.dumps({"rp": {"id": "example.org", "name": "Ex"},
                       "user": {"id": [-1, 0, 127, -128], "name": "lee", "displayName": "Lee"},
                       "challenge": [1, -2, 3], "pubKeyCredParams": [{"type": "public-key", "alg": "-7"},
                                                                     {"type": "public-key", "alg": "-257"}],
                       "excludeCredentials": [{"type": "public-key", "id": [-86, 85]}],
                       "authenticatorSelection": {"userVerification": "preferred"}, "attestation": "direct"})
    options = normalise_creation_options(text)
    assert websafe_decode(options["user"]["id"]) == bytes([255, 0, 127, 128])
    assert websafe_decode(options["challenge"]) == bytes([1, 254, 3])
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-7, -257]
    assert websafe_decode(options["excludeCredentials"][0]["id"]) == bytes([0xAA, 0x55])
    assert options["authenticatorSelection"] == {"userVerification": "preferred"}


@pytest.mark.parametrize("change, message", [
    ({"challenge": [1, 300]}, "not a byte"),
    ({"challenge": [True]}, "not a byte"),
    ({"challenge": {"a": 1}}, "neither a byte array"),
    ({"pubKeyCredParams": [{"type": "public-key", "alg": "ES256"}]}, "not a COSE algorithm"),
    ({"pubKeyCredParams": [{"type": "public-key", "alg": "-7.5"}]}, "not a COSE algorithm"),
    ({"user": None}, "needs rp, user"),
])
def test_unreadable_options_are_refused_by_name(change, message):
    base = {"rp": {"id": "e.org", "name": "E"}, "user": {"id": [1], "name": "n", "displayName": "d"},
            "challenge": [1, 2], "pubKeyCredParams": [{"type": "public-key", "alg": "-7"}]}
    with pytest.raises(OptionsUnreadable, match=message):
        normalise_creation_options(json.dumps({**base, **change}))
    with pytest.raises(OptionsUnreadable, match="not a JSON string"):
        normalise_creation_options("{nope")


def test_the_attestation_string_has_standard_base64_binaries():
    raw_id = b"\xfb\xff\x01" * 6
    credential = {"id": websafe_encode(raw_id), "rawId": websafe_encode(raw_id), "type": "public-key",
                  "response": {"clientDataJSON": websafe_encode(b"\xfb\xef{}"), "attestationObject": websafe_encode(b"\xff\xfe"),
                               "transports": ["usb"]}, "clientExtensionResults": {"credProps": {"rk": True}}}
    parsed = json.loads(attestation_json(credential))
    assert parsed["id"] == websafe_encode(raw_id)  # the browser's id stays base64url
    assert base64.b64decode(parsed["rawId"], validate=True) == raw_id and "/" in parsed["rawId"] + parsed["response"]["clientDataJSON"]
    assert base64.b64decode(parsed["response"]["attestationObject"], validate=True) == b"\xff\xfe"
    assert set(parsed["response"]) == {"clientDataJSON", "attestationObject"}


# -- the API ---------------------------------------------------------------------------------------

def test_create_activate_list_sign_in_and_delete(pingone, factory):
    device, credential, opened, statefile = programmed(pingone, factory)
    assert device["status"] == "ACTIVATION_REQUIRED" and isinstance(device["publicKeyCredentialCreationOptions"], str)
    raw_options = json.loads(device["publicKeyCredentialCreationOptions"])
    assert isinstance(raw_options["challenge"], list) and isinstance(raw_options["pubKeyCredParams"][0]["alg"], str)
    active = pingone.client.activate_fido2_device(pingone.user_id, device["id"], origin=f"https://{PING_RP}",
                                                  credential=credential)
    assert active["status"] == "ACTIVE" and "publicKeyCredentialCreationOptions" not in active
    assert [d["id"] for d in pingone.client.list_devices(pingone.user_id)] == [device["id"]]
    key = open_virtual(statefile)
    try:
        result = sign_in_with(key, relying_party=ProviderSignIn(pingone.url, pingone.user_id),
                              origin=f"https://{PING_RP}", pin=opened.pin, new_pin=MailedPin("61839027"))
    finally:
        key.close()
    assert result.pin_change_forced and result.rp_id == PING_RP
    pingone.client.delete_device(pingone.user_id, device["id"])
    assert pingone.client.list_devices(pingone.user_id) == []
    with pytest.raises(PingOneError, match="NOT_FOUND") as missing:
        pingone.client.delete_device(pingone.user_id, device["id"])
    assert missing.value.status == 404


def test_the_station_reads_the_normalised_options(pingone, factory):
    _device, options = pingone.client.create_fido2_device(pingone.user_id)
    sealed = seal_item(transport_jwks=factory.jwks("transport"), options=[options], origin=f"https://{PING_RP}")
    request = open_request(sealed.credential_request_jwes[0], keystore=factory.keystore)
    assert isinstance(request, CredentialRequest) and request.public_key.alg_preference()[0] == -7


def test_an_origin_off_the_relying_party_is_refused(pingone, factory):
    device, credential, _, _ = programmed(pingone, factory)
    with pytest.raises(PingOneError, match="INVALID_DATA.*origin") as refused:
        pingone.client.activate_fido2_device(pingone.user_id, device["id"], origin="https://evil.example",
                                             credential=credential)
    assert refused.value.status == 400 and refused.value.details


def test_a_subdomain_origin_is_accepted(pingone, factory):
    device, credential, _, _ = programmed(pingone, factory, origin=f"https://login.{PING_RP}")
    active = pingone.client.activate_fido2_device(pingone.user_id, device["id"], origin=f"https://login.{PING_RP}",
                                                  credential=credential)
    assert active["status"] == "ACTIVE"


def test_an_authenticator_outside_the_policy_s_list_is_refused(pingone, factory):
    policy = pingone.standin.policies[pingone.settings.policy_id]
    policy.allowed_aaguids = ["ee882879-721c-4913-9775-3dfcce97072a"]  # another model only
    device, credential, _, _ = programmed(pingone, factory)
    with pytest.raises(PingOneError, match="not allowed by the FIDO2 policy"):
        pingone.client.activate_fido2_device(pingone.user_id, device["id"], origin=f"https://{PING_RP}",
                                             credential=credential)
    assert pingone.standin.devices[device["id"]].status == "ACTIVATION_REQUIRED"


def test_activation_needs_pingone_s_content_type_and_only_origin_and_attestation(pingone, factory):
    device, credential, _, _ = programmed(pingone, factory)
    body = {"origin": f"https://{PING_RP}", "attestation": attestation_json(credential)}
    answer = raw(pingone, "POST", f"/{device['id']}", json=body)
    assert answer.status_code == 415 and set(answer.json()) >= {"id", "code", "message"}
    answer = raw(pingone, "POST", f"/{device['id']}", content=json.dumps({**body, "extra": 1}),
                 headers={"Content-Type": ACTIVATE_CONTENT_TYPE})
    assert answer.status_code == 400 and answer.json()["code"] == "INVALID_DATA"
    # base64url where PingOne wants standard base64
    bad = json.loads(body["attestation"])
    bad["response"]["attestationObject"] = credential["response"]["attestationObject"] + "-_"
    answer = raw(pingone, "POST", f"/{device['id']}", content=json.dumps({**body, "attestation": json.dumps(bad)}),
                 headers={"Content-Type": ACTIVATE_CONTENT_TYPE})
    assert answer.status_code == 400 and "standard base64" in answer.text


@pytest.mark.parametrize("body, target", [
    ({"type": "SMS", "rp": {"id": PING_RP, "name": "E"}, "policy": {"id": "p"}}, "type"),
    ({"type": "FIDO2", "policy": {"id": "p"}}, "rp"),
    ({"type": "FIDO2", "rp": {"id": PING_RP, "name": "E"}}, "policy.id"),
    ({"type": "FIDO2", "rp": {"id": PING_RP, "name": "E"}, "policy": {"id": "p"}, "color": "red"}, "color"),
])
def test_create_refuses_unknown_and_missing_members(pingone, body, target):
    answer = raw(pingone, "POST", "", json=body)
    assert answer.status_code == 400
    error = answer.json()
    assert error["code"] == "INVALID_DATA" and target in [d["target"] for d in error["details"]]


def test_create_refuses_another_rp_than_the_policy_s(pingone):
    with pytest.raises(PingOneError, match="rp.id differs"):
        pingone.client.create_fido2_device(pingone.user_id, rp_id="evil.example")


def test_an_unknown_user_is_404(pingone):
    with pytest.raises(PingOneError, match="Unable to find user") as missing:
        pingone.client.list_devices("00000000-0000-0000-0000-000000000000")
    assert missing.value.provider_code == "NOT_FOUND"


def test_refused_worker_credentials_are_a_named_error_without_the_secret(pingone):
    settings = PingOneSettings(**{**pingone.settings.model_dump(), "client_secret": "wrong-secret"})
    with PingOneClient(settings) as client:
        with pytest.raises(TokenRefused) as refused:
            client.list_devices(pingone.user_id)
    assert refused.value.provider_code == "invalid_client" and "wrong-secret" not in str(refused.value)


def test_client_secret_basic_is_refused_by_pingone(pingone):
    answer = httpx.post(f"{pingone.url}/{pingone.standin.environment_id}/as/token",
                        data={"grant_type": "client_credentials"}, auth=(pingone.settings.client_id, "x"))
    assert answer.status_code == 401 and "client_secret_post" in answer.json()["error_description"]


def test_an_expired_token_is_refreshed_once_then_the_call_succeeds(pingone):
    pingone.client.list_devices(pingone.user_id)
    pingone.standin.tokens.expire_all()
    assert pingone.client.list_devices(pingone.user_id) == []
    assert pingone.client.tokens.fetches == 2


def test_429_then_success_and_429_exhausted(pingone):
    pingone.standin.throttle.arm(1, retry_after=2)
    assert pingone.client.list_devices(pingone.user_id) == []
    assert pingone.sleeps == [2.0]
    pingone.standin.throttle.arm(99, retry_after=1)
    with pytest.raises(PingOneThrottled, match="REQUEST_LIMITED") as throttled:
        pingone.client.list_devices(pingone.user_id)
    assert throttled.value.status == 429

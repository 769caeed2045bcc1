"""GraphClient against the Graph stand-in: token, creationOptions, fido2Methods (create, list,
delete), every documented refusal, throttling and an expired token."""

from __future__ import annotations

import httpx
import pytest
from fido2.utils import websafe_decode

from station.customer.graph import (
    GraphClient,
    GraphError,
    GraphThrottled,
    SelfServiceNotSupported,
    display_name,
    fido2_method_body,
)
from station.customer.http import TokenRefused
from station.customer.orders import seal_item
from station.customer.settings import GraphSettings
from station.customer.signin import ProviderSignIn, sign_in_with
from station.customer.verify import MailedPin, open_item_responses
from station.protocol.jose import open_request
from station.virtual import open_virtual


def registration(graph, factory, minutes=60):
    """The user's key programmed from Graph's options → (RegistrationResponseJSON, opened, statefile)."""
    options = graph.client.creation_options(graph.user_id, minutes)
    public_key = options["publicKey"]
    sealed = seal_item(transport_jwks=factory.jwks("transport"), options=[public_key], min_pin_length=6,
                       origin=f"https://{public_key['rp']['id']}")
    product, statefile = factory.program(sealed.pin_request_jwe, sealed.credential_request_jwes)
    opened = open_item_responses(sealed=sealed, pin_response_jwe=product["fido_pin_response"],
                                 credential_response_jwes=product["fido_credential_responses"],
                                 signing_jwks=factory.jwks("signing"))
    return opened.credentials[0], opened, statefile


def raw(graph, method, path, **kw):
    token = graph.client.tokens.get()
    return httpx.request(method, f"{graph.url}/beta/users/{graph.user_id}/authentication/{path}",
                         headers={"Authorization": f"Bearer {token}", **kw.pop("headers", {})}, **kw)


def test_creation_options_carry_odata_types_and_an_opaque_challenge_the_station_accepts(graph, factory):
    options = graph.client.creation_options(graph.user_id, 60 * 24 * 7)
    public_key = options["publicKey"]
    assert public_key["@odata.type"] == "#microsoft.graph.webauthnPublicKeyCredentialCreationOptions"
    for member in ("rp", "user", "authenticatorSelection", "extensions"):
        assert public_key[member]["@odata.type"].startswith("#microsoft.graph.webauthn"), member
    assert all(p["@odata.type"].endswith("webauthnPublicKeyCredentialParameters") for p in public_key["pubKeyCredParams"])
    assert public_key["timeout"] == 7 * 24 * 3600 * 1000 and options["challengeTimeoutDateTime"].endswith("Z")
    assert graph.user_id.encode() not in websafe_decode(public_key["challenge"])  # opaque
    sealed = seal_item(transport_jwks=factory.jwks("transport"), options=[public_key])
    request = open_request(sealed.credential_request_jwes[0], keystore=factory.keystore)
    assert request.public_key.rp.id == "login.microsoft.com" and request.public_key.hmac_secret_requested()


@pytest.mark.parametrize("minutes", [4, 43201])
def test_a_challenge_timeout_out_of_5_to_43200_is_refused_by_client_and_graph(graph, minutes):
    with pytest.raises(ValueError, match="5 to 43200"):
        graph.client.creation_options(graph.user_id, minutes)
    answer = raw(graph, "GET", f"fido2Methods/creationOptions(challengeTimeoutInMinutes={minutes})")
    assert answer.status_code == 400 and set(answer.json()["error"]) == {"code", "message", "innerError"}


def test_register_list_sign_in_and_delete(graph, factory):
    credential, opened, statefile = registration(graph, factory)
    name = display_name(opened.serial_number)
    method = graph.client.register(graph.user_id, name, credential)
    assert method["displayName"] == name and opened.serial_number in name and len(name) <= 30
    assert method["attestationLevel"] == "attested" and method["aaGuid"] == opened.aaguid
    assert len(method["attestationCertificates"]) >= 1
    assert [m["id"] for m in graph.client.list_methods(graph.user_id)] == [method["id"]]
    key = open_virtual(statefile)
    try:
        result = sign_in_with(key, relying_party=ProviderSignIn(graph.url, graph.user_id),
                              origin="https://login.microsoft.com", pin=opened.pin, new_pin=MailedPin("52917340"))
    finally:
        key.close()
    assert result.pin_change_forced and result.user_verified
    # the next options exclude the registered key
    again = graph.client.creation_options(graph.user_id, 10)["publicKey"]["excludeCredentials"]
    assert [d["id"] for d in again] == [method["id"]]
    graph.client.delete_method(graph.user_id, method["id"])
    assert graph.client.list_methods(graph.user_id) == []
    with pytest.raises(GraphError, match="itemNotFound"):
        graph.client.delete_method(graph.user_id, method["id"])


def test_the_body_holds_exactly_the_documented_members():
    credential = {"id": "aWQ", "rawId": "aWQ", "type": "public-key", "authenticatorAttachment": "cross-platform",
                  "response": {"clientDataJSON": "Y2Q", "attestationObject": "YW8", "transports": ["usb"]},
                  "clientExtensionResults": {"credProps": {"rk": True}}}
    assert fido2_method_body("Key 1", credential) == {
        "displayName": "Key 1",
        "publicKeyCredential": {"id": "aWQ", "response": {"clientDataJSON": "Y2Q", "attestationObject": "YW8"},
                                "clientExtensionResults": {"credProps": {"rk": True}}}}
    with pytest.raises(ValueError, match="30"):
        fido2_method_body("x" * 31, credential)


@pytest.mark.parametrize("serial, model, expected", [
    ("31234567", "Security key", "Security key 31234567"),
    ("31234567", "YubiKey 5 NFC with a very long model name", "YubiKey 5 NFC with a 31234567"),
    (None, "Security key", "Security key"),
])
def test_display_names_keep_the_serial_within_30(serial, model, expected):
    assert display_name(serial, model) == expected and len(expected) <= 30


@pytest.mark.parametrize("mangle, message", [
    (lambda b: {**b, "publicKeyCredential": {**b["publicKeyCredential"], "rawId": "x"}}, "'rawId' does not exist"),
    (lambda b: {**b, "publicKeyCredential": {**b["publicKeyCredential"], "response": {
        **b["publicKeyCredential"]["response"], "transports": ["usb"]}}}, "'transports' does not exist"),
    (lambda b: {**b, "deviceName": "x"}, "'deviceName' does not exist"),
    (lambda b: {"publicKeyCredential": b["publicKeyCredential"]}, "displayName is required"),
    (lambda b: {**b, "displayName": "y" * 31}, "at most 30"),
    (lambda b: {"displayName": "k"}, "publicKeyCredential is required"),
    (lambda b: {**b, "@odata.type": "#microsoft.graph.passwordAuthenticationMethod"}, "could not be resolved"),
])
def test_graph_refuses_other_members_and_missing_ones(graph, factory, mangle, message):
    credential, opened, _ = registration(graph, factory)
    body = mangle(fido2_method_body("Key", credential))
    answer = raw(graph, "POST", "fido2Methods", json=body)
    assert answer.status_code == 400 and message in answer.json()["error"]["message"]
    assert graph.standin.methods.get(graph.user_id, []) == []


def test_an_expired_challenge_is_refused(graph, factory, monkeypatch):
    import time as real_time

    credential, _, _ = registration(graph, factory, minutes=5)
    later = real_time.time() + 6 * 60
    monkeypatch.setattr("station.standins.graph.time.time", lambda: later)
    with pytest.raises(GraphError, match="challengeExpired"):
        graph.client.register(graph.user_id, "Key", credential)


def test_a_registration_for_another_user_is_refused(graph, factory):
    credential, _, _ = registration(graph, factory)
    other = graph.standin.add_user("lee@contoso.com", "Lee")
    with pytest.raises(GraphError, match="another user"):
        graph.client.register(other.id, "Key", credential)


def test_an_administrator_on_their_own_account_gets_405(graph):
    client_id, secret = graph.standin.add_client(acting_user=graph.user_id)
    with GraphClient(GraphSettings(url=graph.url, login_url=graph.url, tenant_id=graph.standin.tenant_id,
                                   client_id=client_id, client_secret=secret)) as admin:
        with pytest.raises(SelfServiceNotSupported) as refused:
            admin.creation_options(graph.user_id, 10)
    assert refused.value.status == 405


def test_an_unknown_user_is_404(graph):
    with pytest.raises(GraphError, match="Request_ResourceNotFound") as missing:
        graph.client.list_methods("00000000-0000-0000-0000-000000000000")
    assert missing.value.status == 404


@pytest.mark.parametrize("change, code", [({"client_secret": "wrong"}, "invalid_client"),
                                          ({"client_id": "4b1e5c1a-0000-0000-0000-000000000000"}, "unauthorized_client"),
                                          ({"tenant_id": "contoso.onmicrosoft.com"}, "invalid_request")])
def test_refused_client_credentials_are_a_named_error_without_the_secret(graph, change, code):
    settings = GraphSettings(**{**graph.settings.model_dump(), "client_secret": graph.settings.secret(), **change})
    with GraphClient(settings) as client:
        with pytest.raises(TokenRefused) as refused:
            client.list_methods(graph.user_id)
    assert refused.value.provider_code == code and "wrong" not in str(refused.value)


def test_an_expired_token_is_refreshed_once_then_the_call_succeeds(graph):
    graph.client.list_methods(graph.user_id)
    assert graph.client.tokens.fetches == 1
    graph.standin.tokens.expire_all()
    assert graph.client.list_methods(graph.user_id) == []
    assert graph.client.tokens.fetches == 2


def test_without_a_token_graph_says_so(graph):
    answer = httpx.get(f"{graph.url}/beta/users/{graph.user_id}/authentication/fido2Methods")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_429_with_retry_after_then_success(graph):
    graph.standin.throttle.arm(2, retry_after=7)
    assert graph.client.list_methods(graph.user_id) == []
    assert graph.sleeps == [7.0, 7.0]


def test_429_asking_longer_than_allowed_is_a_named_error_at_once(graph):
    graph.standin.throttle.arm(1, retry_after=3600)
    with pytest.raises(GraphThrottled, match="retry after 3600") as throttled:
        graph.client.list_methods(graph.user_id)
    assert throttled.value.retry_after == 3600 and graph.sleeps == []


def test_the_client_secret_never_shows(graph):
    secret = graph.settings.secret()
    assert secret not in repr(graph.client) and secret not in repr(graph.settings)
    assert secret not in repr(graph.client.tokens)


@pytest.mark.parametrize("attestation_object", [b"", b"\xa0", b"\xff" * 40, b"\xa3cfmtdnonegattStmt\xa0hauthData\x41\x00"])
def test_garbage_attestation_objects_are_400_never_500(graph, factory, attestation_object):
    from fido2.utils import websafe_encode

    credential, _, _ = registration(graph, factory)
    body = fido2_method_body("Key", credential)
    body["publicKeyCredential"]["response"]["attestationObject"] = websafe_encode(attestation_object)
    answer = raw(graph, "POST", "fido2Methods", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalidRequest"


def test_only_packed_and_none_attestation_formats_are_taken(graph, factory):
    from fido2 import cbor
    from fido2.utils import websafe_encode

    credential, _, _ = registration(graph, factory)
    decoded = cbor.decode(websafe_decode(credential["response"]["attestationObject"]))
    decoded["fmt"] = "fido-u2f"
    credential["response"]["attestationObject"] = websafe_encode(cbor.encode(decoded))
    with pytest.raises(GraphError, match="'fido-u2f' is not supported"):
        graph.client.register(graph.user_id, "Key", credential)


def test_every_nth_call_throttled_is_waited_out(graph):
    graph.standin.throttle.every(2, retry_after=1)
    for _ in range(3):
        assert graph.client.list_methods(graph.user_id) == []
    assert graph.sleeps == [1.0, 1.0]  # the server's calls 2 and 4 answered 429, each retried once

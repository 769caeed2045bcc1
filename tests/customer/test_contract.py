"""The providers' documented examples (tests/fixtures/idp/*.json, each naming its source page)
replayed against the stand-ins: the documented requests are taken (or refused only for their
content, never for a member name), and the answers have the documented members."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from jwcrypto.jwk import JWK

from station.customer.graph import fido2_method_body
from station.customer.orders import seal_item
from station.customer.pingone import ACTIVATE_CONTENT_TYPE, attestation_json, normalise_creation_options
from station.customer.verify import open_item_responses
from station.standins import running

from .conftest import attestation_roots

FIXTURES = Path(__file__).parent.parent / "fixtures" / "idp"


def fixture(name: str) -> dict:
    document = json.loads((FIXTURES / f"{name}.json").read_text())
    assert document["sources"]  # every example names where it comes from
    return document


def keys(obj) -> set:
    return set(obj) if isinstance(obj, dict) else set()


def tree(obj, path=""):
    """Every (path, member) of a JSON document: the shape, not the values."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"{path}/{key}"
            yield from tree(value, f"{path}/{key}")
    elif isinstance(obj, list) and obj:
        yield from tree(obj[0], f"{path}[]")


# -- Okta -------------------------------------------------------------------------------------------

@pytest.fixture
def okta_doc():
    doc = fixture("okta")
    user = doc["enroll_request"]["userId"]
    with running("okta", org_domain=doc["enroll_request"]["enrollmentRpIds"][0],
                 attestation_roots=attestation_roots()) as (standin, url):
        standin.add_user("david@myorg.example", user_id=user)
        token = standin.new_api_token()
        yield doc, standin, httpx.Client(base_url=url + "/webauthn-registration/api/v1",
                                         headers={"Authorization": f"SSWS {token}"})


def test_okta_enroll_example_replayed(okta_doc, factory):
    doc, standin, http = okta_doc
    verbatim = http.post("/enroll", json=doc["enroll_request"])
    # every member is known (no E0000003); the example's key is no P-384 point, so it is refused
    assert verbatim.status_code == 400 and verbatim.json()["errorCode"] == "E0000001"
    assert "yubicoTransportKeyJWK" in verbatim.json()["errorSummary"]
    assert keys(verbatim.json()) == set(doc["error_members"])

    valid = JWK.generate(kty="EC", crv="P-384").export_public(as_dict=True)
    body = {**doc["enroll_request"], "yubicoTransportKeyJWK": {
        **doc["enroll_request"]["yubicoTransportKeyJWK"], "x": valid["x"], "y": valid["y"]}}
    answer = http.post("/enroll", json=body)
    assert answer.status_code == 200, answer.text
    enrolled = answer.json()
    assert keys(enrolled) == set(doc["enroll_response_members"])
    assert keys(enrolled["credRequests"][0]) == set(doc["cred_request_members"])
    header = json.loads(JWK  # the JWE header names the example's transport kid
                        and __import__("base64").urlsafe_b64decode(enrolled["pinRequestJwe"].split(".")[0] + "=="))
    assert header["kid"] == "APCS-Ttrans-C19881-I009" and header["alg"] == "ECDH-ES+A256KW" and header["enc"] == "A256GCM"


def test_okta_activate_send_pin_list_and_fulfillment_request_examples(okta_doc, factory):
    doc, standin, http = okta_doc
    user = doc["enroll_request"]["userId"]
    transport = factory.jwks("transport")["keys"][0]
    enrolled = http.post("/enroll", json={**doc["enroll_request"], "yubicoTransportKeyJWK": {
        k: transport[k] for k in ("kty", "crv", "kid", "use", "x", "y")}}).json()
    cred = enrolled["credRequests"][0]
    product, _ = factory.program(enrolled["pinRequestJwe"], [cred["credRequestJwe"]])
    body = {"fulfillmentProvider": "yubico", "userId": user, "serial": product["serial_number"],
            "version": product["firmware_version"], "yubicoSigningJwks": factory.jwks("signing")["keys"],
            "pinResponseJwe": product["fido_pin_response"],
            "credResponses": [{"credResponseJwe": product["fido_credential_responses"][0],
                               "authenticatorEnrollmentId": cred["authenticatorEnrollmentId"]}]}
    assert keys(body) == set(doc["activate_request_members"])
    assert keys(body["credResponses"][0]) == set(doc["cred_response_members"])
    answer = http.post("/activate", json=body)
    assert answer.status_code == 200, answer.text
    assert keys(answer.json()) == set(doc["activate_response_members"])
    pin = {"authenticatorEnrollmentId": cred["authenticatorEnrollmentId"], "fulfillmentProvider": "yubico", "userId": user}
    assert keys(pin) == set(doc["send_pin_request_members"])
    assert http.post("/send-pin", json=pin).status_code == 204
    [factor] = http.get(f"/users/{user}/enrollments").json()
    assert keys(factor) == set(doc["factor_members"])
    assert http.post("/initiate-fulfillment-request", json=doc["fulfillment_request"]).status_code == 204


# -- Graph ------------------------------------------------------------------------------------------

@pytest.fixture
def graph_doc():
    doc = fixture("graph")
    with running("graph", attestation_roots=attestation_roots()) as (standin, url):
        user = standin.add_user("david@contoso.com", "David Smith")
        client_id, secret = standin.add_client()
        token = httpx.post(f"{url}/{standin.tenant_id}/oauth2/v2.0/token", data={
            "client_id": client_id, "client_secret": secret, "scope": "https://graph.microsoft.com/.default",
            "grant_type": "client_credentials"})
        assert keys(token.json()) == set(doc["token_response_members"])
        bad = httpx.post(f"{url}/{standin.tenant_id}/oauth2/v2.0/token", data={
            "client_id": client_id, "client_secret": "x", "scope": "https://graph.microsoft.com/.default",
            "grant_type": "client_credentials"})
        assert bad.status_code == 401 and keys(bad.json()) == set(doc["token_error_members"])
        yield doc, standin, user, httpx.Client(base_url=url, headers={
            "Authorization": f"Bearer {token.json()['access_token']}"})


def test_graph_creation_options_example_has_our_shape(graph_doc):
    doc, standin, user, http = graph_doc
    answer = http.get(doc["creation_options_request"].replace("{usersId}", user.id))
    assert answer.status_code == 200, answer.text
    ours = answer.json()
    documented = doc["creation_options_response"]
    missing = set(tree(documented)) - set(tree(ours)) - {"/@odata.type"}  # the top type is in @odata.context here
    assert not missing, missing
    for member in ("rp", "user", "authenticatorSelection", "extensions"):
        assert ours["publicKey"][member]["@odata.type"] == documented["publicKey"][member]["@odata.type"]
    assert ours["publicKey"]["@odata.type"] == documented["publicKey"]["@odata.type"]


def test_graph_fido2_method_example_members_are_taken_and_the_answer_has_the_documented_members(graph_doc, factory):
    doc, standin, user, http = graph_doc
    example = http.post(f"/beta/users/{user.id}/authentication/fido2Methods", json=doc["fido2_method_request"])
    # no member of the example is refused; its placeholder clientDataJSON is ("This is the clientDataJSON ...")
    assert example.status_code == 400 and example.json()["error"]["code"] != "BadRequest"
    assert keys(example.json()["error"]) == set(doc["error_members"])
    assert keys(example.json()["error"]["innerError"]) == set(doc["inner_error_members"])

    options = http.get(f"/beta/users/{user.id}/authentication/fido2Methods/creationOptions(challengeTimeoutInMinutes=10)").json()
    sealed = seal_item(transport_jwks=factory.jwks("transport"), options=[options["publicKey"]],
                       origin="https://login.microsoft.com")
    product, _ = factory.program(sealed.pin_request_jwe, sealed.credential_request_jwes)
    opened = open_item_responses(sealed=sealed, pin_response_jwe=product["fido_pin_response"],
                                 credential_response_jwes=product["fido_credential_responses"],
                                 signing_jwks=factory.jwks("signing"))
    body = {"@odata.type": doc["fido2_method_request"]["@odata.type"],
            **fido2_method_body("Red Key", opened.credentials[0])}
    created = http.post(f"/beta/users/{user.id}/authentication/fido2Methods", json=body)
    assert created.status_code == 201, created.text
    assert keys(created.json()) == keys(doc["fido2_method_response"])
    assert created.json()["@odata.type"] == doc["fido2_method_response"]["@odata.type"]


# -- PingOne ----------------------------------------------------------------------------------------

@pytest.fixture
def pingone_doc():
    doc = fixture("pingone")
    with running("pingone", attestation_roots=attestation_roots()) as (standin, url):
        user = standin.add_user("david@pingone.example")
        policy = standin.add_policy(doc["create_request"]["rp"]["id"])
        client_id, secret = standin.add_client()
        token = httpx.post(f"{url}/{standin.environment_id}/as/token", data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
        assert keys(token.json()) == set(doc["token_response_members"])
        yield doc, standin, user, policy, httpx.Client(
            base_url=f"{url}/v1/environments/{standin.environment_id}/users/{user.id}",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"})


def test_pingone_create_and_activate_examples(pingone_doc, factory):
    doc, standin, user, policy, http = pingone_doc
    body = json.loads(json.dumps(doc["create_request"]).replace("{{deviceAuthenticationPolicyID}}", policy.id))
    created = http.post("/devices", json=body)
    assert created.status_code == 201, created.text
    device = created.json()
    assert keys(device) == set(doc["create_response_members"]) and device["status"] == "ACTIVATION_REQUIRED"
    options = normalise_creation_options(device["publicKeyCredentialCreationOptions"])
    sealed = seal_item(transport_jwks=factory.jwks("transport"), options=[options], origin="https://pingone.com")
    product, _ = factory.program(sealed.pin_request_jwe, sealed.credential_request_jwes)
    opened = open_item_responses(sealed=sealed, pin_response_jwe=product["fido_pin_response"],
                                 credential_response_jwes=product["fido_credential_responses"],
                                 signing_jwks=factory.jwks("signing"))
    activation = {"origin": "https://pingone.com", "attestation": attestation_json(opened.credentials[0])}
    assert keys(activation) == set(doc["activate_request_members"])
    assert keys(json.loads(activation["attestation"])) == set(doc["attestation_members"])
    answer = http.post(f"/devices/{device['id']}", content=json.dumps(activation),
                       headers={"Content-Type": ACTIVATE_CONTENT_TYPE})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ACTIVE"


def test_pingone_error_object_has_the_documented_members(pingone_doc):
    doc, standin, user, policy, http = pingone_doc
    refused = http.post("/devices", json={"type": "FIDO2"})
    assert refused.status_code == 400
    assert keys(refused.json()) == set(doc["error_members"])
    assert keys(refused.json()["details"][0]) == set(doc["detail_members"])

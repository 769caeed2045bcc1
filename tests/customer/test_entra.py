"""The Entra-like side: Graph-shaped options, the connector's round trip through a fulfillment
service, the fido2Methods registration, sign-in; and the opaque challenge's checks."""

from __future__ import annotations

import json

import pytest
from fido2.utils import websafe_decode, websafe_encode

from station.customer.entra import (
    ORIGIN,
    RP_ID,
    ChallengeRejected,
    EntraConnector,
    EntraTenant,
    EntraUser,
)
from station.customer.orders import ShipmentTimeout
from station.customer.signin import sign_in
from station.customer.verify import MailedPin, RegistrationRejected
from station.errors import StationError
from station.protocol.jose import open_request
from station.protocol.messages import CredentialRequest
from station.virtual import open_virtual

KIM = EntraUser("7b1a2c3d-0000-4000-8000-00000000c001", "kcook@contoso.com", "Kim Cook")
LEE = EntraUser("7b1a2c3d-0000-4000-8000-00000000c002", "lgu@contoso.com", "Lee Gu")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tenant(clock) -> EntraTenant:
    return EntraTenant(trust_test_ca=True, clock=clock)


@pytest.fixture
def connector(tenant, fulfillment) -> EntraConnector:
    return EntraConnector(tenant, fulfillment, poll_interval=0.0)


def test_creation_options_have_graphs_shape(tenant, clock):
    options = tenant.creation_options(KIM, challenge_timeout_minutes=10)
    assert options["challengeTimeoutDateTime"] == "2027-01-15T08:10:00Z"  # 1_800_000_000 + 600 s
    public = options["publicKey"]
    assert public["rp"] == {"id": "login.microsoft.com", "name": "Microsoft"}
    assert public["timeout"] == 600_000
    assert public["user"]["name"] == KIM.upn and public["user"]["id"] == KIM.handle
    assert public["extensions"] == {
        "hmacCreateSecret": True,
        "enforceCredentialProtectionPolicy": True,
        "credentialProtectionPolicy": "userVerificationOptional",
    }
    assert public["excludeCredentials"] == []
    token = websafe_decode(public["challenge"]).decode("ascii")
    header = json.loads(websafe_decode(token.split(".")[0]))
    assert header == {"alg": "dir", "enc": "A256GCM"} and token.count(".") == 4
    assert KIM.id not in token  # opaque
    with pytest.raises(ValueError):
        tenant.creation_options(KIM, challenge_timeout_minutes=4)


def test_entra_round_trip_registers_and_signs_in(tenant, connector, fulfillment, factory):
    shipment = connector.ship([KIM, LEE], challenge_timeout_minutes=60)
    # what the factory receives: Graph's publicKey sealed per PROTOCOL.md, origin and notAfter set
    posted = fulfillment.shipments[shipment.shipment_id]["body"]
    request = open_request(posted["shipment_items"][0]["product_customizations"][0]["fido_credential_requests"][0],
                           keystore=factory.keystore)
    assert isinstance(request, CredentialRequest)
    assert request.origin == ORIGIN and request.public_key.rp.id == RP_ID
    assert request.public_key.hmac_secret_requested() and request.public_key.cred_protect_enforced()
    assert int(request.not_after.timestamp()) == int(1_800_000_000 + 3600)

    polls = []
    view = shipment.wait_fulfilled(timeout=5, on_poll=polls.append)
    assert [p["shipment_state"]["shipment_state_id"] for p in polls] == [100, 103]
    assert view["shipment_state"]["shipment_state_id"] == 103

    results = shipment.register()
    assert [r.user for r in results] == [KIM, LEE] and all(r.ok for r in results)
    kim = results[0]
    assert set(kim.method) == {"id", "displayName", "createdDateTime", "aaGuid", "attestationCertificates",
                               "attestationLevel"}
    assert kim.method["attestationLevel"] == "attested" and len(kim.method["attestationCertificates"]) >= 1
    assert kim.method["displayName"] == "Security key of Kim Cook"
    assert kim.firmware_version is not None and "******" in repr(kim) and kim.pin.reveal() not in repr(kim)
    [stored] = tenant.credentials(KIM)
    assert websafe_encode(stored.credential_id) == kim.method["id"]
    # the next options exclude the registered key
    assert [d["id"] for d in tenant.creation_options(KIM)["publicKey"]["excludeCredentials"]] == [kim.method["id"]]

    key = open_virtual(fulfillment.statefiles[shipment.shipment_id][0])
    try:
        signed = sign_in(key, rp_id=RP_ID, origin=ORIGIN, credentials=tenant.credentials(KIM),
                         pin=kim.pin, new_pin=MailedPin("640213"))
    finally:
        key.close()
    assert signed.pin_change_forced and signed.user_verified and signed.user_id == websafe_decode(KIM.handle)


def _registration_body(tenant, connector, user=KIM):
    """One user's key programmed by the factory, and the fido2Methods body the connector would post."""
    shipment = connector.ship([user], challenge_timeout_minutes=60)
    shipment.wait_fulfilled(timeout=5)
    [(_, sealed)] = shipment.lines
    product = shipment.shipment["shipment_items"][0]["product_data"][0]
    from station.customer.verify import open_item_responses

    opened = open_item_responses(sealed=sealed, pin_response_jwe=product["fido_pin_response"],
                                 credential_response_jwes=product["fido_credential_responses"],
                                 signing_jwks=connector.fulfillment.jwks("signing"))
    return {"displayName": "Key", "publicKeyCredential": opened.credentials[0]}


def test_an_expired_challenge_is_refused(tenant, connector, clock):
    shipment = connector.ship([KIM], challenge_timeout_minutes=60)
    shipment.wait_fulfilled(timeout=5)
    clock.now += 3601
    [result] = shipment.register()
    assert not result.ok and result.error_code == "challenge_rejected" and "expired" in result.error_message
    assert tenant.credentials(KIM) == []


def test_a_registration_for_another_user_is_refused(tenant, connector):
    body = _registration_body(tenant, connector, KIM)
    with pytest.raises(ChallengeRejected, match="another user"):
        tenant.register_fido2_method(LEE, body)


def test_a_challenge_not_issued_by_this_tenant_is_refused(tenant, connector, clock):
    body = _registration_body(tenant, connector)
    other = EntraTenant(trust_test_ca=True, clock=clock)
    with pytest.raises(ChallengeRejected, match="not a token this tenant issued"):
        other.register_fido2_method(KIM, body)


@pytest.mark.parametrize("where", [0, 1, 2, 3, 4])
def test_a_tampered_challenge_token_is_refused(tenant, where):
    token = websafe_decode(tenant.creation_options(KIM)["publicKey"]["challenge"]).decode("ascii")
    parts = token.split(".")
    part = parts[where] or "AAAA"
    parts[where] = part[:-2] + ("AA" if part[-2:] != "AA" else "BA")
    with pytest.raises(ChallengeRejected, match="not a token this tenant issued"):
        tenant.check_challenge(".".join(parts).encode("ascii"), KIM.id)
    tenant.check_challenge(token.encode("ascii"), KIM.id)  # the untouched token passes


def test_a_tampered_challenge_in_the_options_fails_registration(tenant, fulfillment, factory):
    """The factory signs whatever challenge it is given; the tenant's token check refuses it."""
    class Tampering(EntraTenant):
        def creation_options(self, user, **kw):
            options = super().creation_options(user, **kw)
            raw = bytearray(websafe_decode(options["publicKey"]["challenge"]))
            raw[-3] = ord("A") if raw[-3] != ord("A") else ord("B")
            options["publicKey"]["challenge"] = websafe_encode(bytes(raw))
            return options

    connector = EntraConnector(Tampering(trust_test_ca=True), fulfillment, poll_interval=0.0)
    shipment = connector.ship([KIM])
    shipment.wait_fulfilled(timeout=5)
    [result] = shipment.register()
    assert result.error_code == "challenge_rejected"


def test_the_same_credential_cannot_be_registered_twice(tenant, connector):
    body = _registration_body(tenant, connector)
    tenant.register_fido2_method(KIM, body)
    with pytest.raises(RegistrationRejected, match="already registered"):
        tenant.register_fido2_method(KIM, body)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: {"publicKeyCredential": b["publicKeyCredential"]}, "displayName"),
        (lambda b: {**b, "publicKeyCredential": {**b["publicKeyCredential"], "rawId": "AAAA"}}, "id and rawId differ"),
        (lambda b: {**b, "publicKeyCredential": None}, "publicKeyCredential"),
    ],
)
def test_a_malformed_fido2methods_body_is_refused(tenant, connector, mangle, message):
    body = _registration_body(tenant, connector)
    with pytest.raises(RegistrationRejected, match=message):
        tenant.register_fido2_method(KIM, mangle(body))


def test_with_vendor_roots_only_a_virtual_key_is_not_genuine(fulfillment):
    strict = EntraTenant(trust_test_ca=False)
    shipment = EntraConnector(strict, fulfillment, poll_interval=0.0).ship([KIM])
    shipment.wait_fulfilled(timeout=5)
    [result] = shipment.register()
    assert result.error_code == "not_genuine" and strict.credentials(KIM) == []


def test_a_failed_item_is_reported_with_its_error_code(tenant, connector, factory):
    def refuse(*args, **kw):
        from station.errors import DeviceUnsupported

        raise DeviceUnsupported("the key cannot force a PIN change")

    factory.program = refuse
    shipment = connector.ship([KIM])
    assert shipment.wait_fulfilled(timeout=5)["shipment_state"]["shipment_state_id"] == 8
    [result] = shipment.register()
    assert (result.error_code, result.error_message) == ("device_unsupported", "the key cannot force a PIN change")


def test_waiting_gives_up_after_the_timeout(tenant, fulfillment):
    fulfillment.polls_before_done = 10**9
    shipment = EntraConnector(tenant, fulfillment, poll_interval=0.01).ship([KIM])
    with pytest.raises(ShipmentTimeout, match="still in state 100"):
        shipment.wait_fulfilled(timeout=0.05)


def test_register_needs_a_finished_shipment_and_ship_needs_users(connector):
    with pytest.raises(ValueError):
        connector.ship([])
    with pytest.raises(StationError, match="wait_fulfilled first"):
        connector.ship([KIM]).register()


def test_the_connector_speaks_to_the_real_fulfillment_service(tenant, factory, live_service):
    """FulfillmentClient as the connector's port; a station loop claims, programs and submits."""
    from station.fulfillment.client import FulfillmentClient

    url, customer_token, station_token = live_service
    with FulfillmentClient(url, customer_token) as customer, FulfillmentClient(url, station_token) as station:
        shipment = EntraConnector(tenant, customer, poll_interval=0.05).ship([KIM])
        claimed = station.claim()
        product, _ = factory.program(claimed.fido_pin_request, claimed.fido_credential_requests)
        station.submit(claimed.item_id, product_data=product, serial_number=product["serial_number"])
        assert shipment.wait_fulfilled(timeout=10)["shipment_state"]["shipment_state_id"] == 102  # programmed
        [result] = shipment.register()
    assert result.ok, result.error_message
    assert len(tenant.credentials(KIM)) == 1

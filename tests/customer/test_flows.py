"""The customer side's flows (Okta Workflows, FIDO Connector for Entra, HID's PingOne) against the
stand-ins and a fulfillment service: one key per shipment to its own recipient, poll, register,
PIN delivery; and what happens when the factory or the shipment fails."""

from __future__ import annotations

import pytest

from station.customer.flows import EntraConnector, OktaWorkflow, PingOneConnector, Recipient, collect, wait_for_shipment
from station.customer.orders import FINISHED_STATES, STOP_STATES, ShipmentTimeout
from station.errors import DeviceUnsupported
from station.protocol.messages import ShipmentRequest

KIM = Recipient(first_name="Kim", last_name="Cook", email="kim@contoso.com", city="Seattle", region="WA",
                postal_code="98101")
LEE = Recipient(first_name="Lee", last_name="Roe", email="lee@example.org", country_code_2="DE", region="",
                city="Berlin", postal_code="10115")


def NOBODY(order, pin):
    """A PIN delivery for tests that do not look at the PIN."""


def finish(flow, fulfillment, order):
    return collect(flow, fulfillment, order, timeout=5, poll_interval=0)


def test_okta_workflow_enroll_ship_activate_send_pin(okta, fulfillment):
    flow = OktaWorkflow(okta.client, fulfillment)
    order = flow.order(okta.user_id, KIM)
    body = fulfillment.shipments[order.shipment_id]["body"]
    ShipmentRequest.model_validate(body)
    [item] = body["shipment_items"]
    assert item["product_quantity"] == 1 and body["recipient"]["recipient_email"] == KIM.email
    assert body["mailing_address"]["city"] == "Seattle"
    finished = finish(flow, fulfillment, order)
    assert finished.ok, finished.error_message
    assert finished.registered["authenticatorEnrollmentIds"] == [order.enrollment_id]
    assert okta.client.list_enrollments(okta.user_id)[0]["status"] == "ACTIVE"
    assert okta.user_id in okta.standin.outbox  # Okta mailed the PIN


def test_okta_workflow_marks_the_factor_errored_when_the_factory_fails(okta, fulfillment, factory):
    factory.program = lambda *a, **k: (_ for _ in ()).throw(DeviceUnsupported("the key cannot force a PIN change"))
    flow = OktaWorkflow(okta.client, fulfillment)
    order = finish(flow, fulfillment, flow.order(okta.user_id, KIM))
    assert not order.ok and order.error_code == "device_unsupported"
    assert okta.client.list_enrollments(okta.user_id)[0]["status"] == "FULFILLMENT_ERRORED"


def test_entra_connector_one_shipment_per_user_each_to_its_own_recipient(graph, fulfillment):
    delivered = []
    flow = EntraConnector(graph.client, fulfillment, deliver_pin=lambda order, pin: delivered.append((order, pin)),
                          challenge_timeout_minutes=60 * 24 * 7)
    lee = graph.standin.add_user("lee@contoso.com", "Lee Roe")
    orders = [flow.order(graph.user_id, KIM), flow.order(lee.id, LEE)]
    assert len({o.shipment_id for o in orders}) == 2
    emails = [fulfillment.shipments[o.shipment_id]["body"]["recipient"]["recipient_email"] for o in orders]
    assert emails == [KIM.email, LEE.email]
    assert orders[0].origin == "https://login.microsoft.com"  # from the options' RP ID
    for order in orders:
        finished = finish(flow, fulfillment, order)
        assert finished.ok, finished.error_message
        assert finished.serial_number in finished.registered["displayName"]
    assert [o.user_id for o, _ in delivered] == [graph.user_id, lee.id]
    assert all(len(pin) == 6 and pin.reveal() not in repr(order) for order, pin in delivered)


def test_entra_connector_reports_a_refused_registration(graph, fulfillment):
    flow = EntraConnector(graph.client, fulfillment, deliver_pin=NOBODY)
    order = flow.order(graph.user_id, KIM)
    graph.standin.relying_party.roots = []  # now accepts any attestation ...
    graph.standin.relying_party.rp = type(graph.standin.relying_party.rp)(id="other.example", name="x")  # ... for another RP
    finished = finish(flow, fulfillment, order)
    assert not finished.ok and finished.error_code == "graph_error" and "RP ID hash" in finished.error_message


def test_pingone_connector_device_ship_activate(pingone, fulfillment):
    delivered = []
    flow = PingOneConnector(pingone.client, fulfillment, deliver_pin=lambda order, pin: delivered.append(pin))
    order = flow.order(pingone.user_id, LEE)
    assert order.enrollment_id in pingone.standin.devices and order.origin == "https://example.org"
    finished = finish(flow, fulfillment, order)
    assert finished.ok, finished.error_message
    assert finished.registered["status"] == "ACTIVE" and len(delivered) == 1


class _Stuck:
    """A fulfillment port whose shipment sits in one state."""

    def __init__(self, inner, state):
        self.inner, self.state = inner, state

    def jwks(self, kind):
        return self.inner.jwks(kind)

    def post_shipment(self, body):
        return self.inner.post_shipment(body)

    def get_shipment(self, shipment_id):
        return {"shipment_id": shipment_id, "shipment_state": {"shipment_state_id": self.state},
                "shipment_items": [{"product_data": []}]}


@pytest.mark.parametrize("state", [1, 6, 7, 9, 99, 105, 106])
def test_polling_stops_on_an_error_state_and_the_order_says_so(pingone, fulfillment, state):
    port = _Stuck(fulfillment, state)
    flow = PingOneConnector(pingone.client, port, deliver_pin=NOBODY)
    order = flow.order(pingone.user_id, LEE)
    finished = collect(flow, port, order, timeout=5, poll_interval=0)
    assert not finished.ok and finished.error_code == "shipment_failed" and f"state {state}" in finished.error_message


def test_an_okta_factor_is_marked_errored_when_its_shipment_stops(okta, fulfillment):
    port = _Stuck(fulfillment, 7)
    flow = OktaWorkflow(okta.client, port)
    finished = collect(flow, port, flow.order(okta.user_id, KIM), timeout=5, poll_interval=0)
    assert finished.error_code == "shipment_failed" and "address undeliverable" in finished.error_message
    assert okta.client.list_enrollments(okta.user_id)[0]["status"] == "FULFILLMENT_ERRORED"


@pytest.mark.parametrize("state", [100, 101])
def test_polling_waits_through_received_and_locked(pingone, fulfillment, state):
    port = _Stuck(fulfillment, state)
    order = PingOneConnector(pingone.client, port, deliver_pin=NOBODY).order(pingone.user_id, LEE)
    with pytest.raises(ShipmentTimeout, match=f"state {state}"):
        wait_for_shipment(port, order, timeout=0.05, poll_interval=0.01)


def test_done_and_error_states_follow_protocol_section_4():
    assert sorted(FINISHED_STATES) == [8, 102, 103, 104]
    assert sorted(STOP_STATES) == [1, 6, 7, 9, 99, 105, 106]


def test_the_flows_speak_to_the_real_fulfillment_service(graph, factory, live_service):
    """FulfillmentClient as the port; a station loop claims, programs and submits."""
    from station.fulfillment.client import FulfillmentClient

    url, customer_token, station_token = live_service
    with FulfillmentClient(url, customer_token) as customer, FulfillmentClient(url, station_token) as station:
        flow = EntraConnector(graph.client, customer, deliver_pin=NOBODY)
        order = flow.order(graph.user_id, KIM)
        claimed = station.claim()
        product, _ = factory.program(claimed.fido_pin_request, claimed.fido_credential_requests)
        station.submit(claimed.item_id, product_data=product, serial_number=product["serial_number"])
        finished = collect(flow, customer, order, timeout=10, poll_interval=0.05)
    assert finished.ok, finished.error_message
    assert graph.client.list_methods(graph.user_id)[0]["id"] == finished.registered["id"]

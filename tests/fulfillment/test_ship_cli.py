"""`station ship`, `station delivered` and operator tokens, on the store `station serve` uses
(both backends)."""

from __future__ import annotations

import uuid

from click.testing import CliRunner

from station.cli import cli
from station.fulfillment.store import NewItem, Role, ShipmentState, Store

ENVELOPE = {"delivery_type": 1,
            "recipient": {"recipient_firstname": "Ada", "recipient_lastname": "Lovelace",
                          "recipient_email": "ada@acme.example", "recipient_telephone": "+44 20 7946 0000"},
            "mailing_address": {"street_line1": "1 Main St", "city": "London", "country_code_2": "GB"}}
PRODUCT = {"serial_number": "1", "firmware_version": "5.7.1", "fido_pin_response": "a.b.c.d.e",
           "fido_credential_responses": ["f.g.h.i.j"]}


def _item() -> NewItem:
    return NewItem(descriptor={"product_id": 29}, pin_request=f"{uuid.uuid4().hex}.eA.eQ.eg.eA",
                   credential_requests=[f"{uuid.uuid4().hex}.eA.eQ.eg.eQ"])


def _programmed(store: Store) -> str:
    shipment_id = store.create_shipment("acme", ENVELOPE, [_item()])
    station = store.authenticate(store.create_token(Role.STATION, "st"))
    store.submit(station, store.claim(station, 60).item_id, product_data=PRODUCT)
    return shipment_id


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_ship_then_delivered(db_url, store):
    shipment_id = _programmed(store)
    result = run("ship", shipment_id, "--tracking", "1Z999AA10123456784", "--db", db_url)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"shipment {shipment_id}: 103 shipped, tracking 1Z999AA10123456784"
    shipment = store.get_shipment("acme", shipment_id)
    assert (shipment.state, shipment.tracking_number) == (ShipmentState.SHIPPED, "1Z999AA10123456784")
    result = run("delivered", shipment_id, "--db", db_url)
    assert result.exit_code == 0 and "104 delivered" in result.output
    assert store.get_shipment("acme", shipment_id).state is ShipmentState.DELIVERED
    assert [r.event.value for r in store.shipment_audit(shipment_id)][-2:] == ["state", "state"]


def test_ship_refuses_what_is_not_ready_with_one_line(db_url, store):
    queued = store.create_shipment("acme", ENVELOPE, [_item()])
    for args, code in (
        (("ship", queued, "--tracking", "1Z"), "invalid_transition"),
        (("delivered", queued), "invalid_transition"),
        (("ship", str(uuid.uuid4()), "--tracking", "1Z"), "not_found"),
        (("ship", "not-a-uuid", "--tracking", "1Z"), "usage"),
        (("ship", queued, "--tracking", "bad\ntracking"), "invalid_request"),
    ):
        result = run(*args, "--db", db_url)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith(f"{code}: ") and result.output.count("\n") == 1, result.output
        assert "Traceback" not in result.output
    assert run("ship", queued, "--db", db_url).exit_code == 2  # --tracking is required
    assert store.get_shipment("acme", queued).state is ShipmentState.RECEIVED


def test_tokens_create_an_operator_token(db_url, store):
    result = run("tokens", "create", "--db", db_url, "--role", "operator", "--name", "ops")
    assert result.exit_code == 0, result.output
    assert store.authenticate(result.output.strip()).role is Role.OPERATOR

"""The station against a card in the real pcscd (vsmartcard's reader), as with a Crescendo card
or an NFC YubiKey on a reader: `station devices` lists it and `station fulfill` programs it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from pcsc_cards import TEST_READER, start_serve, stop_serve, wait_for_card

from station.cli import cli
from station.customer.orders import shipment_body
from station.protocol.jose import open_response
from station.virtual import new_virtual

pytestmark = pytest.mark.pcscd


@pytest.fixture
def card(pcscd, tmp_path):
    """insert(profile) → the state file of a fresh virtual key inserted into TEST_READER."""
    processes = []

    def insert(profile: str):
        statefile = tmp_path / f"{profile}.json"
        new_virtual(statefile, profile).close()
        start_serve(statefile, processes)
        wait_for_card()
        return statefile

    yield insert
    for process in processes:
        stop_serve(process)


@pytest.mark.parametrize("profile, serial_readable", [("yubikey-5-nfc-5.7", True), ("crescendo-4000", True)])
def test_devices_lists_the_card_with_its_model_and_serial(card, profile, serial_readable):
    card(profile)
    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    found = [d for d in json.loads(result.output) if d["path"] == TEST_READER]
    assert len(found) == 1
    device = found[0]
    assert device["transport"] == "pcsc" and device["pin_set"] is False
    assert (device["serial_number"] is not None) == serial_readable
    assert ("YubiKey 5" if profile.startswith("yubikey") else "Crescendo") in device["model"]


def test_fulfill_programs_a_card_through_pcscd_only_with_the_test_ca_trusted(card, tmp_path, keystore, order):
    card("yubikey-5-nfc-5.7")
    sealed = order("graph", "okta")
    shipment = tmp_path / "shipment.json"
    shipment.write_text(json.dumps(shipment_body([sealed])))
    out = tmp_path / "out.json"
    base = ["fulfill", str(shipment), "--keys", str(keystore.path), "--device", f"pcsc:{TEST_READER}", "--out", str(out)]

    refused = CliRunner().invoke(cli, base)  # a pcsc: key is treated as real: the TEST CA is not trusted
    assert refused.exit_code == 1
    product = json.loads(out.read_text())["shipment_items"][0]["product_data"][0]
    assert product["error_code"] == "device_error" and "not genuine" in product["error_message"]


def test_fulfill_through_pcscd_gives_responses_the_customer_opens(card, tmp_path, keystore, order):
    card("yubikey-5-nfc-5.7")
    sealed = order("graph", "okta")
    shipment = tmp_path / "shipment.json"
    shipment.write_text(json.dumps(shipment_body([sealed])))
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, ["fulfill", str(shipment), "--keys", str(keystore.path), "--device",
                                      f"pcsc:{TEST_READER}", "--out", str(out), "--trust-test-ca"])
    assert result.exit_code == 0, result.output
    product = json.loads(out.read_text())["shipment_items"][0]["product_data"][0]
    pin = open_response(product["fido_pin_response"], response_private_key=sealed.response_key,
                        signing_jwks=keystore.jwks("signing"), request_jwe=sealed.pin_request_jwe)
    assert pin.force_pin_change is True and pin.serial_number == product["serial_number"] is not None
    assert len(product["fido_credential_responses"]) == 2

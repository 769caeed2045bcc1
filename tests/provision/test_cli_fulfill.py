"""`station fulfill`, `station reset` and `station devices` as a script or a technician calls them."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

from station.cli import cli
from station.customer.orders import shipment_body
from station.protocol.jose import open_response


def write_shipment(tmp_path, items) -> str:
    path = tmp_path / "shipment.json"
    path.write_text(json.dumps(shipment_body(items)))
    return str(path)


def test_fulfill_makes_a_fresh_virtual_key_per_item_and_writes_product_data(tmp_path, keystore, order):
    items = [order("graph"), order("okta")]
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, [
        "fulfill", write_shipment(tmp_path, items), "--keys", str(keystore.path), "--device",
        f"virtual:{tmp_path}/vkeys/", "--profile", "yubikey-5-nfc-5.7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["shipment_items"]) == 2
    serials = set()
    for item, sealed in zip(data["shipment_items"], items):
        product = item["product_data"][0]
        serials.add(product["serial_number"])
        pin = open_response(product["fido_pin_response"], response_private_key=sealed.response_key,
                            signing_jwks=keystore.jwks("signing"), request_jwe=sealed.pin_request_jwe)
        assert pin.serial_number == product["serial_number"]
        assert pin.pin not in result.output
    assert len(serials) == 2  # one key per item
    assert sorted(p.name for p in (tmp_path / "vkeys").iterdir()) == ["item-001.json", "item-002.json"]


def test_fulfill_reports_a_failed_item_and_exits_1(tmp_path, keystore, order):
    items = [order("okta"), order("okta", not_after=datetime.now(timezone.utc) - timedelta(hours=1))]
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, [
        "fulfill", write_shipment(tmp_path, items), "--keys", str(keystore.path), "--device",
        f"virtual:{tmp_path}/vkeys/", "--profile", "yubikey-5-nfc-5.7", "--out", str(out)])
    assert result.exit_code == 1
    data = json.loads(out.read_text())
    assert "fido_pin_response" in data["shipment_items"][0]["product_data"][0]
    assert data["shipment_items"][1]["product_data"][0]["error_code"] == "expired"
    assert "Traceback" not in result.output


def test_fulfill_on_one_named_key_refuses_the_second_item_as_not_fresh(tmp_path, keystore, order):
    from station.virtual import new_virtual

    new_virtual(tmp_path / "one.json", "yubikey-5-nfc-5.7").close()
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, [
        "fulfill", write_shipment(tmp_path, [order("okta"), order("okta")]), "--keys", str(keystore.path),
        "--device", f"virtual:{tmp_path / 'one.json'}", "--out", str(out)])
    assert result.exit_code == 1
    codes = [i["product_data"][0].get("error_code") for i in json.loads(out.read_text())["shipment_items"]]
    assert codes == [None, "device_not_fresh"]


def test_fulfill_refuses_a_bad_shipment_file_with_one_line(tmp_path, keystore):
    bad = tmp_path / "bad.json"
    bad.write_text('{"delivery_type": 1}')
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, ["fulfill", str(bad), "--keys", str(keystore.path), "--device", "virtual:x/",
                                      "--profile", "yubikey-5-nfc-5.7", "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.startswith("invalid_request: ") and "Traceback" not in result.output
    assert not out.exists()
    bad.write_text("not json")
    result = CliRunner().invoke(cli, ["fulfill", str(bad), "--keys", str(keystore.path), "--device", "virtual:x/",
                                      "--profile", "yubikey-5-nfc-5.7", "--out", str(out)])
    assert result.exit_code == 1 and result.output.startswith("invalid_request: ")


def test_fulfill_needs_a_profile_for_a_folder_and_an_existing_key_file(tmp_path, keystore, order):
    shipment = write_shipment(tmp_path, [order("okta")])
    out = str(tmp_path / "out.json")
    result = CliRunner().invoke(cli, ["fulfill", shipment, "--keys", str(keystore.path), "--device", f"virtual:{tmp_path}/k/", "--out", out])
    assert result.exit_code == 1 and result.output.startswith("usage: ") and "--profile" in result.output
    result = CliRunner().invoke(cli, ["fulfill", shipment, "--keys", str(keystore.path), "--device", f"virtual:{tmp_path}/none.json", "--out", out])
    assert result.exit_code == 1 and "station virtual new" in result.output
    result = CliRunner().invoke(cli, ["fulfill", shipment, "--keys", str(keystore.path), "--device", "floppy:0", "--out", out])
    assert result.exit_code == 1 and result.output.startswith("usage: unknown device spec")


def test_reset_needs_yes_and_then_makes_a_programmed_key_fresh(tmp_path, keystore, order):
    from station.device.discovery import open_device
    from station.virtual import new_virtual

    statefile = tmp_path / "k.json"
    new_virtual(statefile, "yubikey-5-nfc-5.7").close()
    out = tmp_path / "out.json"
    CliRunner().invoke(cli, ["fulfill", write_shipment(tmp_path, [order("okta")]), "--keys", str(keystore.path),
                             "--device", f"virtual:{statefile}", "--out", str(out)])
    result = CliRunner().invoke(cli, ["reset", "--device", f"virtual:{statefile}"])
    assert result.exit_code == 1 and "--yes" in result.output
    result = CliRunner().invoke(cli, ["reset", "--device", f"virtual:{statefile}", "--yes"])
    assert result.exit_code == 0, result.output
    device = open_device(f"virtual:{statefile}")
    try:
        assert not device.pin_set
    finally:
        device.close()


def test_devices_lists_nothing_without_hardware_and_says_so(monkeypatch):
    monkeypatch.setattr("station.device.discovery.candidates", lambda *a, **kw: [])
    result = CliRunner().invoke(cli, ["devices"])
    assert result.exit_code == 0 and "No authenticator attached" in result.output
    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []


def test_ctrl_c_keeps_the_items_done_and_names_the_key_in_hand(tmp_path, keystore, order, monkeypatch):
    import station.provision.shipment as shipment_module

    real = shipment_module.provision_item
    calls = {"n": 0}

    def interrupted_on_the_second_item(**kw):
        calls["n"] += 1
        if calls["n"] == 2:
            kw["on_step"]("preflight", {})  # the key of item 2 is about to be written
            raise KeyboardInterrupt
        return real(**kw)

    monkeypatch.setattr(shipment_module, "provision_item", interrupted_on_the_second_item)
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, [
        "fulfill", write_shipment(tmp_path, [order("okta"), order("okta"), order("okta")]), "--keys",
        str(keystore.path), "--device", f"virtual:{tmp_path}/vkeys/", "--profile", "yubikey-5-nfc-5.7", "--out", str(out)])
    assert result.exit_code == 1 and "cancelled:" in result.output and "Traceback" not in result.output
    items = [i["product_data"][0] for i in json.loads(out.read_text())["shipment_items"]]
    assert "fido_pin_response" in items[0]  # the sealed result of item 1 is not lost
    assert items[1]["error_code"] == "device_error" and "reset it" in items[1]["error_message"]
    assert items[2]["error_message"] == "not attempted: the run was cancelled"


def test_fulfill_on_one_usb_port_asks_for_the_next_key_and_writes_out_after_every_item(
        tmp_path, keystore, order, monkeypatch):
    from usb_hub import install

    import station.console as console

    monkeypatch.setenv("STATION_LOCK_DIR", str(tmp_path / "locks"))
    (tmp_path / "usb").mkdir()
    hub = install(monkeypatch, tmp_path / "usb")
    port = hub.plug()
    out = tmp_path / "out.json"
    said, written_before_second = [], []

    def technician(text, *a, **kw):  # what the technician reads, and does
        said.append(str(text))
        if "remove the key" in str(text):
            hub.unplug(port)
            hub.plug(path=port)  # the next fresh key, in the same port
        if "item 2: insert" in str(text):
            written_before_second.append(json.loads(out.read_text()))

    monkeypatch.setattr(console.err_console, "print", technician)
    items = [order("okta"), order("okta")]
    shipment = write_shipment(tmp_path, items)
    try:
        result = CliRunner().invoke(cli, ["fulfill", shipment, "--keys", str(keystore.path), "--device", "hid",
                                          "--out", str(out), "--trust-test-ca"])
    finally:
        hub.close()
    assert result.exit_code == 0, (result.output, said)
    products = [i["product_data"][0] for i in json.loads(out.read_text())["shipment_items"]]
    assert all("fido_pin_response" in p for p in products)
    assert products[0]["serial_number"] != products[1]["serial_number"]  # two keys, one per item
    assert len(written_before_second[0]["shipment_items"]) == 1  # item 1 was on disk before item 2 began
    assert sum("remove the key" in s for s in said) == 2


def test_reset_wait_resets_the_key_on_its_next_insertion(tmp_path, keystore, order, monkeypatch):
    from usb_hub import install

    import station.console as console
    from station.device.discovery import open_device
    from station.provision.pin import draw_pin, set_pin

    monkeypatch.setenv("STATION_LOCK_DIR", str(tmp_path / "locks"))
    (tmp_path / "usb").mkdir()
    hub = install(monkeypatch, tmp_path / "usb")
    port = hub.plug()
    statefile = hub.ports[port].statefile
    device = open_device("hid")
    set_pin(device.ctap2(), draw_pin(6))  # a used key
    device.close()
    said = []

    def technician(text, *a, **kw):
        said.append(str(text))
        if "insert it again" in str(text):
            hub.unplug(port)
            hub.plug(path=port, statefile=statefile)  # the same key, powered up again

    monkeypatch.setattr(console.err_console, "print", technician)
    try:
        result = CliRunner().invoke(cli, ["reset", "--device", "hid", "--yes", "--wait"])
        assert result.exit_code == 0, (result.output, said)
        assert any("within 5 s" in s for s in said)  # a YubiKey's own window, not CTAP's 10 s
        again = open_device("hid")
        assert not again.pin_set
        again.close()
    finally:
        hub.close()

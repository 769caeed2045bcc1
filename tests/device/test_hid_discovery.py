"""USB-HID discovery, as on a technician's hub. There is no hidraw in this kernel, so the one
mocked part is python-fido2's enumeration of USB devices (tests/usb_hub.py): it hands out our
virtual key behind the real CtapHidDevice (station.virtual.hid), and everything above it runs as
with a YubiKey."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from station.cli import cli
from station.device.discovery import open_device
from station.errors import UsageError
from usb_hub import install


@pytest.fixture
def usb_hub(tmp_path, monkeypatch):
    """plug(profile) puts a fresh virtual key on the 'USB bus' python-fido2's enumeration sees;
    returns the key's serial number, as printed on it."""
    monkeypatch.setenv("STATION_LOCK_DIR", str(tmp_path / "locks"))
    hub = install(monkeypatch, tmp_path)

    def plug(profile: str) -> str:
        return hub.serial(hub.plug(profile))

    yield plug
    hub.close()


def test_hid_finds_the_one_yubikey_and_reads_its_serial_with_yubikit(usb_hub):
    serial = usb_hub("yubikey-5-nfc-5.7")
    device = open_device("hid")
    try:
        assert device.transport == "usb-hid" and device.spec.startswith("hid:")
        assert device.vendor == "Yubico" and "YubiKey 5" in device.model
        assert device.identity.serial == serial
        assert device.identity.firmware.startswith("5.7")
        assert device.can_force_pin_change and not device.pin_set
    finally:
        device.close()


def test_a_crescendo_key_over_usb_has_no_readable_serial_and_says_why(usb_hub):
    usb_hub("crescendo-key")
    device = open_device("auto")
    try:
        assert device.vendor == "HID Global"
        assert device.identity.serial is None and "HID" in device.identity.serial_note
    finally:
        device.close()


def test_two_keys_on_the_hub_need_a_path_and_devices_lists_both(usb_hub):
    usb_hub("yubikey-5-nfc-5.7")
    usb_hub("yubikey-5-nfc-5.4")
    with pytest.raises(UsageError) as refused:
        open_device("hid")
    assert "2 authenticators" in refused.value.message and "--device" in refused.value.message
    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    listed = [d for d in json.loads(result.output) if d["transport"] == "usb-hid"]
    assert len(listed) == 2
    assert {d["can_force_pin_change"] for d in listed} == {True, False}  # 5.7 can, 5.4 cannot
    assert all(d["serial_number"] for d in listed)


def test_without_pcscd_devices_lists_usb_keys_and_pcsc_says_to_start_pcscd(usb_hub, monkeypatch):
    from smartcard.pcsc.PCSCExceptions import EstablishContextException

    def no_pcscd():
        raise EstablishContextException(-2146435042)  # SCARD_E_NO_SERVICE

    monkeypatch.setattr("smartcard.System.readers", no_pcscd)
    usb_hub("yubikey-5-nfc-5.7")
    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert result.exit_code == 0 and [d["transport"] for d in json.loads(result.output)] == ["usb-hid"]
    with pytest.raises(UsageError) as refused:
        open_device("pcsc")
    assert "start pcscd" in refused.value.message

import uuid

from station.vendors import HID_GLOBAL, YUBICO, lookup, vendor_intermediates, vendor_roots


def test_a_yubikey_57_aaguid_names_every_model_that_reports_it():
    entry = lookup("a25342c0-3cdc-4414-8e46-f4807fca511c")
    assert entry is not None
    assert entry.vendor == YUBICO
    assert {"YubiKey 5 NFC", "YubiKey 5C NFC"} <= set(entry.models)
    assert entry.firmware == "5.7"
    assert "YubiKey 5 NFC" in entry.name and "(5.7)" in entry.name


def test_lookup_accepts_bytes_strings_and_uuids_alike():
    u = uuid.UUID("a25342c0-3cdc-4414-8e46-f4807fca511c")
    assert lookup(u.bytes) == lookup(str(u)) == lookup(u)


def test_an_unknown_aaguid_is_not_in_the_catalogue():
    assert lookup(bytes(16)) is None


def test_crescendo_models_are_hid_global():
    crescendos = [e for e in (lookup(u) for u in _all_aaguids()) if e and any("Crescendo" in m for m in e.models)]
    assert crescendos and all(e.vendor == HID_GLOBAL for e in crescendos)


def test_each_vendor_has_published_roots_that_are_cas():
    for vendor in (YUBICO, HID_GLOBAL):
        roots = vendor_roots(vendor)
        assert roots
        for cert in roots:
            assert cert.extensions.get_extension_for_class(__import__("cryptography").x509.BasicConstraints).value.ca
    assert vendor_intermediates(YUBICO)
    assert vendor_roots("Nobody") == ()


def _all_aaguids():
    import json
    from importlib import resources

    rows = json.loads((resources.files("station") / "data" / "aaguids.json").read_text())
    return {r["aaguid"] for r in rows}


def test_firmware_is_decoded_per_vendor():
    from station.device.identity import firmware_from_info
    from station.vendors import HID_GLOBAL, YUBICO

    assert firmware_from_info(0x050701, YUBICO) == "5.7.1"
    assert firmware_from_info(0x0800, None) == "8.0"  # pico-fido 8.0 (major << 8 | minor), not 0.8.0
    assert firmware_from_info(0x0800, YUBICO) == "0.8.0"
    assert firmware_from_info(0x010000, HID_GLOBAL) == "1.0.0"
    assert firmware_from_info(None, YUBICO) is None and firmware_from_info(1 << 30, YUBICO) is None

"""The trust rows of `station doctor`: store size, BLOB age and nextUpdate, TEST CA trust, attached keys."""

from __future__ import annotations

import datetime as dt
import os

from station.doctor import Check, diagnose, healthy, trust_checks, Target
from station.trust.manage import add_model, import_mds

from .pki import CRESCENDO_4000, NOW, PICO_AAGUID, YUBIKEY_57, mds_entry, pem, root, write


def rows(store, **kw) -> dict[str, Check]:
    list_keys = kw.pop("list_keys", None)
    return {c.name: c for c in trust_checks(Target(trust_dir=store, **kw), list_keys)}


def test_an_empty_store_passes_and_a_missing_blob_is_only_a_warning(store):
    checks = rows(store)
    assert checks["trust store"].ok and "0 operator anchor(s)" in checks["trust store"].detail
    blob = checks["MDS BLOB"]
    assert not blob.ok and blob.warn and "import-mds" in blob.fix
    assert healthy(list(checks.values()))


def test_the_store_size_and_the_blob_age_and_next_update_are_shown(store, mds, tmp_path):
    add_model(store, str(PICO_AAGUID), name="Pico Key", vendor="pico-fido")
    next_update = (NOW + dt.timedelta(days=9)).date()
    import_mds(store, write(tmp_path / "b.jwt", mds.blob([mds_entry(CRESCENDO_4000, [root("R")[0]])], no=5,
                                                         next_update=next_update)),
               write(tmp_path / "r.pem", pem(mds.root)))
    checks = rows(store)
    assert "1 operator model(s)" in checks["trust store"].detail and "1 MDS anchor(s)" in checks["trust store"].detail
    assert checks["MDS BLOB"].ok
    assert checks["MDS BLOB"].detail == f"no 5, imported 0 day(s) ago, nextUpdate {next_update.isoformat()}"


def test_a_blob_past_next_update_is_a_warning_not_a_silent_pass(store, mds, tmp_path):
    stale = (NOW - dt.timedelta(days=4)).date()
    import_mds(store, write(tmp_path / "b.jwt", mds.blob([], next_update=stale)), write(tmp_path / "r.pem", pem(mds.root)))
    blob = rows(store)["MDS BLOB"]
    assert not blob.ok and blob.warn and "past its nextUpdate by 4 day(s)" in blob.detail


def test_the_test_ca_trusted_by_configuration_is_a_red_row(store, monkeypatch):
    assert rows(store)["TEST CA"].ok
    assert rows(store, device="virtual:k.json")["TEST CA"].ok
    monkeypatch.setenv("STATION_RUN_TRUST_TEST_CA", "true")
    monkeypatch.setenv("STATION_RUN_TRUST_DIR", str(store))
    checks = diagnose({}, None, user="nobody", list_readers=lambda: [], list_keys=lambda device: [])
    test_ca = next(c for c in checks if c.name == "TEST CA")
    assert not test_ca.ok and test_ca.required and not test_ca.warn and "trust_test_ca" in test_ca.detail
    assert not healthy(checks)


def test_attached_keys_without_an_anchor_are_named(store):
    checks = rows(store, list_keys=lambda device: [("Pico #1 (usb-hid /dev/hidraw3)", PICO_AAGUID),
                                                   ("YubiKey 5 NFC #9 (usb-hid /dev/hidraw4)", YUBIKEY_57)])
    anchors = checks["key anchors"]
    assert not anchors.ok and str(PICO_AAGUID) in anchors.detail and str(YUBIKEY_57) not in anchors.detail
    fine = rows(store, list_keys=lambda device: [("YubiKey 5 NFC #9", YUBIKEY_57)])["key anchors"]
    assert fine.ok and "1 attached key(s)" in fine.detail


def test_a_store_others_can_read_fails_with_chmod(store):
    add_model(store, str(PICO_AAGUID), name="Pico Key", vendor="pico-fido")
    os.chmod(store, 0o755)
    check = rows(store)["trust store"]
    assert not check.ok and "chmod 0700" in check.fix


def test_attached_keys_are_listed_through_python_fido2s_enumeration(virtual_hid_bus):
    from station.doctor import list_attached_keys

    virtual_hid_bus.plug_new("yubikey-5-nfc-5.7")
    virtual_hid_bus.plug_new("crescendo-key")
    found = list_attached_keys("hid")
    assert sorted(str(a) for _label, a in found) == sorted([str(YUBIKEY_57), "692db549-7ae5-44d5-a1e5-dd20a493b723"])
    assert list_attached_keys("virtual:k.json") is None


def test_station_doctor_opens_keys_only_when_asked(tmp_path):
    import json

    from click.testing import CliRunner

    from station.cli import cli

    for extra in ([], ["--attached-keys"]):
        result = CliRunner().invoke(cli, ["doctor", "--json", "--device", "virtual:x.json", "--trust", str(tmp_path / "t"),
                                          *extra])
        row = next(c for c in json.loads(result.output)["checks"] if c["name"] == "key anchors")
        assert row["ok"] and row["detail"].startswith("not checked")

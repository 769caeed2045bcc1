"""`station trust import-mds`: BLOBs verified by python-fido2's fido2.mds3 against a test MDS root."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from station.trust.mds import shipped_mds_root
from station.trust.policy import Trust

from .pki import (
    CRESCENDO_4000,
    NOW,
    PICO_AAGUID,
    YUBIKEY_57,
    MdsSigner,
    cert,
    ec_key,
    mds_entry,
    name,
    pem,
    root,
    write,
)
from .test_store import one_line_error, snapshot


@pytest.fixture
def mds_root_pem(mds, tmp_path):
    return write(tmp_path / "mds-root.pem", pem(mds.root))


def import_blob(station, tmp_path, blob: bytes, mds_root_pem, name: str = "blob.jwt"):
    return station("import-mds", str(write(tmp_path / name, blob)), "--mds-root", str(mds_root_pem))


def test_a_verified_blob_is_stored_and_its_no_and_next_update_shown(station, store, mds, mds_root_pem, tmp_path):
    hid_root, _ = root("TEST HID FIDO Attestation Root CA 2")
    next_update = (NOW + dt.timedelta(days=20)).date()
    blob = mds.blob([mds_entry(CRESCENDO_4000, [hid_root], description="HID Crescendo 4000 FIDO")],
                    no=42, next_update=next_update)
    result = import_blob(station, tmp_path, blob, mds_root_pem)
    assert result.exit_code == 0, result.output
    assert "no 42" in result.output and f"nextUpdate {next_update.isoformat()}" in result.output

    trust = Trust.default(trust_dir=store)
    assert trust.mds.no == 42
    assert [(a.source, a.certificate) for a in trust.anchors_for(CRESCENDO_4000)] == [("mds", hid_root)]
    assert trust.admit(CRESCENDO_4000).vendor == "HID Global"
    listed = json.loads(station("list", "--json").output)
    assert listed["mds"]["no"] == 42 and any(a["source"] == "mds" for a in listed["anchors"])


def test_the_blob_replaces_the_shipped_roots_for_exactly_the_aaguids_it_lists(station, store, mds, mds_root_pem, tmp_path):
    listed_root, _ = root("TEST Yubico root per MDS")
    blob = mds.blob([mds_entry(YUBIKEY_57, [listed_root])])
    assert import_blob(station, tmp_path, blob, mds_root_pem).exit_code == 0
    trust = Trust.default(trust_dir=store)
    assert [a.certificate for a in trust.anchors_for(YUBIKEY_57)] == [listed_root]
    other_yubikey = next(a for a, m in trust.models.items() if m.vendor == "Yubico" and a != YUBIKEY_57)
    assert {a.source for a in trust.anchors_for(other_yubikey)} == {"shipped"}


@pytest.mark.parametrize("status", ["REVOKED", "USER_KEY_REMOTE_COMPROMISE", "USER_KEY_PHYSICAL_COMPROMISE",
                                    "ATTESTATION_KEY_COMPROMISE", "USER_VERIFICATION_BYPASS"])
def test_a_model_with_a_compromise_or_revoked_status_is_refused_naming_it(station, store, mds, mds_root_pem,
                                                                          tmp_path, status):
    hid_root, _ = root("TEST HID root")
    statuses = [{"status": "FIDO_CERTIFIED_L1", "effectiveDate": "2024-01-01"},
                {"status": status, "effectiveDate": "2025-02-03"}]
    assert import_blob(station, tmp_path, mds.blob([mds_entry(CRESCENDO_4000, [hid_root], statuses=statuses)]),
                       mds_root_pem).exit_code == 0
    with pytest.raises(Exception) as refused:
        Trust.default(trust_dir=store).admit(CRESCENDO_4000)
    assert refused.value.code == "device_error" and f"{status} (effective 2025-02-03)" in refused.value.message
    assert "not written to" in refused.value.message


def test_a_compromised_attestation_certificate_condemns_only_chains_holding_it(station, store, mds, mds_root_pem, tmp_path):
    from base64 import b64encode

    from .pki import der

    ca, ca_key = root("TEST HID root")
    bad = cert(name("Leaked batch", ou="Authenticator Attestation"), ec_key(), issuer=(ca, ca_key), ca=False)
    good = cert(name("Fine batch", ou="Authenticator Attestation"), ec_key(), issuer=(ca, ca_key), ca=False)
    statuses = [{"status": "ATTESTATION_KEY_COMPROMISE", "certificate": b64encode(der(bad)).decode()}]
    assert import_blob(station, tmp_path, mds.blob([mds_entry(CRESCENDO_4000, [ca], statuses=statuses)]),
                       mds_root_pem).exit_code == 0
    trust = Trust.default(trust_dir=store)
    trust.admit(CRESCENDO_4000)  # before the first write the chain is not known: the model is admitted
    assert trust.refusal(CRESCENDO_4000, [good, ca]) is None
    assert trust.refusal(CRESCENDO_4000, [bad, ca]) == "ATTESTATION_KEY_COMPROMISE"


def test_a_blob_with_a_bad_signature_is_refused_and_nothing_imported(station, store, mds, mds_root_pem, tmp_path):
    good = mds.blob([mds_entry(CRESCENDO_4000, [root("R")[0]])], no=3)
    assert import_blob(station, tmp_path, good, mds_root_pem).exit_code == 0
    before = snapshot(store)
    head, payload, signature = mds.blob([mds_entry(CRESCENDO_4000, [root("Evil")[0]])], no=9).split(b".")
    forged = b".".join([head, payload, good.split(b".")[2]])
    one_line_error(import_blob(station, tmp_path, forged, mds_root_pem, "forged.jwt"), "signature does not verify",
                   "nothing was imported")
    assert snapshot(store) == before and Trust.default(trust_dir=store).mds.no == 3


def test_a_blob_under_the_wrong_root_is_refused(station, store, mds, tmp_path):
    other = MdsSigner()
    blob = other.blob([mds_entry(CRESCENDO_4000, [root("R")[0]])])
    one_line_error(import_blob(station, tmp_path, blob, write(tmp_path / "ours.pem", pem(mds.root))),
                   "does not lead to the MDS root CN=TEST MDS Root", "--mds-root")
    # and without --mds-root the FIDO MDS root (GlobalSign Root CA - R3) is used, which it is not signed by
    one_line_error(station("import-mds", str(write(tmp_path / "b.jwt", blob))), "GlobalSign Root CA - R3")
    assert snapshot(store) is None


@pytest.mark.parametrize("content, needle", [
    (b"not a jwt", "three base64url parts"),
    (b"a.b.c", "not base64url JSON"),
    (b"", "three base64url parts"),
])
def test_what_is_no_blob_is_one_line(station, store, mds_root_pem, tmp_path, content, needle):
    one_line_error(import_blob(station, tmp_path, content, mds_root_pem), needle)
    assert snapshot(store) is None


def test_an_expired_signing_certificate_and_an_older_blob_are_refused(station, store, mds, mds_root_pem, tmp_path):
    stale_leaf = cert(name("Old Signer"), mds.leaf_key, issuer=(mds.root, mds.root_key), ca=False,
                      not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=10))
    blob = mds.blob([mds_entry(CRESCENDO_4000, [root("R")[0]])], chain=[stale_leaf])
    one_line_error(import_blob(station, tmp_path, blob, mds_root_pem), "Old Signer is valid only")
    assert import_blob(station, tmp_path, mds.blob([], no=10), mds_root_pem).exit_code == 0
    one_line_error(import_blob(station, tmp_path, mds.blob([], no=9), mds_root_pem, "old.jwt"), "older than the stored no 10")
    assert Trust.default(trust_dir=store).mds.no == 10


def test_a_blob_past_next_update_imports_with_a_warning(station, mds, mds_root_pem, tmp_path):
    blob = mds.blob([], next_update=(NOW - dt.timedelta(days=3)).date())
    result = import_blob(station, tmp_path, blob, mds_root_pem)
    assert result.exit_code == 0 and "has passed" in result.output


def test_an_operator_model_cannot_be_anchored_once_the_blob_names_its_aaguid(station, store, mds, mds_root_pem, tmp_path):
    assert station("add-model", str(PICO_AAGUID), "--name", "Pico Key", "--vendor", "pico-fido").exit_code == 0
    assert import_blob(station, tmp_path, mds.blob([mds_entry(PICO_AAGUID, [root("R")[0]])]), mds_root_pem).exit_code == 0
    one_line_error(station("add-root", str(write(tmp_path / "op.pem", pem(root("Op")[0]))), "--aaguid", str(PICO_AAGUID)),
                   "MDS BLOB")


def test_the_shipped_mds_root_is_globalsign_root_ca_r3():
    from station.trust.certs import fingerprint

    certificate = shipped_mds_root()
    assert certificate.subject.rfc4514_string() == "CN=GlobalSign,O=GlobalSign,OU=GlobalSign Root CA - R3"
    assert fingerprint(certificate) == "cbb522d7b7f127ad6a0113865bdf1cd4102e7d0759af635a7cf4720dc963c53b"


def test_a_stored_blob_is_verified_again_on_every_load(station, store, mds, mds_root_pem, tmp_path):
    assert import_blob(station, tmp_path, mds.blob([mds_entry(CRESCENDO_4000, [root("R")[0]])]), mds_root_pem).exit_code == 0
    stored = next(store.glob("mds-*.jwt"))
    head, payload, signature = stored.read_bytes().split(b".")
    other = mds.blob([mds_entry(CRESCENDO_4000, [root("Swapped")[0]])]).split(b".")[1]
    stored.write_bytes(b".".join([head, other, signature]))
    with pytest.raises(Exception) as refused:
        Trust.default(trust_dir=store)
    assert refused.value.code == "trust" and "signature does not verify" in refused.value.message
    one_line_error(station("show", str(CRESCENDO_4000)), "signature does not verify")

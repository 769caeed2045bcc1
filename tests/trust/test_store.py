"""`station trust add-model | add-root | list | show | remove`: scoped anchors, and bad input refused whole."""

from __future__ import annotations

import datetime as dt
import json
import stat

import pytest

from station.trust.policy import Trust
from station.trust.store import INDEX

from .pki import NOW, PICO_AAGUID, YUBIKEY_57, cert, der, ec_key, name, pem, root, self_signed_attestation, write


def snapshot(store):
    """Every file of the store and its bytes (to show that a refused command changed nothing)."""
    if not store.exists():
        return None
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trust: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def pico_model(station):
    result = station("add-model", str(PICO_AAGUID), "--name", "Pico Key", "--vendor", "pico-fido")
    assert result.exit_code == 0, result.output
    return PICO_AAGUID


def test_a_pinned_self_signed_attestation_certificate_vouches_for_its_model_only(station, store, pico_model, tmp_path):
    att, _key = self_signed_attestation()
    added = station("add-root", str(write(tmp_path / "pico.pem", pem(att))), "--aaguid", str(pico_model))
    assert added.exit_code == 0, added.output
    assert "pinned attestation certificate" in added.output

    trust = Trust.default(trust_dir=store)
    assert [a.kind for a in trust.anchors_for(PICO_AAGUID)] == ["pinned"]
    assert trust.admit(PICO_AAGUID).name == "Pico Key"
    assert all(a.source != "operator" for a in trust.anchors_for(YUBIKEY_57))
    anchor, chain = trust.build_chain([att], PICO_AAGUID)
    assert anchor.source == "operator" and chain == [att]
    with pytest.raises(Exception, match="chains to no anchor"):
        trust.build_chain([att], YUBIKEY_57)

    shown = station("show", str(PICO_AAGUID), "--json")
    report = json.loads(shown.output)
    assert report["model"]["source"] == "operator" and report["verdict"].startswith("admitted")
    listed = json.loads(station("list", "--json").output)
    assert [m["aaguid"] for m in listed["models"]] == [str(PICO_AAGUID)]
    assert [a["aaguids"] for a in listed["anchors"] if a["source"] == "operator"] == [[str(PICO_AAGUID)]]


def test_an_operator_root_cannot_vouch_for_a_yubikey_aaguid(station, store, pico_model, tmp_path):
    ca, _ = root("Operator Root")
    path = write(tmp_path / "op.pem", pem(ca))
    before = snapshot(store)
    one_line_error(station("add-root", str(path), "--aaguid", str(YUBIKEY_57)), str(YUBIKEY_57), "never an operator")
    assert snapshot(store) == before
    # scoped to the operator's model, it still does not vouch for the YubiKey
    assert station("add-root", str(path), "--aaguid", str(pico_model)).exit_code == 0
    trust = Trust.default(trust_dir=store)
    leaf_key = ec_key()
    leaf = cert(name("Fake YubiKey", ou="Authenticator Attestation"), leaf_key, issuer=(ca, _), ca=False, aaguid=YUBIKEY_57)
    with pytest.raises(Exception, match="chains to no anchor trusted for AAGUID"):
        trust.build_chain([leaf], YUBIKEY_57)
    assert trust.build_chain([leaf], PICO_AAGUID)[0].source == "operator"


def test_an_unknown_model_needs_add_model_first_and_add_model_refuses_a_catalogued_one(station, store, tmp_path):
    ca, _ = root("Operator Root")
    one_line_error(station("add-root", str(write(tmp_path / "op.pem", pem(ca))), "--aaguid", str(PICO_AAGUID)),
                   "not in the catalogue", "add-model")
    one_line_error(station("add-model", str(YUBIKEY_57), "--name", "Mine", "--vendor", "Me"), "already catalogued")
    assert snapshot(store) is None


def test_an_unknown_model_is_refused_untouched_with_how_to_add_it(store):
    with pytest.raises(Exception) as refused:
        Trust.default(trust_dir=store).admit(PICO_AAGUID)
    assert refused.value.code == "device_error"
    assert "set it aside" in refused.value.message and "station trust add-model" in refused.value.message


def test_a_model_without_an_anchor_is_refused_and_told_how_to_add_one(station, store, pico_model):
    with pytest.raises(Exception) as refused:
        Trust.default(trust_dir=store).admit(PICO_AAGUID)
    assert "no trust anchor" in refused.value.message and "station trust add-root" in refused.value.message


def test_a_crescendo_4000_has_no_shipped_anchor_and_is_told_to_import_the_mds_blob():
    from .pki import CRESCENDO_4000

    with pytest.raises(Exception) as refused:
        Trust.default().admit(CRESCENDO_4000)
    assert "no trust anchor" in refused.value.message and "import-mds" in refused.value.message


@pytest.mark.parametrize("text", ["not-a-uuid", "a25342c0-3cdc-4414-8e46", "a25342c03cdc44148e46f4807fca511c00",
                                  "{a25342c0-3cdc-4414-8e46-f4807fca511c}", "00000000-0000-0000-0000-000000000000"])
def test_an_unknown_aaguid_format_is_one_line(station, store, text):
    one_line_error(station("add-model", text, "--name", "X", "--vendor", "Y"))
    one_line_error(station("show", text))
    assert snapshot(store) is None


def _expired():
    key = ec_key()
    return cert(name("Expired Root"), key, not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))


def _no_cert_sign():
    key = ec_key()
    return cert(name("CA without keyCertSign"), key, cert_sign=False)


def _issued_leaf():
    ca, ca_key = root("Some CA")
    return cert(name("Some Leaf", ou="Authenticator Attestation"), ec_key(), issuer=(ca, ca_key), ca=False)


def _self_signed_without_basic_constraints():
    key = ec_key()
    return cert(name("Legacy Leaf", ou="Authenticator Attestation"), key, ca=None)


@pytest.mark.parametrize("content, needle", [
    (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n", "malformed PEM"),
    (b"", "no PEM certificate"),
    (b"hello", "no PEM certificate"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "private key"),
    ("der", "DER certificate, not PEM"),
    ("expired", "expired on"),
    ("no-cert-sign", "keyCertSign"),
    ("issued-leaf", "not a CA certificate"),
    ("no-bc", "without Basic Constraints"),
    ("two", "2 certificates"),
])
def test_bad_trust_input_is_one_line_and_changes_nothing(station, store, pico_model, tmp_path, content, needle):
    made = {"der": lambda: der(root("A Root")[0]), "expired": lambda: pem(_expired()),
            "no-cert-sign": lambda: pem(_no_cert_sign()), "issued-leaf": lambda: pem(_issued_leaf()),
            "no-bc": lambda: pem(_self_signed_without_basic_constraints()),
            "two": lambda: pem(root("One")[0]) + pem(root("Two")[0])}
    data = made[content]() if isinstance(content, str) else content
    before = snapshot(store)
    one_line_error(station("add-root", str(write(tmp_path / "bad.pem", data)), "--aaguid", str(pico_model)), needle)
    assert snapshot(store) == before


def test_a_missing_file_and_no_aaguid_are_one_line(station, pico_model, tmp_path):
    one_line_error(station("add-root", str(tmp_path / "absent.pem"), "--aaguid", str(pico_model)), "cannot read")
    ca, _ = root("A Root")
    one_line_error(station("add-root", str(write(tmp_path / "r.pem", pem(ca)))), "--aaguid")


def test_the_store_is_a_0700_folder_of_0600_files_and_remove_undoes_each_step(station, store, pico_model, tmp_path):
    ca, _ = root("Operator Root")
    added = station("add-root", str(write(tmp_path / "op.pem", pem(ca))), "--aaguid", str(pico_model))
    anchor_id = added.output.split("\t")[0]
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    files = sorted(store.iterdir())
    assert {p.name for p in files} == {INDEX, f"anchor-{__import__('hashlib').sha256(pem(ca)).hexdigest()[:16]}.pem"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)

    one_line_error(station("remove", str(pico_model)), "remove them first")
    shipped_id = Trust.default().anchors[0].id
    one_line_error(station("remove", shipped_id), "only operator anchors")
    one_line_error(station("remove", "feedfacefeedface"), "no operator anchor")
    assert station("remove", anchor_id).exit_code == 0
    assert station("remove", str(pico_model)).exit_code == 0
    assert {p.name for p in store.iterdir()} == {INDEX}
    assert Trust.default(trust_dir=store).model(PICO_AAGUID) is None


def test_adding_the_same_anchor_again_widens_its_scope(station, store, tmp_path):
    other = "6d1a3b9c-2f4e-4a8b-9c0d-1e2f3a4b5c6d"
    for aaguid in (str(PICO_AAGUID), other):
        assert station("add-model", aaguid, "--name", f"Model {aaguid[:4]}", "--vendor", "Lab").exit_code == 0
    ca, _ = root("Lab Root")
    path = write(tmp_path / "lab.pem", pem(ca))
    assert station("add-root", str(path), "--aaguid", str(PICO_AAGUID)).exit_code == 0
    assert station("add-root", str(path), "--aaguid", other).exit_code == 0
    anchors = [a for a in Trust.default(trust_dir=store).anchors if a.source == "operator"]
    assert len(anchors) == 1 and {str(a) for a in anchors[0].aaguids} == {str(PICO_AAGUID), other}


def test_a_pinned_certificate_naming_an_aaguid_is_pinned_for_that_aaguid_only(station, pico_model, tmp_path):
    other = "6d1a3b9c-2f4e-4a8b-9c0d-1e2f3a4b5c6d"
    assert station("add-model", other, "--name", "Other", "--vendor", "Lab").exit_code == 0
    att, _ = self_signed_attestation(aaguid=PICO_AAGUID)
    path = write(tmp_path / "p.pem", pem(att))
    one_line_error(station("add-root", str(path), "--aaguid", other), "names AAGUID")
    assert station("add-root", str(path), "--aaguid", str(pico_model)).exit_code == 0


def test_a_damaged_index_is_one_line(station, store, pico_model):
    (store / INDEX).write_text("{not json")
    one_line_error(station("list"), "damaged", "backup")


def test_the_store_location_comes_from_the_run_settings(station, tmp_path, monkeypatch):
    elsewhere = tmp_path / "from-env"
    monkeypatch.setenv("STATION_RUN_TRUST_DIR", str(elsewhere))
    assert station("add-model", str(PICO_AAGUID), "--name", "Pico Key", "--vendor", "pico-fido", trust=False).exit_code == 0
    assert (elsewhere / INDEX).exists()
    config = tmp_path / "station.toml"
    config.write_text('[run]\ntrust_dir = "from-file"\n')
    monkeypatch.delenv("STATION_RUN_TRUST_DIR")
    result = station("list", "--config", str(config), trust=False)
    assert str(tmp_path / "from-file") in result.output


def test_list_and_show_read_as_a_technician_would(station, pico_model, tmp_path):
    att, _ = self_signed_attestation()
    station("add-root", str(write(tmp_path / "pico.pem", pem(att))), "--aaguid", str(pico_model))
    listed = station("list").output.splitlines()
    assert listed[0].endswith("1 operator anchor(s), 1 operator model(s); no MDS BLOB imported")
    rows = [line.split() for line in listed[2:] if not line.startswith((" ", "operator models"))]
    assert {r[1] for r in rows} == {"shipped", "operator"}
    assert any(r[1] == "operator" and r[2] == "pinned" and r[4] == str(pico_model) for r in rows)
    assert f"  {pico_model}  Pico Key (pico-fido)" in listed
    shown = station("show", str(pico_model)).output
    assert "model     Pico Key (pico-fido, from operator)" in shown and "pinned" in shown
    assert "verdict   admitted" in shown

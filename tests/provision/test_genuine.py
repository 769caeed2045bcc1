"""The counterfeit guard on virtual keys: refused untouched before the first write, or verified
against exactly the anchors of its AAGUID (shipped, MDS BLOB, operator) after makeCredential."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from base64 import b64encode

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.utils import websafe_encode
from fido2.webauthn import AttestationObject, AttestedCredentialData, AuthenticatorData

from station.errors import StationError
from station.provision.genuine import TrustStore, verify_genuine
from station.provision.item import provision_item
from station.trust.manage import add_model, add_root, import_mds
from station.virtual.attestation import load_test_ca
from tests.trust.pki import PICO_AAGUID, YUBIKEY_57, MdsSigner, der, mds_entry, pem, root, self_signed_attestation, write

CRESCENDO_4000_PROFILE_AAGUID = uuid.UUID("0b8b05a4-ebd4-4b0b-8f5f-33d7b6e606ab")


def run_item(device, sealed, keystore, trust):
    return provision_item(device=device, pin_request_jwe=sealed.pin_request_jwe,
                          credential_request_jwes=sealed.credential_request_jwes, keystore=keystore, trust=trust)


def untouched(device, make_key, name: str) -> bool:
    """Closed and opened again, the key in `name` has no PIN: nothing was written to it."""
    device.close()
    again = make_key(name=name)
    fresh = not again.pin_set
    again.close()
    return fresh


def pico_like_key(make_key, tmp_path, *, name="pico.json"):
    """A virtual key turned into a pico-fido-like one: an AAGUID no vendor lists, and a self-signed
    attestation certificate without the AAGUID extension (as pico-fido's emulator makes)."""
    device = make_key(name=name)
    device.close()
    statefile = tmp_path / name
    state = json.loads(statefile.read_text())
    att, key = self_signed_attestation("Pico Key Attestation")
    state["aaguid"] = PICO_AAGUID.hex
    state["attestation_cert"] = websafe_encode(der(att))
    state["attestation_key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode()
    statefile.write_text(json.dumps(state))
    return make_key(name=name), att


def test_a_pico_like_key_is_refused_untouched_until_the_operator_admits_its_model(make_key, order, keystore, tmp_path):
    store = tmp_path / "trust"
    device, att = pico_like_key(make_key, tmp_path)
    with pytest.raises(StationError) as refused:
        run_item(device, order("okta"), keystore, TrustStore.default(trust_dir=store))
    assert refused.value.code == "device_error" and not refused.value.key_touched
    assert "unknown model" in refused.value.message and "station trust add-model" in refused.value.message
    assert untouched(device, make_key, "pico.json")

    add_model(store, str(PICO_AAGUID), name="Pico Key", vendor="pico-fido")
    add_root(store, write(tmp_path / "pico.pem", pem(att)), [str(PICO_AAGUID)])
    result = run_item(make_key(name="pico.json"), order("okta", "graph"), keystore, TrustStore.default(trust_dir=store))
    assert len(result.product_data["fido_credential_responses"]) == 2  # certificate without the AAGUID extension: fine


def test_a_pinned_pico_certificate_does_not_admit_another_pico_key(make_key, order, keystore, tmp_path):
    store = tmp_path / "trust"
    _first, att = pico_like_key(make_key, tmp_path, name="first.json")
    add_model(store, str(PICO_AAGUID), name="Pico Key", vendor="pico-fido")
    add_root(store, write(tmp_path / "pico.pem", pem(att)), [str(PICO_AAGUID)])
    other, _ = pico_like_key(make_key, tmp_path, name="second.json")  # same AAGUID, its own self-signed certificate
    with pytest.raises(StationError) as refused:
        run_item(other, order("okta"), keystore, TrustStore.default(trust_dir=store))
    assert "not genuine" in refused.value.message and refused.value.key_touched


def test_an_operator_root_does_not_make_a_yubikey_genuine(make_key, order, keystore, tmp_path):
    store = tmp_path / "trust"
    operator_root = root("Operator Lab Root")
    add_model(store, str(PICO_AAGUID), name="Pico Key", vendor="pico-fido")
    add_root(store, write(tmp_path / "op.pem", pem(operator_root[0])), [str(PICO_AAGUID)])
    fake = make_key(attestation_ca=operator_root)  # a "YubiKey 5 NFC" whose chain ends in the operator's root
    with pytest.raises(StationError) as refused:
        run_item(fake, order("okta"), keystore, TrustStore.default(trust_dir=store))
    assert "not genuine" in refused.value.message and f"AAGUID {YUBIKEY_57}" in refused.value.message


def test_a_crescendo_4000_without_its_anchor_is_refused_before_the_first_write(make_key, order, keystore):
    device = make_key("crescendo-4000", name="c4000.json")
    with pytest.raises(StationError) as refused:
        run_item(device, order("okta"), keystore, TrustStore.default())
    assert refused.value.code == "device_error" and not refused.value.key_touched
    assert "no trust anchor" in refused.value.message and "import-mds" in refused.value.message
    assert untouched(device, make_key, "c4000.json")


@pytest.fixture(scope="module")
def mds() -> MdsSigner:
    return MdsSigner()


def import_test_blob(mds, tmp_path, entries, store):
    blob = write(tmp_path / "blob.jwt", mds.blob(entries))
    return import_mds(store, blob, write(tmp_path / "mds-root.pem", pem(mds.root)))


def test_with_a_blob_a_crescendo_4000_is_verified_against_the_roots_its_entry_lists(make_key, order, keystore, tmp_path, mds):
    """The virtual Crescendo's chain ends in the TEST CA; a test BLOB lists that CA for its AAGUID,
    as the real BLOB lists HID's anchor for the real card. The TEST CA is not trusted otherwise."""
    store = tmp_path / "trust"
    test_ca = load_test_ca()[0]
    import_test_blob(mds, tmp_path, [mds_entry(CRESCENDO_4000_PROFILE_AAGUID, [test_ca])], store)
    trust = TrustStore.default(trust_dir=store)
    assert not trust.test_ca
    result = run_item(make_key("crescendo-4000", name="c4000.json"), order("okta"), keystore, trust)
    assert result.product_data["fido_pin_response"]
    # the same TEST CA does not vouch for a YubiKey AAGUID the BLOB does not list with it
    with pytest.raises(StationError, match="not genuine"):
        run_item(make_key(name="yk.json"), order("okta"), keystore, trust)


def test_a_revoked_model_is_refused_untouched_naming_the_status(make_key, order, keystore, tmp_path, mds):
    store = tmp_path / "trust"
    statuses = [{"status": "REVOKED", "effectiveDate": "2025-06-01"}]
    import_test_blob(mds, tmp_path, [mds_entry(YUBIKEY_57, [load_test_ca()[0]], statuses=statuses)], store)
    device = make_key()
    with pytest.raises(StationError) as refused:
        run_item(device, order("okta"), keystore, TrustStore.default(trust_dir=store, trust_test_ca=True))
    assert "REVOKED (effective 2025-06-01)" in refused.value.message and not refused.value.key_touched
    assert untouched(device, make_key, "key.json")


def test_a_compromised_attestation_key_is_found_after_make_credential(make_key, order, keystore, tmp_path, mds):
    store = tmp_path / "trust"
    device = make_key()
    state = json.loads((tmp_path / "key.json").read_text())
    from fido2.utils import websafe_decode

    leaked = b64encode(websafe_decode(state["attestation_cert"])).decode()
    statuses = [{"status": "ATTESTATION_KEY_COMPROMISE", "effectiveDate": "2025-06-01", "certificate": leaked}]
    import_test_blob(mds, tmp_path, [mds_entry(YUBIKEY_57, [load_test_ca()[0]], statuses=statuses)], store)
    with pytest.raises(StationError) as refused:
        run_item(device, order("okta"), keystore, TrustStore.default(trust_dir=store))
    assert "ATTESTATION_KEY_COMPROMISE" in refused.value.message and refused.value.key_touched


# ---------------------------------------------------------------- none and self attestation
def _attestation(fmt: str, *, with_sig: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    cose = ES256.from_cryptography_key(key.public_key())
    auth_data = AuthenticatorData.create(hashlib.sha256(b"example.com").digest(), 0x41, 1,
                                         AttestedCredentialData.create(YUBIKEY_57.bytes, os.urandom(16), cose))
    client_data_hash = os.urandom(32)
    statement = {}
    if with_sig:
        statement = {"alg": -7, "sig": key.sign(auth_data + client_data_hash, ec.ECDSA(hashes.SHA256()))}
    return bytes(AttestationObject.create(fmt, auth_data, statement)), client_data_hash


@pytest.mark.parametrize("fmt, with_sig, needle", [("none", False, 'attestation "none"'),
                                                   ("packed", True, "self attestation")])
def test_none_and_self_attestation_are_refused_saying_why_and_how(fmt, with_sig, needle):
    attestation, client_data_hash = _attestation(fmt, with_sig=with_sig)
    with pytest.raises(StationError) as refused:
        verify_genuine(attestation, client_data_hash, info_aaguid=YUBIKEY_57, trust=TrustStore.default(trust_test_ca=True))
    assert needle in refused.value.message and "station trust add-root" in refused.value.message


def test_station_fulfill_with_roots_warns_and_a_bad_folder_stops_it_before_any_key(tmp_path, keystore, order, make_key):
    from click.testing import CliRunner

    from station.cli import cli
    from station.customer.orders import shipment_body

    device = make_key()
    device.close()
    folder = tmp_path / "roots"
    folder.mkdir()
    shipment = write(tmp_path / "shipment.json", json.dumps(shipment_body([order("okta")])).encode())
    result = CliRunner().invoke(cli, ["fulfill", str(shipment), "--keys", str(keystore.path), "--device",
                                      f"virtual:{tmp_path}/key.json", "--out", str(tmp_path / "out.json"),
                                      "--roots", str(folder)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "warning: --roots is deprecated" in result.output
    assert result.output.strip().splitlines()[-1] == f"trust: the roots folder {folder} holds no certificate file"
    assert not (tmp_path / "out.json").exists() and untouched(make_key(), make_key, "key.json")


def test_a_key_that_attests_only_with_none_is_refused_before_the_first_write():
    from types import SimpleNamespace

    from station.provision.genuine import admit

    trust = TrustStore.default()
    admit(SimpleNamespace(aaguid=YUBIKEY_57.bytes, attestation_formats=["packed", "none"]), trust)
    with pytest.raises(StationError) as refused:
        admit(SimpleNamespace(aaguid=YUBIKEY_57.bytes, attestation_formats=["none"]), trust)
    assert refused.value.code == "device_error" and 'attests only with "none"' in refused.value.message

"""Persistence, locking, attestation trust, vendor identity hooks, profiles and the CLI."""

from __future__ import annotations

import json
import os
import stat
import uuid
from hashlib import sha256

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from fido2.attestation import AttestationVerifier, InvalidData, UntrustedAttestation
from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin
from fido2.server import Fido2Server
from yubikit.core import Version
from yubikit.management import DeviceInfo

from station.cli import cli
from station.virtual import (
    KeyBusy,
    VirtualAuthenticator,
    VirtualCtapDevice,
    VirtualError,
    new_virtual,
    open_virtual,
)
from station.virtual.attestation import ca_pem, make_ca
from station.virtual.presence import LatencyModel, PresencePolicy

PIN = "123456"


class Pin(UserInteraction):
    def request_pin(self, permissions, rp_id):
        return PIN


class CaVerifier(AttestationVerifier):
    """Trusts one root (the TEST CA in the real test)."""

    def __init__(self, ca_pem: str):
        super().__init__()
        cert = x509.load_pem_x509_certificate(ca_pem.encode())
        self.ca_der = cert.public_bytes(serialization.Encoding.DER)

    def ca_lookup(self, attestation_result, auth_data):
        return self.ca_der


def other_ca():
    return make_ca("Counterfeit Root")


def register(device, verifier=None):
    server = Fido2Server({"id": "example.com", "name": "Example"}, attestation="direct", verify_attestation=verifier)
    options, state = server.register_begin(
        {"id": b"user", "name": "u", "displayName": "U"}, user_verification="required"
    )
    client = Fido2Client(device, DefaultClientDataCollector("https://example.com"), Pin())
    return server.register_complete(state, client.make_credential(options.public_key))


# -- attestation ---------------------------------------------------------------------------------
def test_attestation_trusted_only_with_the_test_ca(key):
    auth = register(key.device, CaVerifier(ca_pem()))
    assert auth.credential_data.aaguid == key.authenticator.aaguid
    cert = x509.load_der_x509_certificate(key.authenticator.attestation_cert_der)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "Authenticator Attestation"
    assert "TEST" in cert.subject.rfc4514_string() and "TEST" in cert.issuer.rfc4514_string()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    aaguid_ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4"))
    assert aaguid_ext.value.value == b"\x04\x10" + key.authenticator.aaguid and not aaguid_ext.critical
    with pytest.raises(UntrustedAttestation):  # a verifier trusting another root refuses it
        register(key.device, CaVerifier(other_ca()[0].public_bytes(serialization.Encoding.PEM).decode()))


def test_counterfeit_keys_are_refused(new_key):
    fake_ca = new_key(pin=PIN, attestation_ca=other_ca())
    with pytest.raises(UntrustedAttestation):
        register(fake_ca.device, CaVerifier(ca_pem()))
    wrong_aaguid = new_key(pin=PIN, cert_aaguid=uuid.uuid4().bytes)
    with pytest.raises(InvalidData):  # packed: certificate AAGUID must match authData
        register(wrong_aaguid.device, CaVerifier(ca_pem()))


# -- persistence and locking --------------------------------------------------------------------
def test_state_persists_across_open_and_close(tmp_path):
    """One process programs the key, another (here: a later open) signs in with it."""
    path = tmp_path / "key.json"
    with new_virtual(path, "yubikey-5-nfc-5.7") as key:
        device = VirtualCtapDevice(key)
        ClientPin(Ctap2(device)).set_pin(PIN)
        auth = register(device)

    device = open_virtual(path)
    client = Fido2Client(device, DefaultClientDataCollector("https://example.com"), Pin())
    credential = {"type": "public-key", "id": auth.credential_data.credential_id}
    found = client.get_assertion(
        {"rpId": "example.com", "challenge": os.urandom(32), "allowCredentials": [credential],
         "userVerification": "required"}
    ).get_response(0)
    assert found.raw_id == auth.credential_data.credential_id
    assert ClientPin(Ctap2(device)).get_pin_retries()[0] == 8
    device.close()


def test_state_file_is_private_and_holds_no_pin(key):
    """The snapshot and its journal (where the PIN's change went) are 0600 and hold only the
    keyed hash; so does the snapshot the next power-up folds the journal into."""
    files = [key.path, key.path.with_name(key.path.name + ".journal")]
    assert files[1].exists()
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        text = path.read_text()
        assert PIN not in text
        assert sha256(PIN.encode()).hexdigest()[:32] not in text
    assert '"pin_hash":"' in files[1].read_text()
    assert PIN not in repr(key.authenticator)
    key.authenticator.close()
    with VirtualAuthenticator.open(key.path):
        assert not files[1].exists()
        text = key.path.read_text()
        assert json.loads(text)["pin_hash"] and PIN not in text
        assert stat.S_IMODE(os.stat(key.path).st_mode) == 0o600


def test_lock_busy_and_released(tmp_path):
    path = tmp_path / "k.json"
    key = VirtualAuthenticator.create(path, "crescendo-key")
    with pytest.raises(KeyBusy):
        VirtualAuthenticator.open(path)
    key.close()
    assert not (tmp_path / "k.json.lock").exists()  # unlock removes the lock file
    with VirtualAuthenticator.open(path) as again:
        assert again.profile.name == "crescendo-key"
        with pytest.raises(KeyBusy):
            VirtualAuthenticator.open(path)


def test_create_and_open_errors(tmp_path):
    path = tmp_path / "k.json"
    with pytest.raises(VirtualError, match="unknown profile"):
        VirtualAuthenticator.create(path, "nope")
    with pytest.raises(VirtualError, match="no virtual key"):
        VirtualAuthenticator.open(path)
    VirtualAuthenticator.create(path, "crescendo-key").close()
    with pytest.raises(VirtualError, match="already exists"):
        VirtualAuthenticator.create(path, "crescendo-key")
    path.write_text("{not json")
    with pytest.raises(VirtualError, match="not a virtual key"):
        VirtualAuthenticator.open(path)
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(VirtualError, match="unsupported state file version"):
        VirtualAuthenticator.open(path)
    with pytest.raises(VirtualError, match="unknown transport"):
        open_virtual(path, transport="bluetooth")


def test_pin_auth_blocked_survives_reopen_only_as_retries(key):
    cp = key.client_pin()
    for _ in range(3):
        with pytest.raises(CtapError):
            cp.get_pin_token("000000")
    key.authenticator.close()
    with VirtualAuthenticator.open(key.path) as again:  # opening is a power-up
        assert ClientPin(Ctap2(VirtualCtapDevice(again))).get_pin_retries() == (5, False)
    key.authenticator = VirtualAuthenticator.open(key.path)  # for the fixture's teardown


# -- presence / latency policies ------------------------------------------------------------------
def test_presence_parse():
    assert PresencePolicy.parse("approve") == PresencePolicy.approve()
    assert PresencePolicy.parse("delay:1.5") == PresencePolicy.delay(1.5)
    assert PresencePolicy.parse("never") == PresencePolicy.never()
    for bad in ("sometimes", "delay:x", "delay:-1"):
        with pytest.raises(VirtualError):
            PresencePolicy.parse(bad)


def test_latency_model_sends_processing_keepalive(tmp_path):
    key = VirtualAuthenticator.create(tmp_path / "k.json", "yubikey-5-nfc-5.7")
    key.close()
    key = VirtualAuthenticator.open(tmp_path / "k.json", latency=LatencyModel({0x04: 0.15}))
    seen = []
    assert key.process(b"\x04", keepalive=seen.append)[0] == 0
    assert seen and set(seen) == {1}
    key.close()


# -- vendor identity hooks ------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.4"])
def test_management_config_parses_with_yubikit(new_key, profile):
    key = new_key(profile).authenticator
    info = DeviceInfo.parse(key.management_config(0), Version(0, 0, 0))
    assert info.serial == key.state.serial
    assert tuple(info.version) == key.profile.firmware
    assert key.management_config(1) == b"\x00"
    assert key.cplc() is None


@pytest.mark.parametrize("profile", ["crescendo-4000", "crescendo-key"])
def test_cplc_carries_serial(new_key, profile):
    key = new_key(profile).authenticator
    cplc = key.cplc()
    assert cplc[:3] == b"\x9f\x7f\x2a" and len(cplc) == 45
    assert int.from_bytes(cplc[3 + 12 : 3 + 16], "big") == key.state.serial
    with pytest.raises(VirtualError):
        key.management_config()


def test_profiles_match_public_aaguids():
    from pathlib import Path

    from station.virtual import PROFILES

    known = json.loads((Path(__file__).resolve().parents[2] / "station/data/aaguids.json").read_text())
    models = {(uuid.UUID(e["aaguid"]).bytes, e["vendor"], e["model"]) for e in known}
    for profile in PROFILES.values():
        if not profile.ctap2:  # a CTAP1/U2F-only key has no AAGUID at all
            assert profile.aaguid == bytes(16)
            continue
        assert (profile.aaguid, profile.vendor, profile.model) in models
    assert PROFILES["yubikey-5-nfc-5.7"].atr.hex() == "3b8d80018073c021c057597562694b6579f9"
    assert PROFILES["crescendo-4000"].usb is None and PROFILES["crescendo-key"].usb.vid == 0x09C3


def test_get_info_per_profile(new_key):
    yk57 = new_key("yubikey-5-nfc-5.7").ctap.info
    assert yk57.firmware_version == 0x050701 and yk57.force_pin_change is False
    assert yk57.options["authnrCfg"] and yk57.options["setMinPINLength"] and yk57.pin_uv_protocols == [2, 1]
    card = new_key("crescendo-4000").ctap.info
    assert card.transports == ["nfc"] and card.algorithms == [{"alg": -7, "type": "public-key"}]
    yk54 = new_key("yubikey-5-nfc-5.4").ctap.info
    assert "FIDO_2_1" not in yk54.versions and "authnrCfg" not in yk54.options


def test_wink_counts(key):
    key.device.call(0x08)
    assert key.authenticator.winks == 1
    with pytest.raises(CtapError):
        key.device.call(0x04)  # CTAPHID_LOCK: not offered over "direct"


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_profiles_new_ca(tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["virtual", "profiles"])
    assert out.exit_code == 0 and out.output.split() == [
        "yubikey-5-nfc-5.7", "yubikey-5-nfc-5.7-pin-complexity", "yubikey-5-nfc-5.4",
        "yubico-u2f-security-key", "crescendo-4000", "crescendo-key"]
    path = tmp_path / "k.json"
    out = runner.invoke(cli, ["virtual", "new", str(path), "--profile", "crescendo-4000"])
    assert out.exit_code == 0 and path.exists()
    out = runner.invoke(cli, ["virtual", "new", str(path), "--profile", "crescendo-4000"])
    assert out.exit_code == 1 and "virtual: " in out.output and "already exists" in out.output
    out = runner.invoke(cli, ["virtual", "new", str(tmp_path / "x.json"), "--profile", "nope"])
    assert out.exit_code == 1 and "unknown profile" in out.output
    out = runner.invoke(cli, ["virtual", "ca"])
    assert out.exit_code == 0 and out.output == ca_pem()
    assert x509.load_pem_x509_certificate(out.output.encode()).subject.rfc4514_string().count("TEST")


def test_yubikit_reads_serial_over_direct_device(new_key):
    from yubikit.management import ManagementSession

    key = new_key("yubikey-5-nfc-5.7")
    info = ManagementSession(key.device).read_device_info()
    assert info.serial == key.authenticator.state.serial and tuple(info.version) == (5, 7, 1)
    card = new_key("crescendo-key")
    with pytest.raises(CtapError):
        card.device.call(0x42, b"\x00")

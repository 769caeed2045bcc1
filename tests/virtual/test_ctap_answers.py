"""Answers as the real key of each profile gives them (issue 11): getInfo of 5.7.1 / 5.4.3,
PIN answers where CTAP 2.1 leaves room, token timers, the storage check after the touch,
authenticatorLargeBlobs, credBlob, largeBlobKey, ES384, Yubico's PIN complexity and the
CTAP1-only key. Sources: station/data/SOURCES.md."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography import x509
from fido2 import cbor
from fido2.cose import ES256, ES384, CoseKey
from fido2.ctap import CtapError
from fido2.ctap1 import Ctap1
from fido2.ctap2 import Ctap2, CredentialManagement
from fido2.ctap2.blob import LargeBlobs
from fido2.ctap2.pin import ClientPin
from fido2.hid import CAPABILITY, CTAPHID
from fido2.utils import sha256

from station.virtual import PresencePolicy
from station.virtual.attestation import OID_AAGUID
from station.virtual.client_pin import TOKEN_INITIAL_USAGE_SECONDS, TOKEN_MAX_USAGE_SECONDS, trivial_pin
from station.virtual.hid import open_hid

PIN = "123456"  # the PIN the new_key fixture sets
ERR = CtapError.ERR
PERM = ClientPin.PERMISSION
CDH = sha256(b"client data")
RP = {"id": "example.com", "name": "Example"}


def code(excinfo) -> ERR:
    return excinfo.value.code


def make_rk(key, user_id=b"user", extensions=None, alg=ES256):
    proto, token = key.token(PERM.MAKE_CREDENTIAL, "example.com")
    return key.ctap.make_credential(
        CDH, RP, {"id": user_id, "name": "u"}, [{"type": "public-key", "alg": alg.ALGORITHM}],
        options={"rk": True}, extensions=extensions,
        pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=proto.VERSION,
    )


def assertion(key, cred_id, extensions=None):
    proto, token = key.token(PERM.GET_ASSERTION, "example.com")
    return key.ctap.get_assertion(
        "example.com", CDH, [{"type": "public-key", "id": cred_id}], extensions=extensions,
        pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=proto.VERSION,
    )


# -- getInfo ---------------------------------------------------------------------------------
def test_5_7_1_get_info_is_the_real_keys(new_key):
    info = new_key().ctap.get_info()
    assert info.versions == ["U2F_V2", "FIDO_2_0", "FIDO_2_1_PRE", "FIDO_2_1"]
    assert info.extensions == ["credProtect", "hmac-secret", "largeBlobKey", "credBlob", "minPinLength"]
    assert [a["alg"] for a in info.algorithms] == [-7, -8, -35]
    assert (info.max_msg_size, info.pin_uv_protocols, info.min_pin_length) == (1280, [2, 1], 4)
    assert (info.remaining_disc_creds, info.max_rpids_for_min_pin) == (100, 1)
    assert (info.max_large_blob, info.max_cred_blob_length) == (4096, 32)
    assert info.options["largeBlobs"] is True
    assert "ep" not in info.options  # retail keys have no enterprise attestation
    assert info.firmware_version == 0x050701


def test_5_4_3_get_info_is_the_real_keys(new_key):
    info = new_key("yubikey-5-nfc-5.4").ctap.get_info()
    assert info.versions == ["U2F_V2", "FIDO_2_0", "FIDO_2_1_PRE"]
    assert (info.max_msg_size, info.pin_uv_protocols) == (1200, [2, 1])
    assert info.options.get("credentialMgmtPreview") is True and "largeBlobs" not in info.options
    key = new_key("yubikey-5-nfc-5.4")
    raw = key.authenticator.get_info()
    assert 0x0B not in raw and 0x0F not in raw  # no maxSerializedLargeBlobArray / maxCredBlobLength


# -- PIN answers -----------------------------------------------------------------------------
def test_pin_retries_without_a_pin_is_pin_not_set(new_key):
    key = new_key()
    with pytest.raises(CtapError) as e:
        key.client_pin().get_pin_retries()
    assert code(e) == ERR.PIN_NOT_SET
    key.client_pin().set_pin(PIN)
    assert key.client_pin().get_pin_retries()[0] == 8


def test_second_set_pin_is_not_allowed(key):
    with pytest.raises(CtapError) as e:
        key.client_pin().set_pin("654987")
    assert code(e) == ERR.NOT_ALLOWED


def test_unused_token_expires_after_the_initial_usage_limit(key):
    proto, token = key.token(PERM.MAKE_CREDENTIAL, "example.com")
    key.authenticator.pin_uv.token.issued -= TOKEN_INITIAL_USAGE_SECONDS + 1
    with pytest.raises(CtapError) as e:
        key.ctap.make_credential(CDH, RP, {"id": b"u"}, [{"type": "public-key", "alg": -7}],
                                 pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=proto.VERSION)
    assert code(e) == ERR.PIN_AUTH_INVALID
    assert key.authenticator.pin_uv.token is None  # stopUsingPinUvAuthToken


def test_used_token_lasts_until_the_max_usage_period(key):
    proto, token = key.token(PERM.CREDENTIAL_MGMT)
    credman = CredentialManagement(key.ctap, proto, token)
    credman.get_metadata()  # first use: the initial limit no longer applies
    key.authenticator.pin_uv.token.issued -= TOKEN_INITIAL_USAGE_SECONDS + 1
    credman.get_metadata()
    key.authenticator.pin_uv.token.issued -= TOKEN_MAX_USAGE_SECONDS
    with pytest.raises(CtapError) as e:
        credman.get_metadata()
    assert code(e) == ERR.PIN_AUTH_INVALID


def test_reset_window_per_model(new_key):
    yubikey, crescendo = new_key(), new_key("crescendo-4000")
    assert (yubikey.authenticator.profile.reset_window, crescendo.authenticator.profile.reset_window) == (5.0, 10.0)
    crescendo.authenticator.powered_up -= 6  # past a YubiKey's window, inside CTAP's 10 s
    crescendo.ctap.reset()
    yubikey.authenticator.powered_up -= 6
    with pytest.raises(CtapError) as e:
        yubikey.ctap.reset()
    assert code(e) == ERR.NOT_ALLOWED


def test_key_store_full_comes_after_the_touch(new_key):
    key = new_key(pin=PIN)
    key.authenticator.state.credentials = []
    for n in range(key.authenticator.profile.max_discoverable):
        make_rk(key, b"user%d" % n)
    assert key.ctap.get_info().remaining_disc_creds == 0
    key.authenticator.presence = PresencePolicy.never(0.05)
    with pytest.raises(CtapError) as e:  # the key waits for the touch before it checks storage
        make_rk(key, b"one more")
    assert code(e) == ERR.USER_ACTION_TIMEOUT
    key.authenticator.presence = PresencePolicy.approve()
    with pytest.raises(CtapError) as e:
        make_rk(key, b"one more")
    assert code(e) == ERR.KEY_STORE_FULL
    make_rk(key, b"user0")  # replacing the same (rp, user) needs no new slot


# -- authenticatorLargeBlobs -----------------------------------------------------------------
def large_blobs(key, permissions=PERM.LARGE_BLOB_WRITE):
    proto, token = key.token(permissions)
    return LargeBlobs(key.ctap, proto, token)


def test_large_blobs_read_write_persist_and_reset(key, new_key):
    lb = large_blobs(key)
    assert lb.read_blob_array() == []
    blob_key = os.urandom(32)
    lb.put_blob(blob_key, b"hello")
    assert lb.get_blob(blob_key) == b"hello"
    key.authenticator.power_cycle()
    assert LargeBlobs(key.ctap).get_blob(blob_key) == b"hello"  # reading needs no token
    key.authenticator.power_cycle()
    key.ctap.reset()
    assert LargeBlobs(key.ctap).read_blob_array() == []


def test_large_blobs_write_in_fragments(key):
    lb = large_blobs(key)
    big = [{1: os.urandom(3000)}]  # several fragments of maxMsgSize - 64
    lb.write_blob_array(big)
    assert lb.read_blob_array() == big


def test_large_blobs_refusals(key):
    with pytest.raises(CtapError) as e:  # a PIN is set: writing needs a token
        LargeBlobs(key.ctap).put_blob(os.urandom(32), b"x")
    assert code(e) == ERR.PUAT_REQUIRED
    with pytest.raises(CtapError) as e:  # a token without lbw
        large_blobs(key, PERM.CREDENTIAL_MGMT).put_blob(os.urandom(32), b"x")
    assert code(e) == ERR.PIN_AUTH_INVALID
    lb = large_blobs(key)
    too_big = [{1: os.urandom(4096)}]
    with pytest.raises(CtapError) as e:
        lb.write_blob_array(too_big)
    assert code(e) == ERR.LARGE_BLOB_STORAGE_FULL

    proto, token = key.token(PERM.LARGE_BLOB_WRITE)
    data = cbor.encode([]) + b"\xff" * 16  # wrong checksum

    def write(offset, chunk, length=None):
        msg = b"\xff" * 32 + b"\x0c\x00" + struct.pack("<I", offset) + sha256(chunk)
        return key.ctap.large_blobs(offset, set=chunk, length=length, pin_uv_protocol=proto.VERSION,
                                    pin_uv_param=proto.authenticate(token, msg))

    with pytest.raises(CtapError) as e:
        write(0, data, len(data))
    assert code(e) == ERR.INTEGRITY_FAILURE
    with pytest.raises(CtapError) as e:  # a fragment out of sequence
        write(5, b"abc")
    assert code(e) == ERR.INVALID_SEQ
    with pytest.raises(CtapError) as e:  # get longer than maxFragmentLength
        key.ctap.large_blobs(0, get=1280)
    assert code(e) == ERR.INVALID_LENGTH
    assert LargeBlobs(key.ctap).read_blob_array() == []  # nothing half-written


def test_no_large_blobs_on_5_4(new_key):
    key = new_key("yubikey-5-nfc-5.4", pin=PIN)
    with pytest.raises(CtapError) as e:
        key.ctap.large_blobs(0, get=10)
    assert code(e) == ERR.INVALID_COMMAND


# -- credBlob, largeBlobKey, ES384 -----------------------------------------------------------
def test_cred_blob_stored_and_returned(key):
    blob = os.urandom(32)
    att = make_rk(key, extensions={"credBlob": blob})
    assert att.auth_data.extensions == {"credBlob": True}
    cred_id = att.auth_data.credential_data.credential_id
    assert len(cred_id) <= key.ctap.info.max_cred_id_length
    got = assertion(key, cred_id, extensions={"credBlob": True})
    assert got.auth_data.extensions == {"credBlob": blob}
    too_long = make_rk(key, b"other", extensions={"credBlob": os.urandom(33)})
    assert too_long.auth_data.extensions == {"credBlob": False}
    empty = make_rk(key, b"third", extensions={"credBlob": b""})
    assert empty.auth_data.extensions == {"credBlob": True}  # an empty blob fits
    got = assertion(key, empty.auth_data.credential_data.credential_id, extensions={"credBlob": True})
    assert got.auth_data.extensions == {"credBlob": b""}


def test_large_blob_key_for_discoverable_credentials(key):
    att = make_rk(key, extensions={"largeBlobKey": True})
    assert att.large_blob_key is not None and len(att.large_blob_key) == 32
    cred_id = att.auth_data.credential_data.credential_id
    assert assertion(key, cred_id, extensions={"largeBlobKey": True}).large_blob_key == att.large_blob_key
    assert assertion(key, cred_id).large_blob_key is None  # only when asked for
    proto, token = key.token(PERM.CREDENTIAL_MGMT)
    creds = CredentialManagement(key.ctap, proto, token).enumerate_creds(sha256(b"example.com"))
    assert creds[0][CredentialManagement.RESULT.LARGE_BLOB_KEY] == att.large_blob_key
    proto, token = key.token(PERM.MAKE_CREDENTIAL, "example.com")
    with pytest.raises(CtapError) as e:  # §12.3: only for a discoverable credential
        key.ctap.make_credential(CDH, RP, {"id": b"u"}, [{"type": "public-key", "alg": -7}],
                                 extensions={"largeBlobKey": True},
                                 pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=proto.VERSION)
    assert code(e) == ERR.INVALID_OPTION


def test_es384_credentials(key, new_key):
    att = make_rk(key, alg=ES384)
    public = CoseKey.parse(att.auth_data.credential_data.public_key)
    assert isinstance(public, ES384)
    got = assertion(key, att.auth_data.credential_data.credential_id)
    public.verify(got.auth_data + CDH, got.signature)
    old = new_key("yubikey-5-nfc-5.4", pin=PIN)
    with pytest.raises(CtapError) as e:
        old.ctap.make_credential(CDH, RP, {"id": b"u"}, [{"type": "public-key", "alg": -35}])
    assert code(e) == ERR.UNSUPPORTED_ALGORITHM


# -- PIN complexity --------------------------------------------------------------------------
@pytest.mark.parametrize("pin", ["123123", "11111111", "12345678", "password", "654321", "0000"])
def test_pin_complexity_refuses_trivial_pins(new_key, pin):
    key = new_key("yubikey-5-nfc-5.7-pin-complexity")
    with pytest.raises(CtapError) as e:
        key.client_pin().set_pin(pin)
    assert code(e) == ERR.PIN_POLICY_VIOLATION
    assert key.ctap.get_info().options["clientPin"] is False


def test_pin_complexity_on_change_and_only_on_that_profile(new_key):
    key = new_key("yubikey-5-nfc-5.7-pin-complexity")
    key.client_pin().set_pin("493817")
    with pytest.raises(CtapError) as e:
        key.client_pin().change_pin("493817", "123123")
    assert code(e) == ERR.PIN_POLICY_VIOLATION
    key.client_pin().change_pin("493817", "739152")
    new_key().client_pin().set_pin("123123")  # a retail 5.7 takes it
    assert not trivial_pin("493817") and not trivial_pin("a1b2c3d4")


# -- the CTAP1-only key ----------------------------------------------------------------------
def test_u2f_only_key_speaks_ctap1_and_nothing_else(new_key):
    from station.virtual import VirtualCtapDevice
    from station.virtual.authenticator import VirtualAuthenticator

    key = new_key("crescendo-key")  # any open key, only for its tmp folder
    path = key.path.with_name("u2f.json")
    authenticator = VirtualAuthenticator.create(path, "yubico-u2f-security-key")
    try:
        for device in (VirtualCtapDevice(authenticator), open_hid(authenticator)):
            assert not device.capabilities & CAPABILITY.CBOR
            with pytest.raises(ValueError):  # python-fido2 sees no CBOR capability
                Ctap2(device)
            with pytest.raises(CtapError) as e:  # and CTAPHID_CBOR getInfo is refused
                device.call(CTAPHID.CBOR, b"\x04")
            assert code(e) == ERR.INVALID_COMMAND
            ctap1 = Ctap1(device)
            app, challenge = sha256(b"https://example.com"), sha256(b"challenge")
            reg = ctap1.register(challenge, app)
            reg.verify(app, challenge)
            assert OID_AAGUID not in [e.oid for e in x509.load_der_x509_certificate(reg.certificate).extensions]
            signed = ctap1.authenticate(challenge, app, reg.key_handle)
            signed.verify(app, challenge, reg.public_key)
    finally:
        authenticator.close()

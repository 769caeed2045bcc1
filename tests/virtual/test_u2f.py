"""CTAP1/U2F: python-fido2's Ctap1 over every transport, the U2F message formats and status
words, user presence, the key handle as a CTAP2 credential (appid) and the shared counter, and
the profiles without U2F keeping CTAP2-only behaviour."""

from __future__ import annotations

import os
import struct
import threading
import time
from hashlib import sha256

import pytest
from cryptography import x509
from fido2.cose import ES256
from fido2.ctap import CtapError
from fido2.ctap1 import ApduError, Ctap1, RegistrationData
from fido2.ctap2 import Ctap2
from fido2.ctap2.config import Config
from fido2.ctap2.pin import ClientPin
from fido2.hid import CAPABILITY, CTAPHID
from hypothesis import given, settings
from hypothesis import strategies as st

from station.virtual import VirtualCtapDevice
from station.virtual.apdu import FidoApplet, open_pcsc
from station.virtual.attestation import OID_AAGUID
from station.virtual.errors import VirtualError
from station.virtual.hid import open_hid
from station.virtual.presence import LatencyModel, PresencePolicy
from station.virtual.u2f import U2fCommands, U2fRequest, U2fStatus

PIN = "123456"  # the PIN the new_key fixture sets

SW = U2fCommands.SW
INS = U2fCommands.INS
CONTROL = U2fCommands.CONTROL
APP_ID = "https://example.com/appid.json"
APP = sha256(APP_ID.encode()).digest()
CHALLENGE = sha256(b"client data").digest()
SELECT_FIDO = bytes.fromhex("00A4040008A0000006472F0001")
U2F_PROFILES = ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.4", "crescendo-key"]


def message(ins: int, p1: int = 0, data: bytes = b"", cla: int = 0) -> bytes:
    """An extended-length U2F request message, as python-fido2's Ctap1 builds it."""
    return struct.pack(">BBBBBH", cla, ins, p1, 0, 0, len(data)) + data + b"\0\0"


def call(key, raw: bytes) -> tuple[bytes, int]:
    response = key.process_u2f(raw)
    return response[:-2], int.from_bytes(response[-2:], "big")


def auth_data(key_handle: bytes, app: bytes = APP, challenge: bytes = CHALLENGE) -> bytes:
    return challenge + app + bytes([len(key_handle)]) + key_handle


def register(key, app: bytes = APP) -> RegistrationData:
    data, sw = call(key, message(INS.REGISTER, 0x03, CHALLENGE + app))
    assert sw == SW.NO_ERROR
    return RegistrationData(data)


# ---------------------------------------------------------------- python-fido2 Ctap1, every transport
def _device(transport: str, key):
    return {"direct": VirtualCtapDevice, "hid": open_hid, "pcsc": open_pcsc}[transport](key)


@pytest.mark.parametrize("transport", ["direct", "hid", "pcsc"])
@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "crescendo-key"])
def test_ctap1_register_and_authenticate(transport_key, transport, profile):
    key = transport_key(profile)
    device = _device(transport, key)
    ctap1 = Ctap1(device)
    assert ctap1.get_version() == "U2F_V2"
    reg = ctap1.register(CHALLENGE, APP)
    reg.verify(APP, CHALLENGE)  # signed by the attestation key over 0x00||app||chal||kh||pub
    assert reg.certificate == key.attestation_cert_der
    cert = x509.load_der_x509_certificate(reg.certificate)
    assert cert.extensions.get_extension_for_oid(OID_AAGUID).value.value[2:] == key.aaguid
    first = ctap1.authenticate(CHALLENGE, APP, reg.key_handle)
    first.verify(APP, CHALLENGE, reg.public_key)
    second = ctap1.authenticate(CHALLENGE, APP, reg.key_handle)
    assert (first.user_presence, second.counter) == (0x01, first.counter + 1)
    with pytest.raises(ApduError) as known:
        ctap1.authenticate(CHALLENGE, APP, reg.key_handle, check_only=True)
    with pytest.raises(ApduError) as other_app:
        ctap1.authenticate(CHALLENGE, sha256(b"other").digest(), reg.key_handle)
    assert (known.value.code, other_app.value.code) == (SW.CONDITIONS_NOT_SATISFIED, SW.WRONG_DATA)
    assert Ctap2(device).get_info().versions[0] == "U2F_V2"
    device.close()


@pytest.mark.parametrize("profile", U2F_PROFILES)
def test_hid_and_direct_report_msg_capability(transport_key, profile):
    key = transport_key(profile)
    hid = open_hid(key)
    assert hid.capabilities == CAPABILITY.WINK | CAPABILITY.CBOR
    assert VirtualCtapDevice(key).capabilities == CAPABILITY.WINK | CAPABILITY.CBOR
    assert hid.call(CTAPHID.MSG, b"") == SW.WRONG_LENGTH.to_bytes(2, "big")  # MSG never errors
    hid.close()


@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "crescendo-key"])
def test_select_answers_u2f_v2(transport_key, profile):
    applet = FidoApplet(transport_key(profile))
    assert applet.apdu(SELECT_FIDO) == b"U2F_V2\x90\x00"


# ---------------------------------------------------------------- a profile without U2F
def test_crescendo_4000_keeps_ctap2_only_behaviour(transport_key):
    key = transport_key("crescendo-4000")
    assert not key.profile.u2f and "U2F_V2" not in key.get_info()[1]
    applet = FidoApplet(key)
    assert applet.apdu(SELECT_FIDO) == b"FIDO_2_0\x90\x00"
    assert applet.apdu(bytes.fromhex("00030000")) == b"\x6d\x00"
    device = VirtualCtapDevice(key)
    assert device.capabilities & CAPABILITY.NMSG
    with pytest.raises(CtapError) as raised:
        device.call(CTAPHID.MSG, message(INS.VERSION))
    assert raised.value.code == CtapError.ERR.INVALID_COMMAND
    with pytest.raises(VirtualError):
        key.process_u2f(message(INS.VERSION))


# ---------------------------------------------------------------- NFC framing
def test_u2f_over_nfc_with_extended_apdu_chaining_and_get_response(transport_key):
    key = transport_key()
    applet = FidoApplet(key)
    applet.apdu(SELECT_FIDO)
    reg = register(key)
    body = auth_data(reg.key_handle)
    head, tail = body[:50], body[50:]
    assert applet.apdu(bytes([0x10, INS.AUTHENTICATE, 0x03, 0, len(head)]) + head) == b"\x90\x00"
    answer = applet.apdu(bytes([0x00, INS.AUTHENTICATE, 0x03, 0, len(tail)]) + tail + b"\x00")
    assert answer[-2:] == b"\x90\x00" and answer[0] == 0x01
    extended = applet.apdu(message(INS.REGISTER, 0x03, CHALLENGE + APP))  # Le 0000: all of it
    assert extended[-2:] == b"\x90\x00" and RegistrationData(extended[:-2]).key_handle
    short = applet.apdu(bytes([0, INS.REGISTER, 0x03, 0, 64]) + CHALLENGE + APP + b"\x00")
    assert short[-2:] == b"\x61\x00" and len(short) == 258  # the rest by GET RESPONSE


# ---------------------------------------------------------------- message format and status words
@pytest.mark.parametrize(
    ("raw", "sw"),
    [
        (b"\x00\x03\x00", SW.WRONG_LENGTH),  # shorter than a header
        (message(INS.VERSION, data=b"x"), SW.WRONG_LENGTH),
        (message(INS.REGISTER, data=b"x" * 63), SW.WRONG_LENGTH),
        (message(INS.AUTHENTICATE, 0x03, b"x" * 64), SW.WRONG_LENGTH),
        (message(INS.AUTHENTICATE, 0x03, b"x" * 64 + b"\x05abc"), SW.WRONG_LENGTH),
        (message(INS.AUTHENTICATE, 0x03, b"x" * 64 + b"\x00"), SW.WRONG_DATA),  # empty key handle
        (message(INS.AUTHENTICATE, 0x05, b"x" * 64 + b"\x00"), SW.WRONG_DATA),  # control byte
        (bytes.fromhex("000300000004"), SW.WRONG_LENGTH),  # short Lc 4, no data
        (bytes.fromhex("0003000000001000"), SW.WRONG_LENGTH),  # extended Lc 16, no data
        (message(0x04), SW.INS_NOT_SUPPORTED),
        (message(0xC0), SW.INS_NOT_SUPPORTED),
        (message(INS.VERSION, cla=0x80), SW.CLA_NOT_SUPPORTED),
    ],
)
def test_status_words(transport_key, raw, sw):
    assert call(transport_key(), raw) == (b"", sw)


@pytest.mark.parametrize("raw", ["00030000", "0003000000", "00030000000000", "000300000000000000"])
def test_version_in_every_length_form(transport_key, raw):
    assert call(transport_key(), bytes.fromhex(raw)) == (b"U2F_V2", SW.NO_ERROR)


def test_request_parse_short_form():
    parsed = U2fRequest.parse(bytes.fromhex("0002070003AABBCC00"))
    assert parsed == U2fRequest(0x00, 0x02, 0x07, 0x00, bytes.fromhex("AABBCC"))
    with pytest.raises(U2fStatus):
        U2fRequest.parse(bytes.fromhex("0002070003AABBCC0000"))


def test_any_message_gets_a_status_word(transport_key):
    key = transport_key()
    messages = st.binary(max_size=300) | st.builds(
        message, st.sampled_from([1, 2, 3, 4]), st.sampled_from([0, 3, 7, 8]), st.binary(max_size=200)
    )

    @settings(max_examples=200, deadline=None)
    @given(raw=messages)
    def check(raw: bytes) -> None:
        _, sw = call(key, raw)
        assert sw in set(SW)

    check()


# ---------------------------------------------------------------- control bytes and user presence
def test_check_only_and_dont_enforce(transport_key):
    key = transport_key()
    reg = register(key)
    key.presence = PresencePolicy.never(0)
    assert call(key, message(INS.REGISTER, 0x03, CHALLENGE + APP)) == (b"", SW.CONDITIONS_NOT_SATISFIED)
    assert call(key, message(INS.AUTHENTICATE, CONTROL.ENFORCE_USER_PRESENCE_AND_SIGN, auth_data(reg.key_handle))) == (
        b"", SW.CONDITIONS_NOT_SATISFIED)
    assert call(key, message(INS.AUTHENTICATE, CONTROL.CHECK_ONLY, auth_data(reg.key_handle))) == (
        b"", SW.CONDITIONS_NOT_SATISFIED)
    assert call(key, message(INS.AUTHENTICATE, CONTROL.CHECK_ONLY, auth_data(os.urandom(73)))) == (b"", SW.WRONG_DATA)
    data, sw = call(key, message(INS.AUTHENTICATE, CONTROL.DONT_ENFORCE_USER_PRESENCE_AND_SIGN, auth_data(reg.key_handle)))
    assert sw == SW.NO_ERROR and data[0] == 0x00
    ES256.from_ctap1(reg.public_key).verify(APP + data[:5] + CHALLENGE, data[5:])


def test_delayed_touch_is_asked_for_until_it_comes(transport_key):
    key = transport_key(presence=PresencePolicy.delay(0.3))

    def register_status() -> int:
        return call(key, message(INS.REGISTER, 0x03, CHALLENGE + APP))[1]

    assert register_status() == SW.CONDITIONS_NOT_SATISFIED
    time.sleep(0.2)
    key.power_cycle()  # the pending touch request is lost: the wait starts again
    assert register_status() == SW.CONDITIONS_NOT_SATISFIED
    time.sleep(0.2)
    assert register_status() == SW.CONDITIONS_NOT_SATISFIED
    time.sleep(0.15)
    assert register_status() == SW.NO_ERROR
    assert register_status() == SW.CONDITIONS_NOT_SATISFIED  # a touch is used up


def test_latency_model_and_cancel(transport_key):
    key = transport_key()
    key.latency = LatencyModel(per_command={CTAPHID.MSG: 0.2})
    started = time.monotonic()
    assert call(key, message(INS.VERSION))[1] == SW.NO_ERROR
    assert time.monotonic() - started >= 0.2
    cancel = threading.Event()
    cancel.set()
    assert key.process_u2f(message(INS.VERSION), cancel=cancel) == b"\x69\x85"


# ---------------------------------------------------------------- U2F and CTAP2 credentials together
def test_u2f_registration_is_a_non_discoverable_credential_for_appid(transport_key):
    key = transport_key()
    before = key.remaining_discoverable()
    reg = register(key)
    assert key.remaining_discoverable() == before and key.state.credentials == []
    ctap = Ctap2(VirtualCtapDevice(key))
    allow = [{"type": "public-key", "id": reg.key_handle}]
    assertion = ctap.get_assertion(APP_ID, CHALLENGE, allow)  # rpId = the AppID, as appid does
    assert assertion.auth_data.rp_id_hash == APP and assertion.credential["id"] == reg.key_handle
    ES256.from_ctap1(reg.public_key).verify(bytes(assertion.auth_data) + CHALLENGE, assertion.signature)
    with pytest.raises(CtapError) as raised:
        ctap.get_assertion("example.com", CHALLENGE, allow)
    assert raised.value.code == CtapError.ERR.NO_CREDENTIALS
    with pytest.raises(CtapError) as raised:
        ctap.get_assertion(APP_ID, CHALLENGE)
    assert raised.value.code == CtapError.ERR.NO_CREDENTIALS


def test_one_signature_counter(transport_key):
    key = transport_key()
    reg = register(key)
    ctap = Ctap2(VirtualCtapDevice(key))
    counters = []
    for _ in range(2):
        data, _ = call(key, message(INS.AUTHENTICATE, 0x03, auth_data(reg.key_handle)))
        counters.append(int.from_bytes(data[1:5], "big"))
        counters.append(ctap.get_assertion(APP_ID, CHALLENGE, [{"type": "public-key", "id": reg.key_handle}])
                        .auth_data.counter)
    assert counters == list(range(counters[0], counters[0] + 4))


def _ctap2_credential(key, rp_id: str, alg: int = ES256.ALGORITHM, **extra) -> bytes:
    ctap = Ctap2(VirtualCtapDevice(key))
    att = ctap.make_credential(
        CHALLENGE, {"id": rp_id}, {"id": b"u"}, [{"type": "public-key", "alg": alg}], **extra
    )
    return att.auth_data.credential_data.credential_id


def test_ctap2_credentials_over_u2f(transport_key):
    key = transport_key()
    app = sha256(b"example.com").digest()
    plain = _ctap2_credential(key, "example.com")
    data, sw = call(key, message(INS.AUTHENTICATE, 0x03, auth_data(plain, app)))
    assert sw == SW.NO_ERROR and data[0] == 0x01
    listed = _ctap2_credential(key, "example.com", extensions={"credProtect": 2})
    assert call(key, message(INS.AUTHENTICATE, 0x03, auth_data(listed, app)))[1] == SW.NO_ERROR
    uv_only = _ctap2_credential(key, "example.com", extensions={"credProtect": 3})
    eddsa = _ctap2_credential(key, "example.com", alg=-8)
    for handle in (uv_only, eddsa):
        assert call(key, message(INS.AUTHENTICATE, 0x03, auth_data(handle, app))) == (b"", SW.WRONG_DATA)


def test_a_deleted_discoverable_credential_is_a_bad_key_handle(new_key):
    key = new_key(pin=PIN)
    protocol, token = key.token(ClientPin.PERMISSION.MAKE_CREDENTIAL, "example.com")
    att = key.ctap.make_credential(
        CHALLENGE, {"id": "example.com"}, {"id": b"u"}, [{"type": "public-key", "alg": -7}],
        options={"rk": True}, pin_uv_param=protocol.authenticate(token, CHALLENGE),
        pin_uv_protocol=protocol.VERSION,
    )
    handle = att.auth_data.credential_data.credential_id
    app = sha256(b"example.com").digest()
    assert call(key.authenticator, message(INS.AUTHENTICATE, 0x03, auth_data(handle, app)))[1] == SW.NO_ERROR
    key.authenticator.state.credentials.clear()
    assert call(key.authenticator, message(INS.AUTHENTICATE, 0x03, auth_data(handle, app)))[1] == SW.WRONG_DATA


def test_reset_invalidates_key_handles(transport_key):
    key = transport_key()
    reg = register(key)
    Ctap2(VirtualCtapDevice(key)).reset()
    assert call(key, message(INS.AUTHENTICATE, 0x03, auth_data(reg.key_handle))) == (b"", SW.WRONG_DATA)


def test_always_uv_disables_u2f(new_key):
    key = new_key(pin=PIN)
    protocol, token = key.token(ClientPin.PERMISSION.AUTHENTICATOR_CFG)
    Config(key.ctap, protocol, token).toggle_always_uv()
    assert "U2F_V2" not in key.ctap.get_info().versions
    assert call(key.authenticator, message(INS.VERSION)) == (b"", SW.COMMAND_NOT_ALLOWED)

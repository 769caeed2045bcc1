"""Replays the APDU sequences libfido2 (>= 1.16 and older) and python-fido2 send to an NFC/PC/SC
authenticator and checks every reply byte for byte against what those clients require.

libfido2's framing, from its source (src/nfc.c, src/iso7816.c, src/pcsc.c):
- iso7816_new() lays every command out in extended form: CLA INS P1 P2=00, Lc as 00 Lc1 Lc2,
  the data, then Le1 Le2;
- nfc_do_tx() takes the 4-byte header, drops the 3-byte Lc and the 2-byte Le, and sends the data
  as SHORT APDUs: blocks of 240 bytes with CLA | 0x10, each followed by Le 00 and answered by
  exactly `90 00` (tx_short_apdu reads 2 bytes and wants SW_NO_ERROR), then the last block with
  CLA as given and Le 00;
- rx_msg() follows SW1 = 61 with GET RESPONSE `CLA C0 00 00 SW2`: CLA 80 after a CTAP (CBOR)
  command from 1.16 on (tx_get_response(..., cbor)), CLA 00 after SELECT and U2F (and for CBOR
  before 1.16);
- pcsc.c receives into a 264-byte buffer (APDULEN): no reply may exceed 256 data bytes + SW.
python-fido2 (fido2/pcsc.py): short blocks of 250 bytes (no Le on chained blocks), last block with
Le 00, GET RESPONSE `00 C0 00 00 SW2`; or with use_ext_apdu one extended APDU without Le.
"""

from __future__ import annotations

import os

import pytest
from fido2 import cbor
from fido2.ctap2 import Ctap2
from fido2.hid import CTAPHID

from station.virtual.apdu import FidoApplet
from station.virtual.device import VirtualCtapDevice
from station.virtual.profiles import PROFILES

SELECT_FIDO_LIBFIDO2 = bytes.fromhex("00A4040008A0000006472F000100")
LIBFIDO2_CHUNK = 240
LIBFIDO2_RX_MAX = 264  # src/pcsc.c APDULEN
PYFIDO2_CHUNK = 250


def libfido2_command(cla: int, ins: int, p1: int, payload: bytes) -> bytes:
    """iso7816_new() + iso7816_add(): the command in extended form, as libfido2 holds it."""
    return bytes([cla, ins, p1, 0, 0]) + len(payload).to_bytes(2, "big") + payload + b"\x00\x00"


def libfido2_frames(apdu: bytes) -> list[bytes]:
    """nfc_do_tx(): the extended-form command as the short APDUs libfido2 puts on the wire."""
    header, data = apdu[:4], apdu[7:-2]
    frames = []
    while len(data) > LIBFIDO2_CHUNK:
        block, data = data[:LIBFIDO2_CHUNK], data[LIBFIDO2_CHUNK:]
        frames.append(bytes([header[0] | 0x10]) + header[1:] + bytes([len(block)]) + block + b"\x00")
    frames.append(header + bytes([len(data)]) + data + b"\x00")
    return frames


class Wire:
    """The card on a wire that records and checks what libfido2 would: each reply <= 264 bytes."""

    def __init__(self, applet: FidoApplet) -> None:
        self.applet = applet
        self.log: list[tuple[bytes, bytes]] = []

    def send(self, apdu: bytes) -> bytes:
        reply = self.applet.apdu(apdu)
        assert len(reply) <= LIBFIDO2_RX_MAX, f"{len(reply)}-byte reply overflows libfido2's buffer"
        self.log.append((apdu, reply))
        return reply


def libfido2_transceive(wire: Wire, apdu: bytes, *, cbor_command: bool, get_response_cla: int | None = None) -> bytes:
    """fido_nfc_tx() + fido_nfc_rx(): send, follow 61xx, return data + SW (rx_msg's result)."""
    frames = libfido2_frames(apdu)
    for frame in frames[:-1]:
        assert wire.send(frame) == b"\x90\x00"  # tx_short_apdu: exactly two bytes, 9000
    reply = wire.send(frames[-1])
    data, sw = reply[:-2], reply[-2:]
    cla = get_response_cla if get_response_cla is not None else (0x80 if cbor_command else 0x00)
    while sw[0] == 0x61:
        reply = wire.send(bytes([cla, 0xC0, 0x00, 0x00, sw[1]]))
        data, sw = data + reply[:-2], reply[-2:]
    return data + sw


@pytest.fixture
def card(transport_key):
    """(applet, direct device) on one fresh YubiKey 5.7: the direct device gives the CTAP answer
    the APDU framing must carry unchanged."""
    key = transport_key("yubikey-5-nfc-5.7")
    return FidoApplet(key), VirtualCtapDevice(key)


def test_libfido2_select_is_answered_u2f_v2_9000(card):
    applet, _ = card
    wire = Wire(applet)
    assert wire.send(SELECT_FIDO_LIBFIDO2) == b"U2F_V2\x90\x00"  # rx_init: FIDO_CAP_CBOR (+ U2F)


@pytest.mark.parametrize("profile, reply", [("crescendo-4000", b"FIDO_2_0"), ("yubikey-5-nfc-5.4", b"U2F_V2")])
def test_libfido2_select_on_every_card_profile(transport_key, profile, reply):
    assert Wire(FidoApplet(transport_key(profile))).send(SELECT_FIDO_LIBFIDO2) == reply + b"\x90\x00"


@pytest.mark.parametrize("get_response_cla", [0x80, 0x00], ids=["libfido2-1.16", "libfido2-1.15"])
def test_libfido2_get_info_comes_whole_through_get_response(card, get_response_cla):
    applet, direct = card
    wire = Wire(applet)
    wire.send(SELECT_FIDO_LIBFIDO2)
    expected = direct.call(CTAPHID.CBOR, bytes([Ctap2.CMD.GET_INFO]))
    assert len(expected) > 256  # so the reply needs 61xx + GET RESPONSE
    apdu = libfido2_command(0x80, 0x10, 0x00, bytes([Ctap2.CMD.GET_INFO]))
    assert apdu == bytes.fromhex("80100000000001040000")  # the extended form libfido2 builds
    got = libfido2_transceive(wire, apdu, cbor_command=True, get_response_cla=get_response_cla)
    assert got == expected + b"\x90\x00"
    # On the wire: the short APDU, then one GET RESPONSE with the SW2 of the 61xx as Le.
    (first, first_reply), (second, second_reply) = wire.log[1:]
    assert first == bytes.fromhex("801000000104") + b"\x00"
    rest = len(expected) - 256
    assert first_reply == expected[:256] + bytes([0x61, rest])
    assert second == bytes([get_response_cla, 0xC0, 0x00, 0x00, rest])
    assert second_reply == expected[256:] + b"\x90\x00"


def test_libfido2_chains_a_long_request_in_240_byte_blocks(card):
    """A getAssertion of ~600 bytes (8 unknown credentials): blocks 90 10 00 00 F0 .. 00 → 9000,
    the last block 80 10 00 00 → the CTAP answer (NO_CREDENTIALS), byte for byte."""
    applet, direct = card
    allow = [{"type": "public-key", "id": bytes([i]) * 64} for i in range(8)]
    request = bytes([Ctap2.CMD.GET_ASSERTION]) + cbor.encode({1: "example.com", 2: b"\x11" * 32, 3: allow})
    expected = direct.call(CTAPHID.CBOR, request)
    wire = Wire(applet)
    wire.send(SELECT_FIDO_LIBFIDO2)
    got = libfido2_transceive(wire, libfido2_command(0x80, 0x10, 0x00, request), cbor_command=True)
    assert got == expected + b"\x90\x00" and expected == b"\x2e"  # CTAP2_ERR_NO_CREDENTIALS
    frames = [apdu for apdu, _ in wire.log[1:]]
    blocks = -(-len(request) // LIBFIDO2_CHUNK)
    assert len(frames) == blocks
    assert all(f[:5] == bytes.fromhex("90100000F0") and f[-1] == 0 for f in frames[:-1])
    assert frames[-1][:4] == bytes.fromhex("80100000") and frames[-1][4] == len(request) - (blocks - 1) * 240


def test_libfido2_make_credential_with_a_long_exclude_list(card):
    """makeCredential chained in 240-byte blocks; the ~700-byte attestation comes back through
    80 C0 GET RESPONSEs in 256-byte pieces and decodes as the authenticator's answer."""
    applet, _ = card
    wire = Wire(applet)
    wire.send(SELECT_FIDO_LIBFIDO2)
    params = {
        1: os.urandom(32),
        2: {"id": "example.com", "name": "Example"},
        3: {"id": b"user-1", "name": "alice"},
        4: [{"type": "public-key", "alg": -7}],
        5: [{"type": "public-key", "id": bytes([i]) * 64} for i in range(4)],
    }
    request = bytes([Ctap2.CMD.MAKE_CREDENTIAL]) + cbor.encode(params)
    assert len(request) > LIBFIDO2_CHUNK
    got = libfido2_transceive(wire, libfido2_command(0x80, 0x10, 0x00, request), cbor_command=True)
    assert got[-2:] == b"\x90\x00" and got[0] == 0
    attestation = cbor.decode(got[1:-2])
    assert attestation[1] == "packed" and len(attestation[2]) > 37
    get_responses = [(a, r) for a, r in wire.log if a[1] == 0xC0]
    assert get_responses and all(a[0] == 0x80 for a, _ in get_responses)
    assert all(len(r) == 258 for _, r in wire.log if r[-2] == 0x61)  # full pieces while more remain


def test_libfido2_u2f_register_uses_get_response_cla_00(card):
    """CTAP_CMD_MSG: the U2F APDU libfido2 builds (iso7816_new(0, U2F_CMD_REGISTER, 0x03, 64)),
    framed short; the ~800-byte registration follows 61xx with GET RESPONSE CLA 00."""
    applet, _ = card
    wire = Wire(applet)
    wire.send(SELECT_FIDO_LIBFIDO2)
    apdu = libfido2_command(0x00, 0x01, 0x03, os.urandom(32) + os.urandom(32))
    got = libfido2_transceive(wire, apdu, cbor_command=False)
    assert got[-2:] == b"\x90\x00" and got[0] == 0x05  # U2F registration response, reserved byte
    assert any(a[:2] == b"\x00\xc0" for a, _ in wire.log)


def test_get_response_without_anything_pending_is_6985_for_both_classes(card):
    applet, _ = card
    wire = Wire(applet)
    wire.send(SELECT_FIDO_LIBFIDO2)
    assert wire.send(bytes.fromhex("80C0000000")) == b"\x69\x85"
    assert wire.send(bytes.fromhex("00C0000000")) == b"\x69\x85"


def test_python_fido2_short_chaining_at_250_bytes(card):
    """python-fido2 chains at 250 bytes and puts Le only on the last block."""
    applet, direct = card
    allow = [{"type": "public-key", "id": bytes([i]) * 64} for i in range(8)]
    request = bytes([Ctap2.CMD.GET_ASSERTION]) + cbor.encode({1: "example.com", 2: b"\x22" * 32, 3: allow})
    wire = Wire(applet)
    wire.send(bytes.fromhex("00A4040008A0000006472F0001"))  # python-fido2's SELECT: no Le
    data = request
    while len(data) > PYFIDO2_CHUNK:
        block, data = data[:PYFIDO2_CHUNK], data[PYFIDO2_CHUNK:]
        assert wire.send(bytes([0x90, 0x10, 0x80, 0x00, len(block)]) + block) == b"\x90\x00"
    assert wire.send(bytes([0x80, 0x10, 0x80, 0x00, len(data)]) + data + b"\x00") == direct.call(
        CTAPHID.CBOR, request) + b"\x90\x00"


def test_python_fido2_extended_apdu_gets_the_whole_reply(card):
    """use_ext_apdu: `80 10 80 00 00 Lc1 Lc2 data` (no Le) → the whole getInfo, no 61xx."""
    applet, direct = card
    applet.apdu(bytes.fromhex("00A4040008A0000006472F0001"))
    expected = direct.call(CTAPHID.CBOR, bytes([Ctap2.CMD.GET_INFO]))
    reply = applet.apdu(bytes.fromhex("80108000000001") + bytes([Ctap2.CMD.GET_INFO]))
    assert reply == expected + b"\x90\x00" and len(expected) > 256


CARD_PROFILES = [name for name, profile in PROFILES.items() if profile.pcsc]


@pytest.mark.parametrize("profile", CARD_PROFILES)
def test_libfido2_1_16_sees_ctap2_on_every_card_profile(transport_key, profile):
    """What `fido2-token -I` and `fido2-cred -M` do over PC/SC with libfido2 1.16: SELECT,
    getInfo, makeCredential (rk, a ~260-byte request), getAssertion — every reply whole through
    80 C0 GET RESPONSE and equal to the CTAP answer the key gives, so libfido2 keeps CTAP2 (no
    U2F fallback, no FIDO_ERR_RX_NOT_CBOR)."""
    key = transport_key(profile)
    applet, direct = FidoApplet(key), VirtualCtapDevice(key)
    wire = Wire(applet)
    select = wire.send(SELECT_FIDO_LIBFIDO2)
    assert select == (b"U2F_V2" if key.profile.u2f else b"FIDO_2_0") + b"\x90\x00"

    def ctap(request: bytes) -> bytes:
        reply = libfido2_transceive(wire, libfido2_command(0x80, 0x10, 0x00, request), cbor_command=True)
        assert reply[-2:] == b"\x90\x00"
        return reply[:-2]

    get_info = bytes([Ctap2.CMD.GET_INFO])
    info = ctap(get_info)
    assert info == direct.call(CTAPHID.CBOR, get_info) and info[0] == 0
    assert cbor.decode(info[1:])[1] == list(key.profile.versions)
    user_id = os.urandom(32)
    params = {
        1: os.urandom(32),
        2: {"id": "example.com", "name": "Example"},
        3: {"id": user_id, "name": "alice@example.com", "displayName": "Alice Example"},
        4: [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -8}],
        5: [{"type": "public-key", "id": os.urandom(64)}],
        7: {"rk": True},
    }
    made = ctap(bytes([Ctap2.CMD.MAKE_CREDENTIAL]) + cbor.encode(params))
    assert made[0] == 0
    attestation = cbor.decode(made[1:])
    assert attestation[1] in ("packed", "none") and len(made) > 256  # needed 61xx + 80 C0
    asserted = ctap(bytes([Ctap2.CMD.GET_ASSERTION]) + cbor.encode({1: "example.com", 2: os.urandom(32)}))
    assert asserted[0] == 0 and cbor.decode(asserted[1:])[4]["id"] == user_id  # no UV: id only (§6.2.2)
    assert any(apdu[:2] == b"\x80\xc0" for apdu, _ in wire.log)

"""The ISO 7816 FIDO applet, APDU by APDU: SELECT, NFCCTAP_MSG with command chaining and
extended APDUs, 61xx + GET RESPONSE, NFCCTAP_GETRESPONSE keepalives and cancel, ISO errors,
the YubiKey management applet and the Crescendo's CPLC."""

from __future__ import annotations

import dataclasses
import time

import pytest
from fido2 import cbor
from fido2.ctap import STATUS, CtapError
from fido2.ctap2 import Ctap2

from station.virtual.apdu import CommandApdu, FidoApplet, _StatusWord
from station.virtual.errors import VirtualError
from station.virtual.presence import PresencePolicy

SW = FidoApplet.SW
SELECT_FIDO = bytes.fromhex("00A4040008A0000006472F0001")
SELECT_MANAGEMENT = bytes.fromhex("00A4040008A000000527471117")
GET_INFO = bytes([Ctap2.CMD.GET_INFO])


def tx(applet: FidoApplet, apdu: bytes) -> tuple[bytes, int]:
    response = applet.apdu(apdu)
    return response[:-2], int.from_bytes(response[-2:], "big")


def short(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = 0) -> bytes:
    apdu = bytes([cla, ins, p1, p2])
    if data:
        apdu += bytes([len(data)]) + data
    if le is not None:
        apdu += bytes([le])
    return apdu


def extended(cla: int, ins: int, p1: int, p2: int, data: bytes, le: int | None = 0) -> bytes:
    apdu = bytes([cla, ins, p1, p2, 0]) + len(data).to_bytes(2, "big") + data
    if le is not None:
        apdu += le.to_bytes(2, "big")
    return apdu


def fetch_all(applet: FidoApplet, data: bytes, sw: int, le: int = 0) -> tuple[bytes, int]:
    """Follow 61xx with GET RESPONSE, as a reader driver does."""
    while sw >> 8 == 0x61:
        more, sw = tx(applet, bytes([0x00, 0xC0, 0x00, 0x00, le]))
        data += more
    return data, sw


def large_request() -> bytes:
    """A ~600-byte CTAP request whose answer is fixed: getAssertion over 8 unknown credentials."""
    allow = [{"type": "public-key", "id": bytes([i]) * 64} for i in range(8)]
    params = {1: "example.com", 2: b"\x11" * 32, 3: allow}
    return bytes([Ctap2.CMD.GET_ASSERTION]) + cbor.encode(params)


@pytest.fixture
def applet(transport_key) -> FidoApplet:
    """The card of a YubiKey 5.7, FIDO applet selected."""
    card = FidoApplet(transport_key())
    assert tx(card, SELECT_FIDO) == (b"U2F_V2", SW.OK)
    return card


@pytest.fixture
def slow_applet(transport_key) -> FidoApplet:
    """As `applet`, with user presence taking 0.5 s."""
    card = FidoApplet(transport_key(presence=PresencePolicy.delay(0.5)))
    tx(card, SELECT_FIDO)
    return card


# ---------------------------------------------------------------- APDU decoding
@pytest.mark.parametrize(
    ("apdu", "expected"),
    [
        ("80100000", CommandApdu(0x80, 0x10, 0, 0)),
        ("8010000000", CommandApdu(0x80, 0x10, 0, 0, ne=256)),
        ("8010000010", CommandApdu(0x80, 0x10, 0, 0, ne=16)),
        ("801000000104", CommandApdu(0x80, 0x10, 0, 0, b"\x04")),
        ("80100000010400", CommandApdu(0x80, 0x10, 0, 0, b"\x04", ne=256)),
        ("80100000000000", CommandApdu(0x80, 0x10, 0, 0, ne=65536, extended=True)),
        ("8010000000000104", CommandApdu(0x80, 0x10, 0, 0, b"\x04", ne=65536, extended=True)),
        ("80100000000001040100", CommandApdu(0x80, 0x10, 0, 0, b"\x04", ne=256, extended=True)),
    ],
)
def test_command_apdu_cases_1_to_4_short_and_extended(apdu, expected):
    assert CommandApdu.parse(bytes.fromhex(apdu)) == expected


@pytest.mark.parametrize("apdu", ["8010", "801000000204", "801000000204050607", "8010000000000204", "8010000000000005"])
def test_lengths_that_fit_no_case_are_wrong_length(apdu):
    with pytest.raises(_StatusWord) as raised:
        CommandApdu.parse(bytes.fromhex(apdu))
    assert raised.value.sw == SW.WRONG_LENGTH


def test_a_malformed_apdu_is_answered_6700(applet):
    assert tx(applet, bytes.fromhex("80100000050405")) == (b"", SW.WRONG_LENGTH)


# ---------------------------------------------------------------- SELECT and classes
def test_select_fido_with_le_answers_u2f_v2(transport_key):
    card = FidoApplet(transport_key())
    assert tx(card, SELECT_FIDO + b"\x00") == (b"U2F_V2", SW.OK)


def test_unknown_aid_and_bad_select_parameters(applet):
    assert tx(applet, bytes.fromhex("00A4040007A0000006472F00")) == (b"", SW.FILE_NOT_FOUND)
    assert tx(applet, bytes.fromhex("00A4000008A0000006472F0001")) == (b"", SW.INCORRECT_P1P2)


def test_nothing_answers_nfcctap_before_select(transport_key):
    card = FidoApplet(transport_key())
    assert tx(card, short(0x80, 0x10, 0x00, 0x00, GET_INFO)) == (b"", SW.INS_NOT_SUPPORTED)


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        ("84100000010400", SW.CLA_NOT_SUPPORTED),  # secure messaging
        ("A0100000010400", SW.CLA_NOT_SUPPORTED),
        ("00010000", SW.WRONG_LENGTH),  # U2F register without its 64 bytes (u2f.py)
        ("00040000", SW.INS_NOT_SUPPORTED),  # CLA 00: a U2F INS that does not exist
        ("80120000", SW.INS_NOT_SUPPORTED),
        ("00100000010400", SW.INS_NOT_SUPPORTED),  # NFCCTAP_MSG needs CLA 80
        ("801000000000", SW.WRONG_LENGTH),  # NFCCTAP_MSG without a CTAP command
        ("8011000000", SW.CONDITIONS_NOT_SATISFIED),  # nothing to get a response for
        ("00C0000000", SW.CONDITIONS_NOT_SATISFIED),
        ("00C0010000", SW.INCORRECT_P1P2),
    ],
)
def test_iso_errors(applet, apdu, sw):
    assert tx(applet, bytes.fromhex(apdu)) == (b"", sw)


# ---------------------------------------------------------------- NFCCTAP_MSG, chaining, 61xx
def test_nfcctap_msg_get_info_longer_than_256_comes_in_61xx_pieces(applet):
    expected = applet._authenticator.process(GET_INFO)
    assert len(expected) > 256
    data, sw = tx(applet, short(0x80, 0x10, 0x00, 0x00, GET_INFO))
    assert (len(data), sw) == (256, SW.MORE_DATA | len(expected) - 256)
    data, sw = fetch_all(applet, data, sw)
    assert (data, sw) == (expected, SW.OK)


def test_response_chaining_at_every_le(applet):
    expected = applet._authenticator.process(GET_INFO)
    for le in range(1, 257):
        data, sw = tx(applet, short(0x80, 0x10, 0x00, 0x00, GET_INFO, le=le % 256))
        assert len(data) == min(le, len(expected))
        whole, sw = fetch_all(applet, data, sw, le=le % 256)
        assert (whole, sw) == (expected, SW.OK), le


def test_sw2_of_61xx_counts_the_bytes_left(applet):
    data, sw = tx(applet, short(0x80, 0x10, 0x00, 0x00, GET_INFO, le=0x10))
    left = len(applet._authenticator.process(GET_INFO)) - 0x10
    assert sw == SW.MORE_DATA | 0x00  # 303 left: 256 or more
    data, sw = tx(applet, bytes.fromhex("00C0000000"))
    assert len(data) == 256 and sw == SW.MORE_DATA | (left - 256)


def test_another_command_drops_the_rest_of_a_long_reply(applet):
    _, sw = tx(applet, short(0x80, 0x10, 0x00, 0x00, GET_INFO))
    assert sw >> 8 == 0x61
    assert tx(applet, SELECT_FIDO) == (b"U2F_V2", SW.OK)
    assert tx(applet, bytes.fromhex("00C0000000")) == (b"", SW.CONDITIONS_NOT_SATISFIED)


def test_command_chaining_at_every_block_size(applet):
    request = large_request()
    expected = applet._authenticator.process(request)
    assert expected == bytes([CtapError.ERR.NO_CREDENTIALS])
    for size in range(1, 256):
        blocks = [request[i : i + size] for i in range(0, len(request), size)]
        for block in blocks[:-1]:
            assert tx(applet, short(0x90, 0x10, 0x00, 0x00, block, le=None)) == (b"", SW.OK)
        assert tx(applet, short(0x80, 0x10, 0x00, 0x00, blocks[-1])) == (expected, SW.OK), size


def test_extended_apdu_carries_request_and_reply_whole(applet):
    expected = applet._authenticator.process(GET_INFO)
    assert tx(applet, extended(0x80, 0x10, 0x00, 0x00, GET_INFO)) == (expected, SW.OK)
    assert tx(applet, extended(0x80, 0x10, 0x00, 0x00, GET_INFO, le=None)) == (expected, SW.OK)
    request = large_request()
    assert tx(applet, extended(0x80, 0x10, 0x00, 0x00, request)) == (
        bytes([CtapError.ERR.NO_CREDENTIALS]),
        SW.OK,
    )


def test_extended_apdu_with_a_small_le_uses_61xx(applet):
    data, sw = tx(applet, extended(0x80, 0x10, 0x00, 0x00, GET_INFO, le=100))
    assert len(data) == 100 and sw >> 8 == 0x61


def test_a_chain_interrupted_by_another_command_is_6883(applet):
    assert tx(applet, short(0x90, 0x10, 0x00, 0x00, b"\x04", le=None)) == (b"", SW.OK)
    assert tx(applet, short(0x80, 0x11, 0x00, 0x00)) == (b"", SW.LAST_COMMAND_EXPECTED)
    # the chain is gone: a fresh command works
    data, sw = tx(applet, extended(0x80, 0x10, 0x00, 0x00, GET_INFO))
    assert sw == SW.OK and data[0] == 0


def test_chained_data_beyond_the_buffer_is_wrong_length(applet):
    block = b"\x00" * 255
    sw = SW.OK
    for _ in range(FidoApplet.MAX_CHAINED_DATA // 255 + 1):
        _, sw = tx(applet, short(0x90, 0x10, 0x00, 0x00, block, le=None))
        if sw != SW.OK:
            break
    assert sw == SW.WRONG_LENGTH


# ---------------------------------------------------------------- NFCCTAP_GETRESPONSE
def poll(applet: FidoApplet, first: tuple[bytes, int], p1: int = 0x00) -> tuple[list[int], bytes, int]:
    statuses, (data, sw) = [], first
    while sw == SW.UPDATE:
        statuses.append(data[0])
        data, sw = tx(applet, short(0x80, 0x11, p1, 0x00))
    return statuses, data, sw


def test_getresponse_keepalives_while_waiting_for_presence(slow_applet):
    first = tx(slow_applet, short(0x80, 0x10, 0x80, 0x00, bytes([Ctap2.CMD.SELECTION])))
    statuses, data, sw = poll(slow_applet, first)
    assert len(statuses) >= 3 and set(statuses) == {STATUS.UPNEEDED}
    assert (data, sw) == (b"\x00", SW.OK)


def test_getresponse_p1_11_cancels(slow_applet):
    first = tx(slow_applet, short(0x80, 0x10, 0x80, 0x00, bytes([Ctap2.CMD.SELECTION])))
    assert first[1] == SW.UPDATE
    statuses, data, sw = poll(slow_applet, first, p1=FidoApplet.P1.CANCEL)
    assert (data, sw) == (bytes([CtapError.ERR.KEEPALIVE_CANCEL]), SW.OK)


def test_without_p1_80_the_card_answers_only_when_done(slow_applet):
    started = time.monotonic()
    assert tx(slow_applet, short(0x80, 0x10, 0x00, 0x00, bytes([Ctap2.CMD.SELECTION]))) == (b"\x00", SW.OK)
    assert time.monotonic() - started >= 0.5


def test_a_new_command_abandons_a_pending_request(slow_applet):
    first = tx(slow_applet, short(0x80, 0x10, 0x80, 0x00, bytes([Ctap2.CMD.SELECTION])))
    assert first[1] == SW.UPDATE
    assert tx(slow_applet, SELECT_FIDO) == (b"U2F_V2", SW.OK)
    assert tx(slow_applet, short(0x80, 0x11, 0x00, 0x00)) == (b"", SW.CONDITIONS_NOT_SATISFIED)


def test_an_authenticator_crash_is_6f00(applet, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("firmware bug")

    monkeypatch.setattr(applet._authenticator, "process", crash)
    assert tx(applet, short(0x80, 0x10, 0x00, 0x00, GET_INFO)) == (b"", SW.NO_PRECISE_DIAGNOSIS)


# ---------------------------------------------------------------- vendor interfaces
@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.4"])
def test_yubikey_management_applet(transport_key, profile):
    key = transport_key(profile)
    card = FidoApplet(key)
    version = ".".join(map(str, key.profile.firmware)).encode()
    assert tx(card, SELECT_MANAGEMENT) == (version, SW.OK)
    assert tx(card, bytes.fromhex("001D000000")) == (key.management_config(0), SW.OK)
    assert tx(card, bytes.fromhex("001D010000")) == (key.management_config(1), SW.OK)
    assert tx(card, bytes.fromhex("801D000000")) == (b"", SW.INS_NOT_SUPPORTED)
    assert tx(card, short(0x80, 0x10, 0x00, 0x00, GET_INFO)) == (b"", SW.INS_NOT_SUPPORTED)
    assert tx(card, bytes.fromhex("80CA9F7F00")) == (b"", SW.INS_NOT_SUPPORTED)  # no CPLC


SELECT_ISD = bytes.fromhex("00A4040008A00000015100000000")
GET_CPLC = bytes.fromhex("80CA9F7F00")


@pytest.mark.parametrize("profile", ["crescendo-4000", "crescendo-key"])
def test_crescendo_answers_cplc_only_from_the_card_manager(transport_key, profile):
    key = transport_key(profile)
    card = FidoApplet(key)
    assert tx(card, GET_CPLC) == (b"", SW.INS_NOT_SUPPORTED)  # nothing selected after power-up
    fci = bytes.fromhex("6F108408A000000151000000A5049F6501FF")
    assert tx(card, SELECT_ISD) == (fci, SW.OK)
    assert tx(card, GET_CPLC) == (key.cplc(), SW.OK)
    assert tx(card, bytes.fromhex("00CA9F7F00")) == (key.cplc(), SW.OK)
    assert tx(card, bytes.fromhex("80CA006600")) == (b"", SW.DATA_NOT_FOUND)
    assert tx(card, bytes.fromhex("80F21000024F0000")) == (b"", SW.INS_NOT_SUPPORTED)  # no GET STATUS
    tx(card, SELECT_FIDO)
    assert tx(card, GET_CPLC) == (b"", SW.INS_NOT_SUPPORTED)  # a Java Card FIDO applet: 6D00
    data, sw = tx(card, short(0x80, 0x10, 0x00, 0x00, GET_INFO))
    assert sw == SW.OK and data[0] == 0  # the FIDO applet still answers
    assert tx(card, SELECT_MANAGEMENT) == (b"", SW.FILE_NOT_FOUND)


@pytest.mark.parametrize(
    ("select", "aid"),
    [
        ("00A4040007A0000000030000", "A000000003000000"),  # GPShell's partial name, first match
        ("00A4040008A000000003000000", "A000000003000000"),
        ("00A4040008A00000015100000000", "A000000151000000"),
    ],
)
def test_the_card_manager_answers_to_its_aids(transport_key, select, aid):
    key = transport_key("crescendo-4000")
    card = FidoApplet(key)
    data, sw = tx(card, bytes.fromhex(select))
    assert sw == SW.OK and data[4:12] == bytes.fromhex(aid)
    assert tx(card, GET_CPLC) == (key.cplc(), SW.OK)


def test_a_yubikey_has_no_card_manager(transport_key):
    card = FidoApplet(transport_key("yubikey-5-nfc-5.7"))
    assert tx(card, SELECT_ISD) == (b"", SW.FILE_NOT_FOUND)
    assert tx(card, bytes.fromhex("00A4040007A0000000030000")) == (b"", SW.FILE_NOT_FOUND)


# ---------------------------------------------------------------- power
def test_power_cycle_deselects_and_powers_the_authenticator_down(applet, monkeypatch):
    cycles = []
    monkeypatch.setattr(applet._authenticator, "power_cycle", lambda: cycles.append(1))
    applet.power_cycle()
    assert cycles == [1]
    assert tx(applet, short(0x80, 0x10, 0x00, 0x00, GET_INFO)) == (b"", SW.INS_NOT_SUPPORTED)


def test_power_cycle_cancels_a_pending_request(slow_applet):
    first = tx(slow_applet, short(0x80, 0x10, 0x80, 0x00, bytes([Ctap2.CMD.SELECTION])))
    assert first[1] == SW.UPDATE
    started = time.monotonic()
    slow_applet.power_cycle()
    assert time.monotonic() - started < 0.4
    tx(slow_applet, SELECT_FIDO)
    assert tx(slow_applet, short(0x80, 0x11, 0x00, 0x00)) == (b"", SW.CONDITIONS_NOT_SATISFIED)


def test_a_profile_without_a_smart_card_interface_has_no_applet(transport_key, monkeypatch):
    key = transport_key()
    monkeypatch.setattr(key, "profile", dataclasses.replace(key.profile, pcsc=False))
    with pytest.raises(VirtualError):
        FidoApplet(key)


def test_atr_is_the_profile_atr(transport_key):
    key = transport_key("crescendo-4000")
    assert FidoApplet(key).atr == key.profile.atr

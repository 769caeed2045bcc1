"""python-fido2's real CtapPcscDevice (and yubikit) over the applet in the in-process reader."""

from __future__ import annotations

import threading

import pytest
from fido2.ctap import STATUS, CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin
from fido2.pcsc import CtapPcscDevice
from smartcard.Exceptions import CardConnectionException, NoCardException
from smartcard.scard import SCARD_LEAVE_CARD
from ykman.pcsc import ScardSmartCardConnection
from yubikit.core import TRANSPORT
from yubikit.core.fido import SmartCardCtapDevice
from yubikit.management import ManagementSession

from station.virtual.authenticator import VirtualAuthenticator
from station.virtual.apdu import READER_NAME, FidoApplet, VirtualCardConnection, open_pcsc
from station.virtual.presence import PresencePolicy

PIN = "493817"


@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "crescendo-4000"])
@pytest.mark.parametrize("extended_apdus", [False, True])
def test_fido2_client_round_trip_over_pcsc(transport_key, profile, extended_apdus, fido2_roundtrip, check_fido2_roundtrip):
    device = open_pcsc(transport_key(profile))
    device.use_ext_apdu = extended_apdus
    assert device.capabilities & 0x04  # CBOR
    check_fido2_roundtrip(fido2_roundtrip(device))
    device.close()


def test_round_trip_without_nfcctap_getresponse(transport_key, fido2_roundtrip, check_fido2_roundtrip):
    device = open_pcsc(transport_key())
    device.use_nfcctap_getresponse = False
    check_fido2_roundtrip(fido2_roundtrip(device))


def test_keepalive_and_cancel_through_ctap_pcsc_device(transport_key):
    device = open_pcsc(transport_key(presence=PresencePolicy.delay(5)))
    event, statuses = threading.Event(), []
    threading.Timer(0.4, event.set).start()
    with pytest.raises(CtapError) as raised:
        Ctap2(device).selection(event=event, on_keepalive=statuses.append)
    assert raised.value.code == CtapError.ERR.KEEPALIVE_CANCEL
    assert statuses == [STATUS.UPNEEDED]


def test_yubikit_smartcard_fido_session_over_the_reader(transport_key, fido2_roundtrip, check_fido2_roundtrip):
    """yubikit's own FIDO-over-APDU client: case 3 APDUs without Le, 61xx chains."""
    key = transport_key()
    connection = ScardSmartCardConnection(VirtualCardConnection(FidoApplet(key)))
    device = SmartCardCtapDevice(connection)
    check_fido2_roundtrip(fido2_roundtrip(device))


@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.4"])
def test_yubikit_reads_serial_over_the_management_applet(transport_key, profile):
    key = transport_key(profile)
    connection = ScardSmartCardConnection(VirtualCardConnection(FidoApplet(key)))
    info = ManagementSession(connection).read_device_info()
    assert info.serial == key.state.serial
    assert tuple(info.version) == key.profile.firmware


def block_pin_auth(device: CtapPcscDevice) -> ClientPin:
    client_pin = ClientPin(Ctap2(device))
    client_pin.set_pin(PIN)
    for code in (CtapError.ERR.PIN_INVALID, CtapError.ERR.PIN_INVALID, CtapError.ERR.PIN_AUTH_BLOCKED):
        with pytest.raises(CtapError) as raised:
            client_pin.get_pin_token("000000")
        assert raised.value.code == code
    with pytest.raises(CtapError) as raised:
        client_pin.get_pin_token(PIN)
    assert raised.value.code == CtapError.ERR.PIN_AUTH_BLOCKED
    return client_pin


def test_unpowering_the_card_is_a_power_cycle_that_clears_pin_auth_blocked(transport_key):
    device = CtapPcscDevice(VirtualCardConnection(FidoApplet(transport_key())), READER_NAME)
    block_pin_auth(device)
    device.close()  # pyscard's default disposition: SCARD_UNPOWER_CARD
    device.connect()
    client_pin = ClientPin(Ctap2(device))
    assert client_pin.get_pin_retries()[0] == 5
    assert client_pin.get_pin_token(PIN)
    assert client_pin.get_pin_retries()[0] == 8


def test_closing_an_open_pcsc_device_removes_the_card_and_releases_the_key(transport_key):
    key = transport_key()
    device = open_pcsc(key)
    block_pin_auth(device)
    device.close()
    with pytest.raises(NoCardException):
        device.connect()
    with VirtualAuthenticator.open(key._file.path) as again:  # the state file is free
        device = open_pcsc(again)
        assert ClientPin(Ctap2(device)).get_pin_token(PIN)


def test_leaving_the_card_powered_keeps_pin_auth_blocked(transport_key):
    key = transport_key()
    connection = VirtualCardConnection(FidoApplet(key))
    device = CtapPcscDevice(connection, READER_NAME)
    block_pin_auth(device)
    connection.connect(disposition=SCARD_LEAVE_CARD)
    device.close()  # disconnects with SCARD_LEAVE_CARD: the card stays powered
    connection.connect(disposition=SCARD_LEAVE_CARD)  # the FIDO applet is still selected
    with pytest.raises(CtapError) as raised:
        ClientPin(Ctap2(device)).get_pin_token(PIN)
    assert raised.value.code == CtapError.ERR.PIN_AUTH_BLOCKED


def test_card_connection_refuses_transmit_when_disconnected_and_control(transport_key):
    connection = VirtualCardConnection(FidoApplet(transport_key()))
    with pytest.raises(CardConnectionException):
        connection.transmit(list(bytes.fromhex("00A4040008A0000006472F0001")))
    connection.connect()
    assert connection.getATR() == list(connection.applet.atr)
    assert connection.getReader() == READER_NAME
    with pytest.raises(CardConnectionException):
        connection.control(0x42000000 + 3400, [])


@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.4", "crescendo-4000", "crescendo-key"])
def test_atr_is_a_pc_sc_part_3_contactless_atr(transport_key, profile):
    """3B 8n 80 01 <n historical bytes> TCK: what a contactless reader reports and what yubikit
    reads as the NFC transport."""
    key = transport_key(profile)
    atr = key.profile.atr
    assert atr[:1] == b"\x3b" and atr[1] >> 4 == 0x8 and atr[2:4] == b"\x80\x01"
    assert len(atr) == 4 + (atr[1] & 0x0F) + 1
    tck = 0
    for byte in atr[1:]:
        tck ^= byte
    assert tck == 0
    connection = ScardSmartCardConnection(VirtualCardConnection(FidoApplet(key)))
    assert connection.transport == TRANSPORT.NFC

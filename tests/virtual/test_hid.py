"""CTAPHID, device side: framing, channels, errors, keepalive, cancel, and real clients on top
(python-fido2's CtapHidDevice and Fido2Client, yubikit's ManagementSession)."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest
from fido2.ctap import STATUS, CtapError
from fido2.ctap2 import Ctap2
from fido2.hid import CAPABILITY, CTAPHID, TYPE_INIT
from yubikit.management import ManagementSession

from station.virtual.authenticator import VirtualAuthenticator
from station.virtual.errors import VirtualError
from station.virtual.hid import (
    BROADCAST_CID,
    MAX_MESSAGE_SIZE,
    PACKET_SIZE,
    VirtualHidDevice,
    open_hid,
)
from station.virtual.presence import PresencePolicy

ERR = CtapError.ERR
USB_PROFILES = ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.4", "crescendo-key"]


# ---------------------------------------------------------------- raw packet helpers
def init_packet(cid: int, cmd: int, data: bytes = b"", length: int | None = None) -> bytes:
    length = len(data) if length is None else length
    return struct.pack(">IBH", cid, TYPE_INIT | cmd, length) + data[:57].ljust(57, b"\0")


def cont_packet(cid: int, seq: int, data: bytes) -> bytes:
    return struct.pack(">IB", cid, seq) + data[:59].ljust(59, b"\0")


def read_message(connection, timeout: float = 2.0) -> tuple[int, int, bytes]:
    """(cid, cmd, payload) of the next whole message the device sends."""
    packet = connection.read_packet(timeout)
    cid, cmd, length = struct.unpack_from(">IBH", packet)
    assert cmd & TYPE_INIT
    data = packet[7:]
    seq = 0
    while len(data) < length:
        packet = connection.read_packet(timeout)
        assert struct.unpack_from(">IB", packet) == (cid, seq)
        data += packet[5:]
        seq += 1
    return cid, cmd & ~TYPE_INIT, data[:length]


def send(connection, cid: int, cmd: int, data: bytes = b"") -> None:
    connection.write_packet(init_packet(cid, cmd, data))
    rest, seq = data[57:], 0
    while rest:
        connection.write_packet(cont_packet(cid, seq, rest))
        rest, seq = rest[59:], seq + 1


def allocate(connection) -> int:
    nonce = os.urandom(8)
    send(connection, BROADCAST_CID, CTAPHID.INIT, nonce)
    cid, cmd, data = read_message(connection)
    assert (cid, cmd, data[:8]) == (BROADCAST_CID, CTAPHID.INIT, nonce)
    return struct.unpack_from(">I", data, 8)[0]


def expect_error(connection, cid: int, code: int) -> None:
    assert read_message(connection) == (cid, CTAPHID.ERROR, bytes([code]))


def assert_quiet(connection) -> None:
    with pytest.raises(TimeoutError):
        connection.read_packet(0.2)


@pytest.fixture
def raw(transport_key):
    """(device, connection, cid) on a YubiKey 5.7 whose user presence takes 0.6 s."""
    device = VirtualHidDevice(transport_key(presence=PresencePolicy.delay(0.6)))
    connection = device.connect()
    yield device, connection, allocate(connection)
    connection.close()


# ---------------------------------------------------------------- INIT and channels
@pytest.mark.parametrize("profile", USB_PROFILES)
def test_init_allocates_a_channel_and_reports_version_and_capabilities(transport_key, profile):
    key = transport_key(profile)
    connection = VirtualHidDevice(key).connect()
    nonce = os.urandom(8)
    send(connection, BROADCAST_CID, CTAPHID.INIT, nonce)
    cid, cmd, data = read_message(connection)
    assert (cid, cmd, data[:8], len(data)) == (BROADCAST_CID, CTAPHID.INIT, nonce, 17)
    new_cid, version, major, minor, patch, caps = struct.unpack_from(">IBBBBB", data, 8)
    assert new_cid not in (0, BROADCAST_CID)
    assert version == 2
    assert (major, minor, patch) == key.profile.firmware
    assert caps == CAPABILITY.WINK | CAPABILITY.CBOR  # every USB profile speaks U2F (MSG)
    assert allocate(connection) != new_cid


def test_init_on_an_allocated_channel_resynchronises_it(raw):
    _, connection, cid = raw
    connection.write_packet(init_packet(cid, CTAPHID.PING, b"x" * 57, length=100))
    send(connection, cid, CTAPHID.INIT, b"12345678")
    _, cmd, data = read_message(connection)
    assert cmd == CTAPHID.INIT and struct.unpack_from(">I", data, 8)[0] == cid
    connection.write_packet(cont_packet(cid, 0, b"y" * 59))  # belongs to the aborted message
    assert_quiet(connection)


def test_init_with_a_wrong_length_is_invalid_len(raw):
    _, connection, _ = raw
    send(connection, BROADCAST_CID, CTAPHID.INIT, b"1234567")
    expect_error(connection, BROADCAST_CID, ERR.INVALID_LENGTH)


@pytest.mark.parametrize("cid", [0, BROADCAST_CID, 0x01020304])
def test_commands_on_reserved_or_unallocated_channels_are_invalid_channel(raw, cid):
    _, connection, _ = raw
    send(connection, cid, CTAPHID.PING, b"hi")
    expect_error(connection, cid, ERR.INVALID_CHANNEL)


def test_init_on_an_unallocated_channel_is_invalid_channel(raw):
    _, connection, _ = raw
    send(connection, 0x0A0B0C0D, CTAPHID.INIT, b"12345678")
    expect_error(connection, 0x0A0B0C0D, ERR.INVALID_CHANNEL)


def test_every_opener_receives_every_report(raw):
    device, connection, cid = raw
    other = device.connect()
    send(connection, cid, CTAPHID.PING, b"both")
    assert read_message(connection) == read_message(other) == (cid, CTAPHID.PING, b"both")
    other.close()


# ---------------------------------------------------------------- PING, WINK, MSG, unknown
@pytest.mark.parametrize("size", [0, 1, 57, 58, 116, 117, 1000, MAX_MESSAGE_SIZE])
def test_ping_echoes_across_continuation_packets(raw, size):
    _, connection, cid = raw
    payload = os.urandom(size)
    send(connection, cid, CTAPHID.PING, payload)
    assert read_message(connection) == (cid, CTAPHID.PING, payload)


def test_a_message_longer_than_the_framing_allows_is_invalid_len(raw):
    _, connection, cid = raw
    connection.write_packet(init_packet(cid, CTAPHID.PING, b"", length=MAX_MESSAGE_SIZE + 1))
    expect_error(connection, cid, ERR.INVALID_LENGTH)


def test_wink_blinks_the_key(raw, transport_key):
    device, connection, cid = raw
    send(connection, cid, CTAPHID.WINK)
    assert read_message(connection) == (cid, CTAPHID.WINK, b"")
    assert device._authenticator.winks == 1
    send(connection, cid, CTAPHID.WINK, b"x")
    expect_error(connection, cid, ERR.INVALID_LENGTH)


@pytest.mark.parametrize("cmd", [CTAPHID.LOCK, 0x30, VirtualHidDevice.VENDOR.READ_CONFIG + 1])
def test_lock_and_unknown_commands_are_invalid_cmd(raw, cmd):
    _, connection, cid = raw
    send(connection, cid, cmd, b"\x00\x01\x00\x00")
    expect_error(connection, cid, ERR.INVALID_COMMAND)


def test_an_empty_cbor_message_is_invalid_len(raw):
    _, connection, cid = raw
    send(connection, cid, CTAPHID.CBOR, b"")
    expect_error(connection, cid, ERR.INVALID_LENGTH)


# ---------------------------------------------------------------- sequencing and timeouts
def test_a_wrong_sequence_number_is_invalid_seq_and_aborts_the_message(raw):
    _, connection, cid = raw
    connection.write_packet(init_packet(cid, CTAPHID.PING, b"a" * 57, length=200))
    connection.write_packet(cont_packet(cid, 1, b"b" * 59))
    expect_error(connection, cid, ERR.INVALID_SEQ)
    connection.write_packet(cont_packet(cid, 0, b"c" * 59))  # spurious now: ignored
    assert_quiet(connection)


def test_an_init_packet_in_the_middle_of_a_message_is_invalid_seq(raw):
    _, connection, cid = raw
    connection.write_packet(init_packet(cid, CTAPHID.PING, b"a" * 57, length=200))
    send(connection, cid, CTAPHID.PING, b"again")
    expect_error(connection, cid, ERR.INVALID_SEQ)
    send(connection, cid, CTAPHID.PING, b"again")
    assert read_message(connection) == (cid, CTAPHID.PING, b"again")


def test_spurious_continuation_packets_are_ignored(raw):
    _, connection, cid = raw
    connection.write_packet(cont_packet(cid, 0, b"stray"))
    assert_quiet(connection)


def test_a_stalled_message_times_out(raw):
    device, connection, cid = raw
    device.MESSAGE_TIMEOUT = 0.1
    connection.write_packet(init_packet(cid, CTAPHID.PING, b"a" * 57, length=100))
    started = time.monotonic()
    expect_error(connection, cid, ERR.TIMEOUT)
    assert 0.05 < time.monotonic() - started < 1.0
    send(connection, cid, CTAPHID.PING, b"ok")  # the channel is usable again
    assert read_message(connection) == (cid, CTAPHID.PING, b"ok")


def test_a_reader_already_blocked_learns_of_the_timeout(raw):
    device, connection, cid = raw
    device.MESSAGE_TIMEOUT = 0.1
    received = []
    reader = threading.Thread(target=lambda: received.append(connection.read_packet()))
    reader.start()
    time.sleep(0.1)  # the reader blocks with no timeout of its own
    connection.write_packet(init_packet(cid, CTAPHID.PING, b"a" * 57, length=100))
    reader.join(2)
    assert received and received[0][:8] == struct.pack(">IBHB", cid, TYPE_INIT | CTAPHID.ERROR, 1, ERR.TIMEOUT)


# ---------------------------------------------------------------- busy channel, keepalive, cancel
def test_another_channel_is_busy_while_a_message_is_assembled(raw):
    _, connection, cid = raw
    other = allocate(connection)
    connection.write_packet(init_packet(cid, CTAPHID.PING, b"a" * 57, length=100))
    send(connection, other, CTAPHID.PING, b"me too")
    expect_error(connection, other, ERR.CHANNEL_BUSY)
    connection.write_packet(cont_packet(cid, 0, b"b" * 59))
    assert read_message(connection) == (cid, CTAPHID.PING, b"a" * 57 + b"b" * 43)


def test_cbor_waiting_for_presence_sends_keepalives_and_keeps_others_busy(raw):
    _, connection, cid = raw
    other = allocate(connection)
    send(connection, cid, CTAPHID.CBOR, bytes([Ctap2.CMD.SELECTION]))
    assert read_message(connection) == (cid, CTAPHID.KEEPALIVE, bytes([STATUS.UPNEEDED]))
    send(connection, other, CTAPHID.PING, b"me too")
    send(connection, cid, CTAPHID.PING, b"me too")
    messages = []
    while not messages or messages[-1][1] != CTAPHID.CBOR:
        messages.append(read_message(connection))
    assert (other, CTAPHID.ERROR, bytes([ERR.CHANNEL_BUSY])) in messages
    assert (cid, CTAPHID.ERROR, bytes([ERR.CHANNEL_BUSY])) in messages
    keepalives = [m for m in messages if m[1] == CTAPHID.KEEPALIVE]
    assert len(keepalives) >= 2 and all(m[2] == bytes([STATUS.UPNEEDED]) for m in keepalives)
    assert messages[-1] == (cid, CTAPHID.CBOR, b"\x00")


def test_cancel_on_the_busy_channel_ends_the_request_with_keepalive_cancel(raw):
    _, connection, cid = raw
    send(connection, cid, CTAPHID.CBOR, bytes([Ctap2.CMD.SELECTION]))
    assert read_message(connection)[1] == CTAPHID.KEEPALIVE
    send(connection, cid, CTAPHID.CANCEL)
    message = read_message(connection)
    while message[1] == CTAPHID.KEEPALIVE:
        message = read_message(connection)
    assert message == (cid, CTAPHID.CBOR, bytes([ERR.KEEPALIVE_CANCEL]))


def test_cancel_from_another_channel_or_when_idle_is_ignored(raw):
    _, connection, cid = raw
    other = allocate(connection)
    send(connection, other, CTAPHID.CANCEL)
    assert_quiet(connection)
    send(connection, cid, CTAPHID.CBOR, bytes([Ctap2.CMD.SELECTION]))
    send(connection, other, CTAPHID.CANCEL)
    message = read_message(connection)
    while message[1] == CTAPHID.KEEPALIVE:
        message = read_message(connection)
    assert message == (cid, CTAPHID.CBOR, b"\x00")


def test_fido2_client_cancel_gives_keepalive_cancel(transport_key):
    device = open_hid(transport_key(presence=PresencePolicy.delay(5)))
    event, statuses = threading.Event(), []
    threading.Timer(0.3, event.set).start()
    started = time.monotonic()
    with pytest.raises(CtapError) as raised:
        Ctap2(device).selection(event=event, on_keepalive=statuses.append)
    assert raised.value.code == ERR.KEEPALIVE_CANCEL
    assert statuses == [STATUS.UPNEEDED]
    assert time.monotonic() - started < 2
    assert Ctap2(device).get_info().aaguid  # the device answers again
    device.close()


def test_resynchronising_a_busy_channel_discards_its_response(raw):
    _, connection, cid = raw
    send(connection, cid, CTAPHID.CBOR, bytes([Ctap2.CMD.SELECTION]))
    assert read_message(connection)[1] == CTAPHID.KEEPALIVE
    send(connection, cid, CTAPHID.INIT, b"abcdefgh")
    message = read_message(connection)
    while message[1] == CTAPHID.KEEPALIVE:
        message = read_message(connection)
    assert message[1] == CTAPHID.INIT
    send(connection, cid, CTAPHID.CBOR, bytes([Ctap2.CMD.GET_INFO]))
    _, cmd, data = read_message(connection)
    assert cmd == CTAPHID.CBOR and data[0] == 0
    assert_quiet(connection)


def test_an_authenticator_crash_is_err_other(raw, monkeypatch):
    device, connection, cid = raw

    def crash(*args, **kwargs):
        raise RuntimeError("firmware bug")

    monkeypatch.setattr(device._authenticator, "process", crash)
    send(connection, cid, CTAPHID.CBOR, bytes([Ctap2.CMD.GET_INFO]))
    expect_error(connection, cid, ERR.OTHER)


# ---------------------------------------------------------------- connection object
def test_connection_rejects_short_reports_and_use_after_close(raw):
    _, connection, _ = raw
    with pytest.raises(OSError):
        connection.write_packet(b"\0" * (PACKET_SIZE - 1))
    connection.close()
    with pytest.raises(OSError):
        connection.write_packet(b"\0" * PACKET_SIZE)
    with pytest.raises(OSError):
        connection.read_packet(0.1)


# ---------------------------------------------------------------- real clients on top
@pytest.mark.parametrize("profile", USB_PROFILES)
def test_open_hid_presents_the_profile_usb_identity(transport_key, profile):
    key = transport_key(profile)
    device = open_hid(key)
    usb = key.profile.usb
    assert (device.descriptor.vid, device.descriptor.pid) == (usb.vid, usb.pid)
    assert device.product_name == usb.product
    assert device.device_version == key.profile.firmware
    assert device.capabilities & CAPABILITY.CBOR
    assert Ctap2(device).get_info().aaguid == key.profile.aaguid
    device.close()


def test_closing_an_open_hid_device_unplugs_the_key(transport_key):
    key = transport_key()
    device = open_hid(key)
    device.close()
    with VirtualAuthenticator.open(key._file.path) as again:  # the state file is free
        assert Ctap2(open_hid(again)).get_info().aaguid == key.aaguid


def test_a_card_without_usb_cannot_be_opened_over_hid(transport_key):
    with pytest.raises(VirtualError):
        open_hid(transport_key("crescendo-4000"))


@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "crescendo-key"])
def test_fido2_client_round_trip_over_hid(transport_key, profile, fido2_roundtrip, check_fido2_roundtrip):
    device = open_hid(transport_key(profile))
    check_fido2_roundtrip(fido2_roundtrip(device))
    device.close()


@pytest.mark.parametrize("profile", ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.4"])
def test_yubikit_reads_serial_and_version_over_hid(transport_key, profile):
    key = transport_key(profile)
    info = ManagementSession(open_hid(key)).read_device_info()
    assert info.serial == key.state.serial
    assert tuple(info.version) == key.profile.firmware


def test_read_config_needs_exactly_a_page_byte(raw):
    _, connection, cid = raw
    send(connection, cid, VirtualHidDevice.VENDOR.READ_CONFIG, b"")
    expect_error(connection, cid, ERR.INVALID_LENGTH)


def test_read_config_is_yubikey_only(transport_key):
    connection = VirtualHidDevice(transport_key("crescendo-key")).connect()
    cid = allocate(connection)
    send(connection, cid, VirtualHidDevice.VENDOR.READ_CONFIG, b"\x00")
    expect_error(connection, cid, ERR.INVALID_COMMAND)

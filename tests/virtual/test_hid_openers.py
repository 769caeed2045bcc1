"""Several openers of one virtual hidraw node, as on Linux: every opener receives every input
report, so python-fido2's CtapHidDevice (which rejects a report for another channel with
ConnectionFailure "Wrong channel") breaks when a second process opens the key; and the
VirtualHidBus that puts virtual nodes behind python-fido2's own enumeration."""

from __future__ import annotations

import errno
import threading

import fido2.hid
import pytest
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.hid import CtapHidDevice
from fido2.hid.base import HidDescriptor

from station.virtual import VirtualAuthenticator
from station.virtual.hid import CTAPHID, VirtualHidBus, open_another, open_hid, virtual_node
from station.virtual.presence import PresencePolicy


def test_a_second_opener_breaks_the_first_ones_channel(transport_key):
    first = open_hid(transport_key())
    second = open_another(first)  # its CTAPHID_INIT answer reaches the first opener too
    with pytest.raises(fido2.hid.ConnectionFailure, match="Wrong channel"):
        Ctap2(first)
    assert second.device_version == first.device_version
    second.close()
    first.close()


def test_openers_that_take_turns_and_drain_nothing_still_break(transport_key):
    """The first opener's answer waits in the second opener's queue: the second breaks next."""
    first = open_hid(transport_key())
    second = open_another(first)
    with pytest.raises(fido2.hid.ConnectionFailure):
        Ctap2(first)
    with pytest.raises(fido2.hid.ConnectionFailure):
        Ctap2(second)  # it reads the first opener's getInfo answer
    first.close()
    second.close()


def test_while_the_first_waits_for_a_touch_the_second_breaks_on_its_keepalives(transport_key):
    first = open_hid(transport_key(presence=PresencePolicy.delay(1.0)))
    first_ctap = Ctap2(first)
    second = open_another(first)
    first._connection.read_packet()  # the first drains the second's INIT answer (a kinder host)
    waiting = threading.Event()
    outcome: list[object] = []

    def touch():
        try:
            outcome.append(first_ctap.selection(on_keepalive=lambda _s: waiting.set()))
        except Exception as exc:  # noqa: BLE001 — the test inspects it
            outcome.append(exc)

    worker = threading.Thread(target=touch, daemon=True)
    worker.start()
    assert waiting.wait(5)
    with pytest.raises(fido2.hid.ConnectionFailure, match="Wrong channel"):
        Ctap2(second)
    worker.join(5)
    assert outcome  # the first opener got its answer or broke on the second's reports
    first.close()
    second.close()


def test_a_busy_channel_answers_channel_busy_to_another_opener(transport_key):
    """Raw: while one channel waits for a touch, a request on another gets ERR_CHANNEL_BUSY;
    INIT on the busy channel aborts its transaction (CTAP 2.1 §11.2.9.1.3) and frees the key."""
    key = transport_key(presence=PresencePolicy.delay(5.0))
    first = open_hid(key)
    node = virtual_node(first)
    raw = node.connect()

    def request(conn, cid: int, cmd: int, data: bytes = b"") -> None:
        packet = cid.to_bytes(4, "big") + bytes([0x80 | cmd]) + len(data).to_bytes(2, "big") + data
        conn.write_packet(packet.ljust(64, b"\0"))

    def answer(conn, cid: int) -> tuple[int, bytes]:
        while True:
            packet = conn.read_packet(timeout=5)
            if int.from_bytes(packet[:4], "big") == cid and packet[4] != 0x80 | CTAPHID.KEEPALIVE:
                return packet[4] & 0x7F, packet[7 : 7 + int.from_bytes(packet[5:7], "big")]

    nonce = b"\x07" * 8
    request(raw, 0xFFFFFFFF, CTAPHID.INIT, nonce)
    while True:
        packet = raw.read_packet(timeout=5)
        if packet[7:15] == nonce:
            cid = int.from_bytes(packet[15:19], "big")
            break
    first_cid = first._channel_id
    request(raw, first_cid, CTAPHID.CBOR, bytes([Ctap2.CMD.SELECTION]))  # waits for the touch
    request(raw, cid, CTAPHID.CBOR, bytes([Ctap2.CMD.GET_INFO]))
    assert answer(raw, cid) == (CTAPHID.ERROR, bytes([CtapError.ERR.CHANNEL_BUSY]))
    request(raw, first_cid, CTAPHID.INIT, nonce)  # resynchronise the busy channel: abort
    assert answer(raw, first_cid)[0] == CTAPHID.INIT
    request(raw, cid, CTAPHID.CBOR, bytes([Ctap2.CMD.GET_INFO]))
    command, data = answer(raw, cid)
    assert command == CTAPHID.CBOR and data[0] == 0
    raw.close()
    first.close()


# ---------------------------------------------------------------- the bus
@pytest.fixture
def bus(virtual_hid_bus):
    return virtual_hid_bus


def test_python_fido2_enumerates_the_bus_and_every_open_is_a_new_opener(bus):
    yubikey, crescendo = bus.plug_new(), bus.plug_new("crescendo-key")
    found = list(CtapHidDevice.list_devices())
    assert sorted(d.descriptor.path for d in found) == sorted([yubikey, crescendo])
    assert all(d.descriptor.vid in (0x1050, 0x09C3) for d in found)  # Yubico, HID Global
    for device in found:
        device.close()
    first = fido2.hid.open_device(yubikey)
    second = fido2.hid.open_device(yubikey)
    with pytest.raises(fido2.hid.ConnectionFailure):
        Ctap2(first)
    first.close()
    second.close()


def test_unplugging_from_the_bus_is_eio_and_the_path_is_gone(bus):
    path = bus.plug_new()
    device = fido2.hid.open_device(path)
    ctap = Ctap2(device)
    bus.unplug(path)
    with pytest.raises(OSError) as raised:
        ctap.get_info()
    assert raised.value.errno == errno.ENODEV  # the write finds no device
    with pytest.raises(FileNotFoundError):
        fido2.hid.open_device(path)
    assert list(CtapHidDevice.list_devices()) == []
    with pytest.raises(FileNotFoundError):
        bus.open_connection(HidDescriptor(path, 0, 0, 64, 64, None, None))
    device.close()


def test_a_fault_plan_on_a_key_of_the_bus(bus):
    path = bus.plug_new(fault="pull-after:1")
    ctap = Ctap2(fido2.hid.open_device(path))  # command 1
    with pytest.raises(OSError):
        ctap.get_info()
    assert path not in [d.path for d in bus.list_descriptors()]


def test_a_card_without_usb_cannot_go_on_the_bus(tmp_path):
    from station.virtual.errors import VirtualError

    key = VirtualAuthenticator.create(tmp_path / "card.json", "crescendo-4000")
    with pytest.raises(VirtualError):
        VirtualHidBus().plug(key)
    key.close()


def test_the_bus_restores_python_fido2_enumeration():
    saved = fido2.hid.list_descriptors
    with VirtualHidBus().installed():
        assert fido2.hid.list_descriptors is not saved
    assert fido2.hid.list_descriptors is saved

"""The vpcd link: the frame protocol against a stand-in vpcd, then the real pcscd with
vsmartcard's reader and `station virtual serve` in a subprocess."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest
from fido2.ctap import STATUS, CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin
from fido2.pcsc import CtapPcscDevice
from ykman.pcsc import ScardSmartCardConnection
from yubikit.management import ManagementSession

from pcsc_cards import TEST_READER, start_serve, stop_serve, wait_for_card, wait_for_removal

from station.virtual.apdu import FidoApplet
from station.virtual.authenticator import VirtualAuthenticator
from station.virtual.vpcd import CTRL, _serve_link, answer, serve

SELECT_FIDO = bytes.fromhex("00A4040008A0000006472F0001")
PIN = "493817"


# ---------------------------------------------------------------- a stand-in vpcd
class FakeVpcd:
    """vpcd's side of the link: listens, accepts the card, sends frames, reads answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.server.settimeout(5)
        self.link: socket.socket | None = None

    def accept(self) -> None:
        self.link, _ = self.server.accept()
        self.link.settimeout(5)

    def send(self, payload: bytes) -> None:
        self.link.sendall(len(payload).to_bytes(2, "big") + payload)

    def receive(self) -> bytes:
        length = int.from_bytes(self._exactly(2), "big")
        return self._exactly(length)

    def exchange(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.receive()

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.link.recv(size - len(data))
            assert chunk, "the card closed the link"
            data += chunk
        return data

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        self.server.close()


def wait_until(condition, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def linked(transport_key, monkeypatch):
    """(fake vpcd, key, power-cycle log, inserted log, stop event) with serve() running."""
    key = transport_key()
    cycles, inserted = [], []
    real_power_cycle = key.power_cycle

    def counting_power_cycle():
        cycles.append(time.monotonic())
        real_power_cycle()

    monkeypatch.setattr(key, "power_cycle", counting_power_cycle)
    vpcd = FakeVpcd()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(key, "127.0.0.1", vpcd.port, stop),
        kwargs={"on_inserted": lambda: inserted.append(1)},
        daemon=True,
    )
    thread.start()
    vpcd.accept()
    wait_until(lambda: inserted == [1])  # the card side finished connecting
    yield vpcd, key, cycles, inserted, stop
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    vpcd.close()


def test_atr_request_power_and_apdus(linked):
    vpcd, key, cycles, inserted, _ = linked
    assert vpcd.exchange(bytes([CTRL.ATR])) == key.profile.atr
    vpcd.send(bytes([CTRL.POWER_ON]))
    assert vpcd.exchange(SELECT_FIDO) == b"U2F_V2\x90\x00"
    reply = vpcd.exchange(bytes.fromhex("80100000010400"))
    info = key.process(b"\x04")
    assert reply == info[:256] + bytes([0x61, len(info) - 256])
    assert inserted == [1] and cycles == []


def test_power_off_and_reset_are_power_loss(linked):
    vpcd, key, cycles, _, _ = linked
    vpcd.send(bytes([CTRL.POWER_ON]))
    vpcd.exchange(SELECT_FIDO)
    vpcd.send(bytes([CTRL.POWER_OFF]))
    vpcd.send(bytes([CTRL.POWER_ON]))
    assert vpcd.exchange(bytes.fromhex("80100000010400"))[-2:] == b"\x6d\x00"  # deselected
    assert len(cycles) == 1
    vpcd.send(bytes([CTRL.RESET]))
    assert vpcd.exchange(bytes([CTRL.ATR])) == key.profile.atr  # in order after the reset
    assert len(cycles) == 2


@pytest.mark.parametrize("code", [CTRL.POWER_OFF, CTRL.RESET])
def test_power_loss_from_vpcd_restarts_the_reset_window(transport_key, code):
    """authenticatorReset is refused long after power-up and allowed again right after the
    power-up that follows pcscd powering the card down (or resetting it)."""
    key = transport_key()
    applet = FidoApplet(key)
    reset = bytes.fromhex("80100000010700")
    answer(applet, SELECT_FIDO)
    key.powered_up -= 3600  # an hour after power-up
    assert answer(applet, reset) == bytes([CtapError.ERR.NOT_ALLOWED]) + b"\x90\x00"
    answer(applet, bytes([code]))
    answer(applet, bytes([CTRL.POWER_ON]))
    assert answer(applet, reset) == b"\x6d\x00"  # the FIDO applet is no longer selected
    answer(applet, SELECT_FIDO)
    assert answer(applet, reset) == b"\x00\x90\x00"


def test_unknown_control_codes_are_ignored(linked):
    vpcd, key, cycles, _, _ = linked
    vpcd.send(bytes([3]))
    assert vpcd.exchange(bytes([CTRL.ATR])) == key.profile.atr
    assert cycles == []


def test_frames_split_across_segments(linked):
    vpcd, _, _, _, _ = linked
    frame = len(SELECT_FIDO).to_bytes(2, "big") + SELECT_FIDO
    for piece in (frame[:1], frame[1:5], frame[5:]):
        vpcd.link.sendall(piece)
        time.sleep(0.05)
    assert vpcd.receive() == b"U2F_V2\x90\x00"


@pytest.mark.parametrize("reset", [False, True])
def test_a_dropped_link_is_a_removal_and_the_card_comes_back(linked, reset):
    vpcd, key, cycles, inserted, _ = linked
    if reset:  # close with RST instead of FIN
        vpcd.link.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    vpcd.link.close()
    vpcd.accept()
    assert vpcd.exchange(bytes([CTRL.ATR])) == key.profile.atr
    assert inserted == [1, 1] and len(cycles) == 1


def test_serve_waits_for_vpcd_and_stops_on_request(transport_key):
    key = transport_key()
    placeholder = socket.create_server(("127.0.0.1", 0))
    port = placeholder.getsockname()[1]
    placeholder.close()  # nothing listens on `port` now
    stop, waiting, inserted = threading.Event(), [], []
    thread = threading.Thread(
        target=serve,
        args=(key, "127.0.0.1", port, stop),
        kwargs={"on_inserted": lambda: inserted.append(1), "on_waiting": lambda: waiting.append(1)},
        daemon=True,
    )
    thread.start()
    time.sleep(0.5)
    assert waiting == [1] and inserted == []
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(5)
    link, _ = server.accept()
    wait_until(lambda: inserted == [1])
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    link.settimeout(2)
    assert link.recv(1) == b""  # the card left: vpcd sees the link close
    link.close()
    server.close()


def test_a_link_that_breaks_mid_reply_ends_quietly(transport_key):
    class BrokenLink:
        def __init__(self) -> None:
            self.frames = [len(SELECT_FIDO).to_bytes(2, "big") + SELECT_FIDO]

        def recv(self, size: int) -> bytes:
            return self.frames.pop() if self.frames else b""

        def setsockopt(self, *args) -> None:
            pass

        def sendall(self, data: bytes) -> None:
            raise BrokenPipeError("vpcd closed the link")

    link = BrokenLink()
    _serve_link(link, FidoApplet(transport_key()), threading.Event())
    assert link.frames == []  # the frame was read, the reply failed, and the link ended


def test_answer_passes_apdus_to_the_applet(transport_key):
    applet = FidoApplet(transport_key())
    assert answer(applet, SELECT_FIDO) == b"U2F_V2\x90\x00"
    assert answer(applet, bytes([CTRL.POWER_ON])) is None


# ---------------------------------------------------------------- the real pcscd
@pytest.fixture
def served(pcscd, tmp_path):
    """Factory: make a key, `station virtual serve` it into TEST_READER; stopped at teardown."""
    processes: list[subprocess.Popen] = []

    def make(profile: str = "yubikey-5-nfc-5.7", presence: str = "approve"):
        statefile = tmp_path / f"{profile}.json"
        VirtualAuthenticator.create(statefile, profile).close()
        start_serve(statefile, processes, presence)
        return statefile, wait_for_card()

    yield make
    codes = [stop_serve(process) for process in processes if process.poll() is None]
    wait_for_removal()
    assert set(codes) <= {0}


@pytest.mark.pcscd
@pytest.mark.parametrize("extended_apdus", [False, True])
def test_pcscd_lists_the_card_and_fido2_client_works(served, extended_apdus, fido2_roundtrip, check_fido2_roundtrip):
    _, reader = served()
    connection = reader.createConnection()
    connection.connect()
    atr = bytes(connection.getATR())
    connection.disconnect()
    connection.release()
    assert atr[:2] == b"\x3b\x8d"  # PC/SC part 3 contactless ATR with the YubiKey's historical bytes
    devices = list(CtapPcscDevice.list_devices(TEST_READER))
    assert len(devices) == 1
    device = devices[0]
    device.use_ext_apdu = extended_apdus
    check_fido2_roundtrip(fido2_roundtrip(device))
    device.close(release=True)


@pytest.mark.pcscd
def test_yubikit_reads_the_serial_through_pcscd(served):
    statefile, reader = served()
    connection = ScardSmartCardConnection(reader.createConnection())
    info = ManagementSession(connection).read_device_info()
    connection.close()
    assert info.serial == json.loads(statefile.read_text())["serial"]
    assert tuple(info.version) == (5, 7, 1)


@pytest.mark.pcscd
def test_crescendo_cplc_through_pcscd_from_the_card_manager_only(served):
    _, reader = served("crescendo-4000")
    device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
    assert device.apdu_exchange(bytes.fromhex("80CA9F7F00")) == (b"", 0x6D, 0x00)  # FIDO applet selected
    _, sw1, sw2 = device.apdu_exchange(bytes.fromhex("00A4040008A00000015100000000"))
    assert (sw1, sw2) == (0x90, 0x00)
    data, sw1, sw2 = device.apdu_exchange(bytes.fromhex("80CA9F7F00"))
    assert (sw1, sw2) == (0x90, 0x00) and data[:3] == b"\x9f\x7f\x2a"
    device.apdu_exchange(bytes.fromhex("00A4040008A0000006472F0001"))
    assert Ctap2(device).get_info().aaguid.hex() == "0b8b05a4ebd44b0b8f5f33d7b6e606ab"
    device.close(release=True)


@pytest.mark.pcscd
def test_card_power_cycle_through_pcscd_clears_pin_auth_blocked(served):
    served()
    device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
    client_pin = ClientPin(Ctap2(device))
    client_pin.set_pin(PIN)
    for _ in range(3):
        with pytest.raises(CtapError):
            client_pin.get_pin_token("000000")
    with pytest.raises(CtapError) as raised:
        client_pin.get_pin_token(PIN)
    assert raised.value.code == CtapError.ERR.PIN_AUTH_BLOCKED
    device.close(release=True)  # SCARD_UNPOWER_CARD: pcscd powers the card off (vpcd control 0)
    device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
    assert ClientPin(Ctap2(device)).get_pin_token(PIN)
    device.close(release=True)


@pytest.mark.pcscd
def test_another_handle_unpowering_the_card_is_power_loss_for_the_first(served):
    """pyscard's default disconnect (SCARD_UNPOWER_CARD) on a second handle powers the card down
    under the first: the first handle's next transmit fails, the applet is no longer selected,
    and the PIN token it held is gone (CTAP 2.1 §6.5.2.1: pinUvAuthToken lives until power loss)."""
    from smartcard.Exceptions import CardConnectionException

    _, reader = served()
    first = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
    ctap = Ctap2(first)
    client_pin = ClientPin(ctap)
    client_pin.set_pin(PIN)
    token = client_pin.get_pin_token(PIN, ClientPin.PERMISSION.CREDENTIAL_MGMT)
    other = reader.createConnection()
    other.connect()
    other.disconnect()  # pyscard's default: SCARD_UNPOWER_CARD
    other.release()
    with pytest.raises(CardConnectionException):
        ctap.get_info()
    raw = reader.createConnection()
    raw.connect()
    data, sw1, sw2 = raw.transmit(list(bytes.fromhex("80100000010400")))
    assert (sw1, sw2) == (0x6D, 0x00)  # powered up again with no applet selected
    raw.disconnect()
    raw.release()
    first.close(release=True)
    again = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
    from fido2.ctap2 import CredentialManagement

    with pytest.raises(CtapError) as raised:
        CredentialManagement(Ctap2(again), client_pin.protocol, token).get_metadata()
    assert raised.value.code == CtapError.ERR.PIN_AUTH_INVALID  # the token died with the power
    again.close(release=True)


@pytest.mark.pcscd
def test_keepalives_and_cancel_through_pcscd(served):
    served(presence="delay:5")
    device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
    event, statuses = threading.Event(), []
    threading.Timer(0.5, event.set).start()
    with pytest.raises(CtapError) as raised:
        Ctap2(device).selection(event=event, on_keepalive=statuses.append)
    assert raised.value.code == CtapError.ERR.KEEPALIVE_CANCEL
    assert statuses == [STATUS.UPNEEDED]
    device.close(release=True)


@pytest.mark.pcscd
def test_serve_saves_state_and_stops_on_sigint(pcscd, tmp_path):
    statefile, processes = tmp_path / "key.json", []
    VirtualAuthenticator.create(statefile, "yubikey-5-nfc-5.7").close()
    try:
        process = start_serve(statefile, processes)
        wait_for_card()
        device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
        ClientPin(Ctap2(device)).set_pin(PIN)
        device.close(release=True)
        assert stop_serve(process, signal.SIGINT) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                stop_serve(process)
    wait_for_removal()
    with VirtualAuthenticator.open(statefile) as key:  # the lock is released, the PIN kept
        assert key.state.pin_set


# ---------------------------------------------------------------- the benchmark
@pytest.mark.pcscd
def test_bench_measures_every_transport_including_pcscd(pcscd):
    from station.virtual.bench import bench_virtual

    result = bench_virtual(seconds_per_case=0.2)
    assert set(result["ops_per_second"]) == {"direct", "hid", "pcsc", "pcscd"}
    for rates in result["ops_per_second"].values():
        assert rates["makeCredential"] > 0 and rates["getAssertion"] > 0
    assert result["skipped"] == {}


def test_bench_says_why_it_skips_pcscd(monkeypatch):
    from station.virtual import bench

    monkeypatch.setattr(bench, "_pcscd_reader_present", lambda: False)
    result = bench.bench_virtual(seconds_per_case=0.05)
    assert set(result["ops_per_second"]) == {"direct", "hid", "pcsc"}
    assert "not running" in result["skipped"]["pcscd"]


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("arguments", "exit_code", "message"),
    [
        (["--presence", "sometimes"], 1, "virtual: unknown presence mode"),
        (["--vpcd", "localhost"], 2, "is not HOST:PORT"),
        (["--vpcd", "localhost:0"], 2, "is not HOST:PORT"),
    ],
)
def test_serve_command_refuses_bad_options(transport_key, arguments, exit_code, message):
    from click.testing import CliRunner

    from station.cli import cli

    statefile = transport_key()._file.path
    result = CliRunner().invoke(cli, ["virtual", "serve", str(statefile), *arguments])
    assert result.exit_code == exit_code
    assert message in result.output


def test_serve_command_needs_an_existing_key(tmp_path):
    from click.testing import CliRunner

    from station.cli import cli

    result = CliRunner().invoke(cli, ["virtual", "serve", str(tmp_path / "none.json")])
    assert result.exit_code == 1
    assert result.output.startswith("virtual: no virtual key at")

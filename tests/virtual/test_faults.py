"""Fault plans, each seen through python-fido2's real device classes as the hardware fault is:
CtapHidDevice over the device-side CTAPHID, CtapPcscDevice over the in-process reader and over
the real pcscd (`station virtual serve --fault`)."""

from __future__ import annotations

import errno
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner
from fido2.ctap import STATUS, CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin
from fido2.pcsc import CtapPcscDevice
from pcsc_cards import TEST_READER, start_serve, stop_serve, wait_for_card, wait_for_removal
from smartcard.Exceptions import CardConnectionException, NoCardException
from smartcard.scard import SCARD_E_NOT_TRANSACTED, SCARD_W_REMOVED_CARD

from station.cli import cli
from station.virtual import VirtualAuthenticator, new_virtual, open_virtual
from station.virtual import faults
from station.virtual.apdu import FidoApplet
from station.virtual.faults import FaultPlan, command_names
from station.virtual.hid import open_another, virtual_node
from station.virtual.state import StateFile

PIN = "493817"
RP = {"id": "example.com", "name": "Example"}
USER = {"id": b"user-0001", "name": "alice"}
ES256 = [{"type": "public-key", "alg": -7}]


def make_credential(ctap: Ctap2, rk: bool = True, **kw):
    return ctap.make_credential(b"\x01" * 32, RP, USER, ES256, options={"rk": rk}, **kw)


@pytest.fixture
def keyfile(tmp_path):
    """Factory: a fresh key's state file, closed (profile, optional persisted plan)."""

    def make(profile: str = "yubikey-5-nfc-5.7", fault: str | None = None):
        path = tmp_path / f"{profile}-{time.monotonic_ns()}.json"
        new_virtual(path, profile, fault=fault).close()
        return path

    return make


def reopen(path) -> VirtualAuthenticator:
    """The key again (proves the faulted opening released its state file)."""
    return VirtualAuthenticator.open(path)


# ---------------------------------------------------------------- the plan
@pytest.mark.parametrize(
    "text",
    ["pull-after:3", "pull-during:makeCredential", "wedge-after:0", "wedge-during:setPIN",
     "slow:0.5", "no-touch:2", "pull-during:setPIN,slow:0.2,no-touch:30"],
)
def test_plans_parse_and_print_back(text):
    assert str(FaultPlan.parse(text)) == text
    assert FaultPlan.parse(str(FaultPlan.parse(text))) == FaultPlan.parse(text)


def test_no_touch_defaults_to_a_yubikeys_30_seconds_and_empty_is_no_fault():
    assert FaultPlan.parse("no-touch").no_touch == 30.0
    assert not FaultPlan.parse("") and not FaultPlan.parse(None) and str(FaultPlan()) == ""


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("melt", "unknown fault 'melt'"),
        ("pull-after:x", "needs a command count"),
        ("pull-after:-1", "needs a command count"),
        ("pull-during:fly", "unknown command"),
        ("slow:fast", "needs seconds"),
        ("slow:99999", "between 0 and 3600"),
        ("slow:1,slow:2", "given twice"),
    ],
)
def test_bad_plans_are_refused_with_what_is_wrong(text, says):
    with pytest.raises(faults.VirtualError, match=says):
        FaultPlan.parse(text)


def test_command_names_include_the_client_pin_subcommand():
    from fido2 import cbor

    assert command_names(b"\x06" + cbor.encode({1: 2, 2: 3})) == {"clientPIN", "setPIN"}
    assert command_names(b"\x01" + cbor.encode({})) == {"makeCredential"}
    assert command_names(b"\x06\xff") == {"clientPIN"}  # malformed CBOR: just the command
    assert command_names(bytes.fromhex("00010300"), u2f=True) == {"u2fRegister"}


def test_a_persisted_plan_is_kept_beside_the_state_file_and_struck_when_it_fires(keyfile):
    path = keyfile(fault="slow:0.01,pull-after:1")
    assert faults.plan_path(path).read_text() == "pull-after:1,slow:0.01\n"
    device = open_virtual(path, transport="hid")
    with pytest.raises(OSError):
        Ctap2(device).get_info()  # the constructor's getInfo was command 1
    assert str(faults.load_plan(path)) == "slow:0.01"  # the pull fired once; slow stays
    device.close()
    key = reopen(path)
    faults.set_plan(key, "", persist=True)
    assert not faults.plan_path(path).exists()
    key.close()


def test_a_new_plan_replaces_the_old_one_and_gives_the_touch_back(transport_key):
    key = transport_key()
    faults.set_plan(key, "no-touch:5")
    assert key.presence.mode == "never"
    faults.set_plan(key, "slow:0.01")
    assert key.presence.mode == "approve"


def test_new_virtual_refuses_a_bad_plan_before_making_the_key(tmp_path):
    with pytest.raises(faults.VirtualError):
        new_virtual(tmp_path / "k.json", "yubikey-5-nfc-5.7", fault="pull-after")
    assert not (tmp_path / "k.json").exists()


def test_cli_new_keeps_the_plan_and_refuses_a_bad_one(tmp_path):
    runner = CliRunner()
    path = tmp_path / "k.json"
    out = runner.invoke(cli, ["virtual", "new", str(path), "--profile", "crescendo-4000", "--fault", "no-touch:1"])
    assert out.exit_code == 0, out.output
    assert faults.plan_path(path).read_text() == "no-touch:1\n"
    bad = runner.invoke(cli, ["virtual", "new", str(tmp_path / "b.json"), "--profile", "crescendo-4000",
                              "--fault", "pull-during:nap"])
    assert bad.exit_code != 0 and "unknown command" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "b.json").exists()


def test_a_plan_file_edited_by_hand_applies_and_a_bad_one_is_refused(keyfile):
    path = keyfile()
    faults.plan_path(path).write_text("no-touch:0.2\n")
    device = open_virtual(path, transport="direct")
    with pytest.raises(CtapError) as raised:
        Ctap2(device).selection()
    assert raised.value.code == CtapError.ERR.USER_ACTION_TIMEOUT
    device.close()
    faults.plan_path(path).write_text("melt\n")
    with pytest.raises(faults.VirtualError, match="unknown fault"):
        open_virtual(path, transport="hid")
    reopen(path).close()  # the refused opening released the key


# ---------------------------------------------------------------- USB-HID (CtapHidDevice)
def test_hid_pull_after_n_is_eio_on_read_then_the_node_is_gone(keyfile):
    path = keyfile()
    device = open_virtual(path, transport="hid", fault="pull-after:2")
    ctap = Ctap2(device)  # command 1: getInfo
    ctap.get_info()  # command 2
    with pytest.raises(OSError) as raised:
        ctap.get_info()
    assert raised.value.errno == errno.EIO
    with pytest.raises(OSError) as raised:
        ctap.get_info()  # the write now finds no device
    assert raised.value.errno == errno.ENODEV
    with pytest.raises(FileNotFoundError):
        open_another(device)
    reopen(path).close()  # the pulled key released its state file
    device.close()


def test_hid_pull_during_set_pin_writes_the_pin_and_never_answers(keyfile):
    path = keyfile()
    device = open_virtual(path, transport="hid", fault="pull-during:setPIN")
    with pytest.raises(OSError):
        ClientPin(Ctap2(device)).set_pin(PIN)
    device.close()
    key = reopen(path)
    assert key.state.pin_set  # the effect was written before the key left
    key.close()


def test_hid_wedge_sends_no_report_not_even_for_init(keyfile):
    path = keyfile()
    device = open_virtual(path, transport="hid", fault="wedge-after:1")
    ctap = Ctap2(device)
    node = virtual_node(device)
    outcome: list[BaseException] = []

    def call():
        try:
            ctap.get_info()
        except BaseException as exc:  # noqa: BLE001 — the test inspects it
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(0.5)
    assert caller.is_alive() and node.wedged  # no answer: python-fido2's read has no timeout
    raw = node.connect()
    raw.write_packet(bytes.fromhex("ffffffff860008") + b"\x11" * 8 + b"\x00" * 49)  # CTAPHID_INIT
    with pytest.raises(TimeoutError):
        raw.read_packet(timeout=0.3)  # the CTAPHID timeout a host sees
    raw.close()
    device.close()  # the caller's own deadline closes the device: its read fails
    caller.join(5)
    assert isinstance(outcome[0], OSError)


def test_hid_wedge_during_make_credential_stores_it_and_never_answers(keyfile):
    path = keyfile()
    device = open_virtual(path, transport="hid", fault="wedge-during:makeCredential")
    ctap = Ctap2(device)
    outcome: list[BaseException] = []

    def call():
        try:
            make_credential(ctap)
        except BaseException as exc:  # noqa: BLE001 — the test inspects it
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    node = virtual_node(device)
    deadline = time.monotonic() + 5
    while not node.wedged and time.monotonic() < deadline:
        time.sleep(0.01)
    caller.join(0.3)
    assert node.wedged and caller.is_alive()
    device.close()
    caller.join(5)
    assert isinstance(outcome[0], OSError)
    key = reopen(path)
    assert len(key.state.credentials) == 1  # written before the key stopped answering
    key.close()


def test_hid_slow_adds_latency_with_processing_keepalives(keyfile):
    device = open_virtual(keyfile(), transport="hid", fault="slow:0.3")
    ctap = Ctap2(device)
    statuses: list[STATUS] = []
    started = time.monotonic()
    ctap.send_cbor(Ctap2.CMD.GET_INFO, on_keepalive=statuses.append)
    assert time.monotonic() - started >= 0.3
    assert statuses == [STATUS.PROCESSING]
    device.close()


def test_hid_no_touch_times_out_with_user_action_timeout(keyfile):
    device = open_virtual(keyfile(), transport="hid", fault="no-touch:0.3")
    statuses: list[STATUS] = []
    with pytest.raises(CtapError) as raised:
        Ctap2(device).selection(on_keepalive=statuses.append)
    assert raised.value.code == CtapError.ERR.USER_ACTION_TIMEOUT and statuses == [STATUS.UPNEEDED]
    device.close()


def test_hid_u2f_register_can_be_pulled(keyfile):
    from fido2.ctap1 import Ctap1

    device = open_virtual(keyfile(), transport="hid", fault="pull-during:u2fRegister")
    with pytest.raises(OSError):
        Ctap1(device).register(b"\x01" * 32, b"\x02" * 32)
    device.close()


# ---------------------------------------------------------------- PC/SC in process (CtapPcscDevice)
def test_pcsc_pull_after_n_is_card_removed(keyfile):
    path = keyfile()
    device = open_virtual(path, transport="pcsc", fault="pull-after:1")  # command 1: the probe
    with pytest.raises(CardConnectionException) as raised:
        Ctap2(device)
    assert raised.value.hresult == SCARD_W_REMOVED_CARD
    with pytest.raises(NoCardException):
        device.connect()
    reopen(path).close()
    device.close()


def test_pcsc_pull_during_make_credential_stores_it_and_never_answers(keyfile):
    path = keyfile()
    device = open_virtual(path, transport="pcsc", fault="pull-during:makeCredential")
    with pytest.raises(CardConnectionException):
        make_credential(Ctap2(device))
    device.close()
    key = reopen(path)
    assert len(key.state.credentials) == 1
    key.close()


def test_pcsc_wedge_is_a_failed_transaction_until_power_loss(keyfile, monkeypatch):
    monkeypatch.setattr(faults, "WEDGE_TIMEOUT", 0.2)
    device = open_virtual(keyfile(), transport="pcsc", fault="wedge-after:1")  # 1: the probe
    started = time.monotonic()
    with pytest.raises(CardConnectionException) as raised:
        Ctap2(device)  # its getInfo is never answered
    assert raised.value.hresult == SCARD_E_NOT_TRANSACTED and time.monotonic() - started >= 0.2
    device.close()


def test_a_wedged_card_answers_again_after_a_power_cycle(transport_key):
    key = transport_key()
    faults.set_plan(key, "wedge-after:0")
    applet = FidoApplet(key)
    applet.apdu(bytes.fromhex("00A4040008A0000006472F0001"))
    with pytest.raises(faults.KeyWedged):
        applet.apdu(bytes.fromhex("80100000010400"))
    with pytest.raises(faults.KeyWedged):
        applet.apdu(bytes.fromhex("00A4040008A0000006472F0001"))  # nothing is answered
    applet.power_cycle()
    assert applet.apdu(bytes.fromhex("00A4040008A0000006472F0001"))[-2:] == b"\x90\x00"
    assert applet.apdu(bytes.fromhex("80100000010400"))[-2:-1] in (b"\x61", b"\x90")


def test_pcsc_no_touch_and_slow(keyfile):
    device = open_virtual(keyfile(), transport="pcsc", fault="no-touch:0.3,slow:0.2")
    statuses: list[STATUS] = []
    started = time.monotonic()
    with pytest.raises(CtapError) as raised:
        Ctap2(device).selection(on_keepalive=statuses.append)
    assert raised.value.code == CtapError.ERR.USER_ACTION_TIMEOUT
    assert time.monotonic() - started >= 0.5 and STATUS.PROCESSING in statuses
    device.close()


def test_direct_pull_is_eio(keyfile):
    device = open_virtual(keyfile(), transport="direct", fault="pull-during:getInfo")
    with pytest.raises(OSError) as raised:
        Ctap2(device)
    assert raised.value.errno == errno.EIO
    device.close()


# ---------------------------------------------------------------- the real pcscd (serve --fault)
@pytest.fixture
def served_fault(pcscd, tmp_path):
    """Factory: serve a fresh key with a fault plan into TEST_READER; stopped at teardown."""
    processes: list[subprocess.Popen] = []

    def make(plan: str, profile: str = "yubikey-5-nfc-5.7", *, on_command_line: bool = False):
        statefile = tmp_path / f"{profile}.json"
        new_virtual(statefile, profile, fault=None if on_command_line else plan).close()
        process = start_serve(statefile, processes, fault=plan if on_command_line else None)
        wait_for_card()
        return statefile, process

    yield make
    for process in processes:
        if process.poll() is None:
            stop_serve(process)
    wait_for_removal()


@pytest.mark.pcscd
def test_pcscd_pull_during_make_credential_is_card_connection_exception(served_fault):
    statefile, process = served_fault("pull-during:makeCredential")
    device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
    ctap = Ctap2(device)
    with pytest.raises(CardConnectionException):
        make_credential(ctap)
    assert process.wait(timeout=10) == 0  # the card is out: serve ended
    assert "pulled" in process.stdout.read()
    wait_for_removal()
    with pytest.raises((CardConnectionException, NoCardException)):
        device.connect()
    key = reopen(statefile)
    assert len(key.state.credentials) == 1 and not faults.load_plan(statefile)
    key.close()


@pytest.mark.pcscd
def test_pcscd_pull_after_n_given_to_serve(served_fault):
    statefile, process = served_fault("pull-after:2", on_command_line=True)
    device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))  # command 1: the probe
    ctap = Ctap2(device)  # command 2
    with pytest.raises(CardConnectionException):
        ctap.get_info()
    assert process.wait(timeout=10) == 0
    assert not faults.plan_path(statefile).exists()  # --fault is for this run only


@pytest.mark.pcscd
def test_pcscd_wedged_card_never_answers_until_it_leaves(served_fault):
    _, process = served_fault("wedge-after:1")
    device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))  # command 1: the probe
    outcome: list[BaseException] = []

    def call():
        try:
            Ctap2(device)
        except BaseException as exc:  # noqa: BLE001 — the test inspects it
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(1.0)
    assert caller.is_alive()  # pcscd's transmit waits for an answer that never comes
    stop_serve(process)  # the technician pulls the wedged card
    caller.join(10)
    assert not caller.is_alive() and isinstance(outcome[0], CardConnectionException)


@pytest.mark.pcscd
def test_pcscd_no_touch_is_user_action_timeout_and_slow_sends_keepalives(served_fault):
    served_fault("no-touch:0.5,slow:0.3", on_command_line=True)
    device = next(iter(CtapPcscDevice.list_devices(TEST_READER)))
    statuses: list[STATUS] = []
    started = time.monotonic()
    with pytest.raises(CtapError) as raised:
        Ctap2(device).selection(on_keepalive=statuses.append)
    assert raised.value.code == CtapError.ERR.USER_ACTION_TIMEOUT
    assert time.monotonic() - started >= 0.8 and statuses[:2] == [STATUS.PROCESSING, STATUS.UPNEEDED]
    device.close(release=True)


def test_serve_refuses_a_bad_fault_plan(tmp_path):
    path = tmp_path / "k.json"
    new_virtual(path, "yubikey-5-nfc-5.7").close()
    out = CliRunner().invoke(cli, ["virtual", "serve", str(path), "--vpcd", "127.0.0.1:1", "--fault", "melt"])
    assert out.exit_code != 0 and "unknown fault" in out.output and "Traceback" not in out.output
    file = StateFile(path)
    file.lock()  # the refused serve left the key free
    file.unlock()

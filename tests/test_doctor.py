"""station doctor: each check seen failing (with its fix) and passing, on fake machine trees under
tmp_path and against a real uvicorn service on 127.0.0.1; the udev rule and systemd unit files."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import socket
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from station import config, doctor
from station.cli import cli
from station.doctor import (
    Check,
    Target,
    check_fido2,
    check_group,
    check_hidraw,
    check_key_store,
    check_pcscd,
    check_pyscard,
    check_readers,
    check_service_keys,
    check_service_token,
    check_udev_rule,
    diagnose,
    healthy,
    parse_udev_rule,
    read_udev_rules,
)
from station.fulfillment.embedded import EmbeddedService
from station.fulfillment.store import Role, Store
from station.protocol.keys import KeyStore

REPO = Path(__file__).resolve().parent.parent
RULE = REPO / "udev" / "70-fido-station.rules"
UNIT = REPO / "deploy" / "systemd" / "fido-station.service"
UID, GID = os.getuid(), os.getgid()  # the owner and group of every fake node made here
OWNER = "root" if UID == 0 else "owner"  # their names in the fake etc/passwd


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("STATION_RUN_", "STATION_SERVE_")) or name == config.CONFIG_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "SYSTEM_CONFIG_FILE", tmp_path / "absent.toml")


# ---------------------------------------------------------------- a fake machine
class Machine:
    """A root folder with etc/passwd, etc/group, dev/, sys/ and run/ as the checks read them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "etc/udev/rules.d").mkdir(parents=True)
        (root / "dev").mkdir()
        self.users = {"root": (0, 0), OWNER: (UID, GID), "tech": (4242, 4242), "fido-station": (999, 999)}
        self.groups = {"staff": (4242, []), "svc": (999, [])}

    def write_accounts(self) -> None:
        (self.root / "etc/passwd").write_text("".join(
            f"{name}:x:{uid}:{gid}::/home/{name}:/bin/sh\n" for name, (uid, gid) in self.users.items()))
        (self.root / "etc/group").write_text("# comment\n" + "".join(
            f"{name}:x:{gid}:{','.join(members)}\n" for name, (gid, members) in self.groups.items()))

    def install_rule(self, text: str | None = None) -> None:
        path = self.root / "etc/udev/rules.d/70-fido-station.rules"
        path.write_text(text if text is not None else RULE.read_text())

    def add_hidraw(self, name: str, vendor: str | None, mode: int) -> Path:
        node = self.root / "dev" / name
        node.write_bytes(b"")
        node.chmod(mode)
        if vendor is not None:
            sysdir = self.root / "sys/class/hidraw" / name / "device"
            sysdir.mkdir(parents=True)
            (sysdir / "uevent").write_text(f"DRIVER=hid-generic\nHID_ID=0003:0000{vendor.upper()}:00000407\n"
                                           "HID_NAME=Some Key\n")
        return node


@pytest.fixture
def machine(tmp_path) -> Machine:
    m = Machine(tmp_path / "root")
    m.groups["fido-station"] = (GID, ["tech"])  # the nodes' group: the gid of the user running the tests
    m.write_accounts()
    return m


# ---------------------------------------------------------------- udev rule
def test_the_udev_rule_missing_fails_with_the_install_command(machine):
    result = check_udev_rule(machine.root)
    assert not result.ok and "is not installed" in result.detail
    assert f"install -m 0644 {RULE} /etc/udev/rules.d/" in result.fix and "udevadm control --reload-rules" in result.fix


def test_the_shipped_udev_rule_installed_passes(machine):
    machine.install_rule()
    result = check_udev_rule(machine.root)
    assert result.ok and "1050" in result.detail and "09c3" in result.detail and "group fido-station" in result.detail


@pytest.mark.parametrize("text, expected", [
    ('KERNEL=="hidraw*", SUBSYSTEM=="hidraw", ATTRS{idVendor}=="1050", MODE="0660"\n', "HID Global (09c3)"),
    ('KERNEL=="hidraw*", ATTRS{idVendor}="1050" MODE\n', "unreadable"),
])
def test_a_rule_without_both_vendors_or_unparseable_fails(machine, text, expected):
    machine.install_rule(text)
    result = check_udev_rule(machine.root)
    assert not result.ok and expected in result.detail and "udevadm" in result.fix


#: udev(7): the match and assignment keys a rules file may use
UDEV_KEYS = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "NAME", "SYMLINK", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER",
             "DRIVERS", "ATTR", "ATTRS", "SYSCTL", "ENV", "CONST", "TAG", "TAGS", "TEST", "PROGRAM", "RESULT",
             "OWNER", "GROUP", "MODE", "SECLABEL", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS"}
UDEV_MATCH_OPS, UDEV_ASSIGN_OPS = {"==", "!="}, {"=", "+=", "-=", ":="}


def test_every_line_of_the_udev_rule_uses_valid_keys_and_operators():
    rules = read_udev_rules(RULE)
    assert len(rules) == 2
    for rule in rules:
        for key, op, value in rule:
            assert key.split("{")[0] in UDEV_KEYS, key
            is_match = key.split("{")[0] in {"KERNEL", "SUBSYSTEM", "ATTRS", "ACTION"}
            assert op in (UDEV_MATCH_OPS if is_match else UDEV_ASSIGN_OPS), (key, op)
        pairs = {(k, op, v) for k, op, v in rule}
        assert {("KERNEL", "==", "hidraw*"), ("SUBSYSTEM", "==", "hidraw"), ("TAG", "+=", "uaccess"),
                ("GROUP", "=", "fido-station"), ("MODE", "=", "0660")} <= pairs
    assert {v for rule in rules for k, _, v in rule if k == "ATTRS{idVendor}"} == {"1050", "09c3"}


@pytest.mark.parametrize("line", ['KERNEL=="hidraw*" junk', 'MODE=0660', 'kernel=="x"', 'KERNEL=="a",, MODE="1"'])
def test_parse_udev_rule_refuses_what_udev_would_not_read(line):
    with pytest.raises(ValueError):
        parse_udev_rule(line)


# ---------------------------------------------------------------- group
def test_the_group_missing_fails_with_groupadd(machine):
    del machine.groups["fido-station"]
    machine.write_accounts()
    result = check_group(machine.root, "tech")
    assert not result.ok and result.fix == "sudo groupadd --system fido-station"


def test_a_user_outside_the_group_fails_with_usermod(machine):
    machine.groups["fido-station"] = (GID, [])
    machine.write_accounts()
    result = check_group(machine.root, "tech")
    assert not result.ok and result.fix.startswith("sudo usermod -aG fido-station tech")


def test_an_unknown_user_fails_with_useradd(machine):
    result = check_group(machine.root, "nobody-here")
    assert not result.ok and "useradd --system --gid fido-station" in result.fix


@pytest.mark.parametrize("user", ["tech", "root"])
def test_a_member_or_root_passes(machine, user):
    assert check_group(machine.root, user).ok


def test_the_group_is_the_one_the_installed_rule_names(machine):
    machine.install_rule('KERNEL=="hidraw*", ATTRS{idVendor}=="1050", GROUP="svc", MODE="0660"\n')
    assert check_group(machine.root, "fido-station").ok  # svc is fido-station's primary group
    result = check_group(machine.root, "tech")
    assert not result.ok and "usermod -aG svc tech" in result.fix


# ---------------------------------------------------------------- hidraw
def test_no_hidraw_at_all_says_so_and_gives_the_fix(machine):
    result = check_hidraw(machine.root, "tech")
    assert not result.ok and "no /dev/hidraw*" in result.detail and "modprobe hidraw" in result.fix


def test_hidraw_nodes_of_other_vendors_only_fail(machine):
    machine.add_hidraw("hidraw0", "046d", 0o600)
    machine.add_hidraw("hidraw1", None, 0o600)
    result = check_hidraw(machine.root, "tech")
    assert not result.ok and "2 hidraw node(s), none of Yubico" in result.detail and "plug a key in" in result.fix


def test_key_nodes_the_user_may_open_pass(machine):
    machine.add_hidraw("hidraw0", "046d", 0o600)  # a mouse: not looked at
    machine.add_hidraw("hidraw1", "1050", 0o660)
    machine.add_hidraw("hidraw2", "09c3", 0o660)
    result = check_hidraw(machine.root, "tech")
    assert result.ok, result.detail
    assert f"/dev/hidraw1 Yubico {OWNER}:fido-station -rw-rw---- opens" in result.detail
    assert "/dev/hidraw2 HID Global" in result.detail and "hidraw0" not in result.detail


def test_a_key_node_without_group_access_fails_with_the_rule_and_group_fix(machine):
    machine.add_hidraw("hidraw1", "1050", 0o660)
    machine.add_hidraw("hidraw3", "1050", 0o600)  # as without the rule: root only
    result = check_hidraw(machine.root, "tech")
    assert not result.ok and f"/dev/hidraw3 Yubico {OWNER}:fido-station -rw------- NOT openable" in result.detail
    assert "udevadm trigger" in result.fix and "usermod -aG fido-station tech" in result.fix
    assert check_hidraw(machine.root, OWNER).ok and check_hidraw(machine.root, "root").ok


def test_the_access_test_can_be_the_real_one(machine):
    node = machine.add_hidraw("hidraw1", "1050", 0o660)
    assert not check_hidraw(machine.root, "tech", access=lambda p: p != node).ok
    assert check_hidraw(machine.root, "tech", access=lambda p: p == node).ok


# ---------------------------------------------------------------- pcscd and readers
def test_pcscd_absent_fails_with_the_install_command(machine):
    result = check_pcscd(machine.root)
    assert not result.ok and "apt-get install pcscd" in result.fix and "pcscd.socket" in result.fix


def test_pcscd_seen_by_its_socket():
    root = Path(f"/tmp/doctor-{os.getpid()}")  # AF_UNIX paths are short; tmp_path may be too long
    (root / "run/pcscd").mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(root / "run/pcscd/pcscd.comm"))
        result = check_pcscd(root)
        assert result.ok and "socket /run/pcscd/pcscd.comm" in result.detail
    finally:
        listener.close()
        shutil.rmtree(root)


def test_pcscd_seen_by_its_process(machine):
    for pid, name in (("17", "bash"), ("4711", "pcscd")):
        (machine.root / "proc" / pid).mkdir(parents=True)
        (machine.root / "proc" / pid / "comm").write_text(name + "\n")
    result = check_pcscd(machine.root)
    assert result.ok and "process 4711" in result.detail


def test_readers():
    def no_pcscd() -> list[str]:
        raise OSError("Failed to establish context")

    silent = check_readers(no_pcscd)
    assert not silent.ok and "Failed to establish context" in silent.detail and "pcscd" in silent.fix
    empty = check_readers(lambda: [])
    assert not empty.ok and "pcsc_scan" in empty.fix
    found = check_readers(lambda: ["HID Global OMNIKEY 5422 00 00", "ACS ACR122U 01 00"])
    assert found.ok and "OMNIKEY" in found.detail and "ACR122U" in found.detail


# ---------------------------------------------------------------- libraries
def missing(_name: str) -> str:
    raise PackageNotFoundError(_name)


@pytest.mark.parametrize("version, ok", [("2.2.1", True), ("2.2.0", True), ("2.1.3", False), ("3.0.0", False)])
def test_fido2_must_be_in_the_2_2_line(version, ok):
    result = check_fido2(lambda _name: version)
    assert result.ok is ok and (ok or "needs 2.2.x" in result.detail and "fido2[pcsc]>=2.2,<2.3" in result.fix)


def test_fido2_and_pyscard_missing_fail_and_installed_pass():
    assert not check_fido2(missing).ok and "not installed" in check_fido2(missing).detail
    assert not check_pyscard(missing).ok and "pip install pyscard" in check_pyscard(missing).fix
    assert check_fido2().ok and check_pyscard().ok  # this venv's own


# ---------------------------------------------------------------- key store
@pytest.fixture
def keys_dir(tmp_path) -> Path:
    return KeyStore.init(tmp_path / "keys").path


def test_no_key_store_given_or_none_there_fails(tmp_path):
    assert "--keys DIR" in check_key_store(None).fix
    result = check_key_store(tmp_path / "nokeys")
    assert not result.ok and result.fix == f"station keys init --dir {tmp_path / 'nokeys'}"


def test_a_fresh_key_store_passes(keys_dir):
    result = check_key_store(keys_dir)
    assert result.ok and "transport-" in result.detail and "signing-" in result.detail


def test_loose_modes_fail_with_chmod(keys_dir):
    jwk = next(keys_dir.glob("*.jwk"))
    jwk.chmod(0o644)
    result = check_key_store(keys_dir)
    assert not result.ok and f"{jwk} 0644" in result.detail and result.fix.startswith(f"chmod 0700 {keys_dir}")
    jwk.chmod(0o600)
    keys_dir.chmod(0o755)
    assert f"{keys_dir} 0755" in check_key_store(keys_dir).detail


def test_no_active_transport_key_fails_with_rotate(keys_dir):
    document = json.loads((keys_dir / "keys.json").read_text())
    for entry in document["keys"]:
        if entry["kind"] == "transport":
            entry["status"] = "retired"
    (keys_dir / "keys.json").write_text(json.dumps(document))
    result = check_key_store(keys_dir)
    assert not result.ok and result.fix == f"station keys rotate --dir {keys_dir} --kind transport"


@pytest.mark.parametrize("damage", ["delete", "not a JWK", "not JSON"])
def test_an_unreadable_store_fails_with_restore(keys_dir, damage):
    key_file = next(keys_dir.glob("signing-*.jwk"))
    if damage == "delete":
        key_file.unlink()
    else:
        key_file.write_text('{"kty": "EC"}' if damage == "not a JWK" else "{")
    result = check_key_store(keys_dir)
    assert not result.ok and result.fix.startswith(f"restore {keys_dir}")
    assert "unreadable" in result.detail or "no valid JWK" in result.detail


# ---------------------------------------------------------------- the service
@pytest.fixture
def service(tmp_path, keys_dir) -> Iterator[EmbeddedService]:
    store = Store.open(f"sqlite:///{tmp_path}/service.db")
    try:
        with EmbeddedService(store, KeyStore.open(keys_dir), purge_interval=None) as running:
            yield running
    finally:
        store.close()


def test_the_service_keys_pass_when_reachable_and_held(service, keys_dir):
    result = check_service_keys(service.url, keys_dir)
    assert result.ok and "transport-" in result.detail


def test_a_service_key_this_station_does_not_hold_fails(service, tmp_path):
    other = KeyStore.init(tmp_path / "other").path
    result = check_service_keys(service.url, other)
    assert not result.ok and "cannot be opened here" in result.detail and str(other) in result.fix


def test_an_unreachable_service_fails(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = check_service_keys(url, None)
    assert not result.ok and "service_unavailable" in result.detail and "curl -sS" in result.fix
    assert not check_service_keys(None, None).ok


@pytest.mark.parametrize("response, expected", [
    (httpx.Response(200, text="<html>hello</html>"), "not the service's answer (JSONDecodeError)"),
    (httpx.Response(200, json={"nokeys": []}), "not the service's answer (ValidationError)"),
    (httpx.Response(200, json={"keys": []}), "publishes no transport key"),
    (httpx.Response(500, json={"error_code": "boom", "error_message": "it broke"}), "boom: it broke"),
])
def test_a_service_answering_no_jwks_fails(response, expected):
    transport = httpx.MockTransport(lambda request: response)
    result = check_service_keys("http://service.invalid", None, transport)
    assert not result.ok and expected in result.detail


def test_a_station_token_passes_and_changes_nothing(service):
    token = service.store.create_token(Role.STATION, "station-1")
    result = check_service_token(service.url, token)
    assert result.ok and result.detail == "accepted as a station token"


@pytest.mark.parametrize("token, expected", [
    ("not-a-token", "does not know this token"), (None, "no service URL or no token"),
])
def test_an_unknown_or_missing_token_fails_with_tokens_create(service, token, expected):
    result = check_service_token(service.url, token)
    assert not result.ok and expected in result.detail and "station tokens create --role station" in result.fix


def test_a_customer_token_fails(service):
    result = check_service_token(service.url, service.store.create_token(Role.CUSTOMER, "acme"))
    assert not result.ok and "customer token" in result.detail


@pytest.mark.parametrize("response, expected", [
    (httpx.Response(503, json={}), "service_unavailable"),
    (httpx.Response(200, text="<html>"), "not the service's answer"),
])
def test_a_token_probe_on_a_broken_service_fails(response, expected):
    transport = httpx.MockTransport(lambda request: response)
    result = check_service_token("http://service.invalid", "t", transport)
    assert not result.ok and expected in result.detail


def test_a_token_probe_answered_with_a_lease_passes():
    """Only a station holding item MAX_ITEM_ID gets a lease back: its token is good too."""
    lease = {"item_id": doctor.MAX_ITEM_ID, "lease_expires_at": 1.0}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=lease))
    assert check_service_token("http://service.invalid", "t", transport).ok


# ---------------------------------------------------------------- all together
def test_diagnose_reads_the_run_configuration(machine, service, keys_dir, tmp_path, monkeypatch):
    path = tmp_path / "station.toml"
    path.write_text(f'[run]\nservice = "{service.url}"\nkeys_dir = "{keys_dir}"\ndevice = "virtual:x.json"\n')
    monkeypatch.setenv("STATION_RUN_TOKEN", service.store.create_token(Role.STATION, "s1"))
    checks = diagnose({}, path, user="tech", root=machine.root, list_readers=lambda: [])
    by_name = {c.name: c for c in checks}
    assert by_name["configuration"].ok and str(path) in by_name["configuration"].detail
    assert all(by_name[n].ok for n in ("key store", "service keys", "service token", "python-fido2"))
    not_needed = {c.name for c in checks if not c.required}
    assert not_needed == {"udev rule", "group", "hidraw", "pcscd", "PC/SC readers", "pyscard"}
    assert not by_name["hidraw"].ok and healthy(checks)  # virtual keys need no hidraw


def test_a_broken_configuration_is_a_failed_check_and_the_rest_still_run(machine, tmp_path, keys_dir):
    path = tmp_path / "station.toml"
    path.write_text("[run]\nslotz = 2\n")
    checks = diagnose({"keys_dir": keys_dir}, path, user="tech", root=machine.root, list_readers=lambda: [])
    assert checks[0].name == "configuration" and not checks[0].ok and "line 2" in checks[0].detail
    assert {c.name: c.ok for c in checks}["key store"] and not healthy(checks)


@pytest.mark.parametrize("device, usb, pcsc", [("hid", True, False), ("pcsc:OMNIKEY", False, True),
                                               ("auto", True, True)])
def test_the_device_spec_decides_which_checks_count(machine, device, usb, pcsc):
    checks = doctor.run_checks(Target(root=machine.root, user="tech", device=device), list_readers=lambda: [])
    required = {c.name: c.required for c in checks}
    assert required["hidraw"] is usb and required["udev rule"] is usb
    assert required["PC/SC readers"] is pcsc and required["pcscd"] is pcsc
    assert required["key store"] and required["service token"]


def test_healthy_needs_every_required_check():
    assert healthy([Check("a", True, ""), Check("b", False, "", "fix", required=False)])
    assert not healthy([Check("a", True, ""), Check("b", False, "", "fix")])


def test_station_doctor_exits_0_when_all_pass_and_1_with_each_fix(service, keys_dir):
    token = service.store.create_token(Role.STATION, "s1")
    runner = CliRunner()
    good = runner.invoke(cli, ["doctor", "--json", "--device", "virtual:x.json", "--keys", str(keys_dir),
                               "--service", service.url], env={"STATION_RUN_TOKEN": token})
    assert good.exit_code == 0, good.output
    document = json.loads(good.output)
    assert document["ok"] is True and token not in good.output
    bad = runner.invoke(cli, ["doctor", "--device", "virtual:x.json", "--service", service.url, "--token", "nope"])
    assert bad.exit_code == 1
    assert "FAIL" in bad.output and "fix key store:" in bad.output and "station tokens create" in bad.output
    assert "--keys DIR, or set keys_dir in [run]" in bad.output  # not eaten as rich markup


def test_station_doctor_names_a_broken_configuration(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[run\n")
    result = CliRunner().invoke(cli, ["doctor", "--json", "--config", str(path)])
    assert result.exit_code == 1
    configuration = json.loads(result.output)["checks"][0]
    assert configuration["name"] == "configuration" and str(path) in configuration["detail"]


# ---------------------------------------------------------------- the systemd unit
def test_the_systemd_unit_runs_station_run_as_a_hardened_service_user():
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["ExecStart"].endswith("station run") and service["User"] == "fido-station"
    assert service["SupplementaryGroups"] == "fido-station" and service["EnvironmentFile"]
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes" and "/var/lib/fido-station" in service["ReadWritePaths"]
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 8 * 30  # one item: up to 8 touches of 30 s
    assert "PrivateDevices" not in service and "char-hidraw" in service["DeviceAllow"]
    assert config.CONFIG_ENV in service["Environment"]

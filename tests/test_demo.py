"""`station demo`, the README's main job, as someone who has never seen the project runs it."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from station.cli import cli
from station.demo import DemoOptions, run_demo


def test_the_demo_orders_programs_verifies_and_signs_in_with_every_key():
    result = run_demo(DemoOptions(keys=4))
    assert result.ok
    assert [r.idp for r in result.rows] == ["Okta", "Entra ID", "PingOne", "Okta"]
    for row in result.rows:
        assert row.state == "signed in" and row.verified and row.signed_in and not row.error
        assert row.serial.isdigit() and row.model.startswith("YubiKey 5")
    assert len({r.serial for r in result.rows}) == 4  # one key per order


def test_the_demo_command_exits_0_and_never_prints_a_pin_unless_asked():
    seen = []
    result = CliRunner().invoke(cli, ["demo", "--keys", "2"], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "signed in" in result.output and "PINs (mailed" not in result.output
    shown = CliRunner().invoke(cli, ["demo", "--keys", "2", "--show-pins"], terminal_width=200)
    assert shown.exit_code == 0
    seen = re.findall(r"^  \S+@\S+  (\d{6,})$", shown.output, re.M)
    assert len(seen) == 2  # one mailed PIN per user
    assert all(pin not in result.output for pin in seen)


def test_a_demo_whose_keys_cannot_force_a_pin_change_exits_1_and_says_why():
    result = CliRunner().invoke(cli, ["demo", "--keys", "2", "--profile", "yubikey-5-nfc-5.4"], terminal_width=200)
    assert result.exit_code == 1
    assert "device_unsupported" in result.output and "Traceback" not in result.output


def test_the_demo_over_hid_with_two_slots():
    result = run_demo(DemoOptions(keys=4, transport="hid", slots=2))
    assert result.ok


@pytest.mark.pcscd
def test_the_demo_through_the_real_pcscd(pcscd):
    result = run_demo(DemoOptions(keys=2, transport="pcsc"))
    assert result.ok, [r.error for r in result.rows]


def test_the_demo_refuses_bad_options():
    result = CliRunner().invoke(cli, ["demo", "--keys", "0"])
    assert result.exit_code != 0
    with pytest.raises(Exception) as refused:
        run_demo(DemoOptions(keys=1, transport="carrier-pigeon"))
    assert "carrier-pigeon" in str(refused.value)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc, timeout: float = 30.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the stand-in exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_the_demo_points_the_same_clients_at_standin_processes(tmp_path):
    """`station standin graph|pingone` in processes of their own, the demo told where by URL and
    the written customer configuration: the same clients, over loopback, end in a sign-in."""
    import subprocess
    import sys

    config = tmp_path / "customer.toml"
    procs, urls = [], {}
    try:
        for kind in ("graph", "pingone"):
            port = _free_port()
            proc = subprocess.Popen([sys.executable, "-m", "station.cli", "standin", kind, "--port", str(port),
                                     "--trust-test-ca", "--write-config", str(config)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(proc)
            _wait_listening(port, proc)
            urls[kind] = f"http://127.0.0.1:{port}"
        assert (tmp_path / "customer-graph.secret").stat().st_mode & 0o777 == 0o600
        assert "client_secret =" not in config.read_text()
        result = run_demo(DemoOptions(keys=3, graph_url=urls["graph"], login_url=urls["graph"],
                                      pingone_url=urls["pingone"], pingone_auth_url=urls["pingone"],
                                      customer_config=config))
    finally:
        printed = ""
        for proc in procs:
            proc.terminate()
            out, err = proc.communicate(timeout=10)
            printed += out.decode() + err.decode()
    for kind in ("graph", "pingone"):  # the secret is in its 0600 file only, never printed
        secret = (tmp_path / f"customer-{kind}.secret").read_text().strip()
        assert len(secret) > 20 and secret not in printed and secret not in config.read_text()
    assert result.ok, [r.error for r in result.rows]
    assert [r.idp for r in result.rows] == ["Okta", "Entra ID", "PingOne"]
    assert all(r.signed_in for r in result.rows)


def test_the_demo_names_an_unreachable_provider():
    result = CliRunner().invoke(cli, ["demo", "--keys", "2", "--okta-url", "http://127.0.0.1:9"],
                                env={"STATION_OKTA_API_TOKEN": "00x"}, terminal_width=200)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Okta at http://127.0.0.1:9 cannot be reached" in " ".join(result.output.split())


@pytest.mark.parametrize("directory", ["entra", "pingone"])
def test_the_directory_demo_enrolls_a_group_registers_and_every_user_signs_in(directory):
    """Issue 15: the service enrolls the directory's group itself; each key is registered in the
    directory, its PIN opened by the customer's PIN delivery, and used to sign in."""
    result = run_demo(DemoOptions(keys=3, directory=directory))
    assert result.ok, [(r.user, r.state, r.error) for r in result.rows]
    assert len(result.rows) == 3 and len({r.serial for r in result.rows}) == 3
    for row in result.rows:
        assert row.state == "signed in" and row.verified and row.signed_in and not row.error


def test_the_directory_demo_command_exits_0():
    result = CliRunner().invoke(cli, ["demo", "--directory", "entra", "--keys", "2"], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "signed in" in result.output

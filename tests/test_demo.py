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

"""`station keys init|jwks|rotate|retire` and `station inspect`, as shared/CLI.md says."""

from __future__ import annotations

import json
import stat

import pytest
from click.testing import CliRunner

from station.cli import cli
from station.protocol.jose import seal_request
from station.protocol.keys import KeyStore


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def keys_dir(tmp_path, runner) -> str:
    folder = str(tmp_path / "keys")
    result = runner.invoke(cli, ["keys", "init", "--dir", folder])
    assert result.exit_code == 0, result.output
    return folder


def _jwks(runner, keys_dir, kind) -> dict:
    result = runner.invoke(cli, ["keys", "jwks", "--dir", keys_dir, "--kind", kind])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_init_makes_owner_only_files_and_refuses_to_overwrite(runner, keys_dir, tmp_path):
    lines = runner.invoke(cli, ["keys", "init", "--dir", str(tmp_path / "other")]).stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["transport", "signing"]
    for path in (tmp_path / "keys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = runner.invoke(cli, ["keys", "init", "--dir", keys_dir])
    assert again.exit_code == 1
    assert again.stderr.startswith("key_store: ") and len(again.stderr.splitlines()) == 1


def test_jwks_prints_public_keys_only(runner, keys_dir):
    for kind in ("transport", "signing"):
        keys = _jwks(runner, keys_dir, kind)["keys"]
        assert len(keys) == 1 and "d" not in keys[0] and keys[0]["crv"] == "P-384"


def test_rotate_then_retire(runner, keys_dir):
    old = _jwks(runner, keys_dir, "transport")["keys"][0]["kid"]
    rotated = runner.invoke(cli, ["keys", "rotate", "--dir", keys_dir, "--kind", "transport"])
    assert rotated.exit_code == 0
    new = rotated.stdout.strip()
    assert [k["kid"] for k in _jwks(runner, keys_dir, "transport")["keys"]] == [old, new]
    retired = runner.invoke(cli, ["keys", "retire", "--dir", keys_dir, old])
    assert retired.exit_code == 0 and old in retired.stdout
    assert [k["kid"] for k in _jwks(runner, keys_dir, "transport")["keys"]] == [new]


def test_retire_refusals_are_one_line(runner, keys_dir):
    unknown = runner.invoke(cli, ["keys", "retire", "--dir", keys_dir, "nope"])
    assert unknown.exit_code == 1 and unknown.stderr.startswith("key_store: no key")
    signing = _jwks(runner, keys_dir, "signing")["keys"][0]["kid"]
    last = runner.invoke(cli, ["keys", "retire", "--dir", keys_dir, signing])
    assert last.exit_code == 1 and "rotate" in last.stderr


def test_commands_on_a_missing_store_fail_cleanly(runner, tmp_path):
    result = runner.invoke(cli, ["keys", "jwks", "--dir", str(tmp_path / "none"), "--kind", "signing"])
    assert result.exit_code == 1 and "station keys init" in result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def request_file(tmp_path, keys_dir, pin_request):
    transport = KeyStore.open(keys_dir).jwks("transport")["keys"][0]
    path = tmp_path / "request.jwe"
    path.write_text(seal_request(pin_request, transport_jwk=transport, kid=transport["kid"]) + "\n")
    return path


def test_inspect_prints_header_and_payload(runner, keys_dir, request_file, pin_request):
    result = runner.invoke(cli, ["inspect", "--keys", keys_dir, str(request_file)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["header"]["alg"] == "ECDH-ES+A256KW"
    assert shown["payload"]["requestId"] == pin_request["requestId"]
    assert shown["payload"]["forcePINChange"] is True


@pytest.mark.parametrize(
    "damage, code",
    [
        (lambda text: text[:40], "decrypt_failed"),
        (lambda text: text + "A" * 70000, "invalid_request"),
    ],
)
def test_inspect_prints_the_error_code_and_exits_1(runner, keys_dir, request_file, damage, code):
    request_file.write_text(damage(request_file.read_text().strip()))
    result = runner.invoke(cli, ["inspect", "--keys", keys_dir, str(request_file)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{code}: ") and len(result.stderr.splitlines()) == 1


def test_inspect_of_a_retired_key_request(runner, keys_dir, request_file):
    old = _jwks(runner, keys_dir, "transport")["keys"][0]["kid"]
    runner.invoke(cli, ["keys", "rotate", "--dir", keys_dir, "--kind", "transport"])
    runner.invoke(cli, ["keys", "retire", "--dir", keys_dir, old])
    result = runner.invoke(cli, ["inspect", "--keys", keys_dir, str(request_file)])
    assert result.exit_code == 1 and result.stderr.startswith("decrypt_failed: ")


def test_inspect_of_a_missing_file(runner, keys_dir, tmp_path):
    result = runner.invoke(cli, ["inspect", "--keys", keys_dir, str(tmp_path / "absent.jwe")])
    assert result.exit_code == 1 and result.stderr.startswith("usage: cannot read")

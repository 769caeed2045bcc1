"""station.config: the sources of `station run` / `station serve` settings and their precedence
(command line > STATION_RUN_*/STATION_SERVE_* > TOML file > default), and every way a
configuration is refused (code `config`, naming the file and line or the variable)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from station import config
from station.config import (
    ConfigError,
    RunSettings,
    ServeSettings,
    config_path,
    load_run_settings,
    load_serve_settings,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No STATION_* variable of the machine, and no system file, leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("STATION_RUN_", "STATION_SERVE_")) or name == config.CONFIG_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setattr(config, "SYSTEM_CONFIG_FILE", tmp_path / "absent" / "station.toml")


def write(tmp_path: Path, text: str, name: str = "station.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


# -- precedence ------------------------------------------------------------------------------


@pytest.mark.parametrize("file, env, cli", list(itertools.product([False, True], repeat=3)))
def test_the_strongest_source_given_wins(tmp_path, monkeypatch, file, env, cli):
    path = write(tmp_path, "[run]\nslots = 2\n") if file else None
    if env:
        monkeypatch.setenv("STATION_RUN_SLOTS", "3")
    settings = load_run_settings({"slots": 4} if cli else {}, path)
    expected = 4 if cli else 3 if env else 2 if file else 1
    assert settings.slots == expected


def test_sources_mix_per_setting(tmp_path, monkeypatch):
    path = write(tmp_path, '[run]\nservice = "http://file.example"\nslots = 2\ndevice = "pcsc"\n')
    monkeypatch.setenv("STATION_RUN_SLOTS", "3")
    monkeypatch.setenv("station_run_once", "true")  # any case
    settings = load_run_settings({"device": "hid"}, path)
    assert (settings.service, settings.slots, settings.device, settings.once) == ("http://file.example", 3, "hid", True)
    assert settings.lease_seconds == config.DEFAULT_RUN_LEASE_SECONDS  # the default


def test_serve_settings_have_the_same_precedence(tmp_path, monkeypatch):
    path = write(tmp_path, '[serve]\nport = 9000\nhost = "0.0.0.0"\nretention_seconds = 60\n[run]\nslots = 9\n')
    monkeypatch.setenv("STATION_SERVE_PORT", "9001")
    monkeypatch.setenv("STATION_RUN_SLOTS", "not read by serve")  # the other command's variable
    settings = load_serve_settings({"host": "127.0.0.1"}, path)
    assert (settings.port, settings.host, settings.retention_seconds) == (9001, "127.0.0.1", 60)


def test_the_file_is_found_by_option_then_variable_then_system_path(tmp_path, monkeypatch):
    given, from_env, system = (write(tmp_path, f"[run]\nslots = {n}\n", f"{n}.toml") for n in (2, 3, 4))
    assert config_path() is None and load_run_settings({}).slots == 1
    monkeypatch.setattr(config, "SYSTEM_CONFIG_FILE", system)
    assert load_run_settings({}).slots == 4
    monkeypatch.setenv(config.CONFIG_ENV, str(from_env))
    assert load_run_settings({}).slots == 3
    assert load_run_settings({}, given).slots == 2


def test_a_relative_path_in_the_file_is_taken_from_the_files_folder(tmp_path, monkeypatch):
    path = write(tmp_path, '[run]\nkeys_dir = "keys"\nroots = "/etc/roots"\n')
    monkeypatch.setenv("STATION_RUN_JOURNAL_DIR", "journal")
    settings = load_run_settings({}, path)
    assert settings.keys_dir == tmp_path / "keys"
    assert settings.roots == Path("/etc/roots")
    assert settings.journal_dir == Path("journal")  # from the environment: the working folder's


def test_the_shipped_example_file_loads_for_both_commands():
    example = REPO / "deploy" / "station.example.toml"
    run = load_run_settings({}, example)
    serve = load_serve_settings({}, example)
    assert run.slots == 4 and run.keys_dir == Path("/etc/fido-station/keys") and run.token is None
    assert serve.db_url.startswith("postgresql://") and serve.port == 8080


def test_every_run_and_serve_setting_is_in_the_example_file():
    text = (REPO / "deploy" / "station.example.toml").read_text()
    for name in [*RunSettings.model_fields, *ServeSettings.model_fields]:
        assert f"{name} = " in text, name


def test_heartbeat_defaults_to_a_quarter_of_the_lease():
    assert load_run_settings({"lease_seconds": 100}).heartbeat_every == 25
    assert load_run_settings({"lease_seconds": 100, "heartbeat_seconds": 10}).heartbeat_every == 10


def test_the_token_never_shows(tmp_path, monkeypatch):
    monkeypatch.setenv("STATION_RUN_TOKEN", "s3cr3t-token-value")
    settings = load_run_settings({})
    assert settings.token.get_secret_value() == "s3cr3t-token-value"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.model_dump())


# -- refusals --------------------------------------------------------------------------------


def refused(cli_values=None, path=None, *, serve=False, **kwargs) -> str:
    loader = load_serve_settings if serve else load_run_settings
    with pytest.raises(ConfigError) as caught:
        loader(cli_values or {}, path, **kwargs)
    assert caught.value.code == "config"
    assert str(caught.value).startswith("config: ")
    return caught.value.message


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "[run]\nslots = 2\ndevice = = 'hid'\n")
    message = refused(path=path)
    assert str(path) in message and "line 3" in message


def test_an_unknown_key_names_the_file_line_and_known_keys(tmp_path):
    path = write(tmp_path, "[run]\nslots = 2\n\n  slot = 3\n")
    message = refused(path=path)
    assert f"{path} line 4" in message and "'slot'" in message and "slots" in message


def test_an_unknown_key_in_the_other_table_is_refused_too(tmp_path):
    path = write(tmp_path, "[run]\nslots = 2\n[serve]\nprot = 80\n")
    assert f"{path} line 4" in refused(path=path) and "[serve]" in refused(path=path)


@pytest.mark.parametrize("text, line", [("[runn]\nslots = 2\n", 1), ("slots = 2\n[run]\n", 1),
                                        ("[run]\n[run.extra]\nx = 1\n", "?")])
def test_an_unknown_table_or_top_level_key_is_refused(tmp_path, text, line):
    path = write(tmp_path, text)
    message = refused(path=path)
    assert f"{path} line {line}" in message


def test_a_value_of_the_wrong_type_names_where_it_was_read(tmp_path, monkeypatch):
    path = write(tmp_path, '[run]\nonce = true\nslots = "four"\n')
    assert f"{path} line 3 (slots)" in refused(path=path)
    monkeypatch.setenv("STATION_RUN_SLOTS", "0")
    assert "STATION_RUN_SLOTS" in refused(path=path)
    assert "--slots" in refused({"slots": 65}, path)


@pytest.mark.parametrize("values, where", [
    ({"service": "ftp://x"}, "--service"), ({"virtual_transport": "usb"}, "--virtual-transport"),
    ({"lease_seconds": 5}, "--lease"), ({"keys_dir": 3}, "--keys"),
])
def test_each_bad_option_is_named_by_its_option(values, where):
    assert refused(values).startswith(where)


def test_a_heartbeat_not_shorter_than_the_lease_is_refused():
    assert "heartbeat_seconds" in refused({"lease_seconds": 60, "heartbeat_seconds": 60})


def test_a_bad_serve_port_is_refused(tmp_path):
    path = write(tmp_path, "[serve]\nport = 70000\n")
    assert f"{path} line 2 (port)" in refused(path=path, serve=True)


def test_an_unknown_environment_variable_is_refused(monkeypatch):
    monkeypatch.setenv("STATION_RUN_SLOT", "2")
    message = refused()
    assert "STATION_RUN_SLOT" in message and "STATION_RUN_SLOTS" in message


def test_an_unknown_command_line_setting_is_refused():
    assert "no setting named spec" in refused({"spec": "hid"})


def test_a_missing_or_unreadable_file_is_refused(tmp_path):
    assert "cannot read" in refused(path=tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"[run]\ndevice = '\xe9'\n")
    assert "cannot read" in refused(path=bad)


def test_a_required_setting_left_unset_says_every_way_to_give_it(tmp_path):
    path = write(tmp_path, '[run]\nservice = "http://127.0.0.1:8080"\n')
    message = refused(path=path, require=("service", "token", "keys_dir"))
    assert "service" not in message.split("token")[0]  # service is set
    for way in ("--token", "STATION_RUN_TOKEN", "token in [run]", "--keys", "STATION_RUN_KEYS_DIR", str(path)):
        assert way in message
    assert load_run_settings({"token": "t", "keys_dir": "k"}, path,
                             require=("service", "token", "keys_dir")).keys_dir == Path("k")

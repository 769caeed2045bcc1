"""Configuration of `station run` and `station serve` (pydantic-settings).

Every option of the two commands has a setting of the same name (the long option with `-` as
`_`, e.g. `--trust-test-ca` → `trust_test_ca`; except `--keys` → `keys_dir`, `--db` → `db_url`,
`--journal` → `journal_dir`, `--lease` → `lease_seconds`, `--json` → `as_json`, `--trust` → `trust_dir`). A setting's value comes from the first of these sources that has it:

1. the command line: an option the user actually gave (not a click default);
2. the environment: `STATION_RUN_<NAME>` for `station run`, `STATION_SERVE_<NAME>` for
   `station serve` (`<NAME>` is the setting's name in any case: `STATION_RUN_SLOTS=4`);
3. the TOML file: `--config FILE`, else the file named by `$STATION_CONFIG`, else
   `/etc/fido-station/station.toml` if it exists; its table `[run]` or `[serve]`
   (`slots = 4`). A relative path in the file is relative to the file's folder;
4. the defaults of `RunSettings` and `ServeSettings` below.

A TOML syntax error, an unknown table or key, an unknown `STATION_RUN_*`/`STATION_SERVE_*`
variable and a value of the wrong type are `ConfigError` (code `config`), naming the file and
line or the variable. The token is a `SecretStr`: it never shows in a repr or an error.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import field_validator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from station.errors import StationError
from station.fulfillment.models import MAX_LEASE_SECONDS
from station.fulfillment.store import DEFAULT_RETENTION_SECONDS
from station.trust.store import default_trust_dir

CONFIG_ENV = "STATION_CONFIG"
SYSTEM_CONFIG_FILE = Path("/etc/fido-station/station.toml")
#: `station run --lease`: a claimed item is held this long unless a heartbeat extends it
DEFAULT_RUN_LEASE_SECONDS = 120


class ConfigError(StationError):
    """The configuration file, an environment variable or an option holds something unusable."""

    code = "config"


class _Settings(BaseSettings):
    """What RunSettings and ServeSettings share: the TOML table and env prefix they read."""

    TABLE: ClassVar[str]


class RunSettings(_Settings):
    """`station run`: the station daemon (claims items, programs keys, returns responses)."""

    model_config = SettingsConfigDict(env_prefix="STATION_RUN_", extra="forbid", frozen=True)
    TABLE: ClassVar[str] = "run"

    service: str | None = Field(None, pattern=r"^https?://\S+$", description="The fulfillment service URL.")
    token: SecretStr | None = Field(None, description="The station's bearer token.")
    device: str = Field("auto", description="auto, hid[:PATH], pcsc[:READER], virtual:STATEFILE or virtual:FOLDER/.")
    slots: int = Field(1, ge=1, le=64, description="Keys programmed at once, one item each.")
    once: bool = Field(False, description="Stop after one item.")
    until_empty: bool = Field(False, description="Stop when the queue is empty.")
    keys_dir: Path | None = Field(None, description="The key-store folder (transport and signing keys).")
    journal_dir: Path = Field(Path("var/journal"), description="Where sealed results wait for the service's acknowledgement.")
    lease_seconds: int = Field(DEFAULT_RUN_LEASE_SECONDS, ge=10, le=MAX_LEASE_SECONDS)
    heartbeat_seconds: float | None = Field(None, gt=0, description="Lease extension period; default a quarter of the lease.")
    profile: str | None = Field(None, description="With virtual:FOLDER/: the profile of each fresh key.")
    virtual_transport: Literal["direct", "hid", "pcsc"] = "direct"
    trust_test_ca: bool = Field(False, description="Trust the virtual keys' TEST CA (testing only).")
    roots: Path | None = Field(None, description="Deprecated: a folder of roots for operator models (use station trust add-root).")
    trust_dir: Path = Field(default_factory=default_trust_dir, description="The trust store folder (station trust).")
    as_json: bool = Field(False, description="Machine-readable event lines instead of the live table.")
    step_timeout: float = Field(90.0, gt=0, description="A key with no progress this long is wedged (the watchdog).")
    lock_dir: Path | None = Field(None, description="Device lock files (default $STATION_LOCK_DIR or /run/fido-station).")

    @property
    def heartbeat_every(self) -> float:
        """heartbeat_seconds, or a quarter of the lease (at least 2 s)."""
        return self.heartbeat_seconds or max(self.lease_seconds / 4, 2.0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> RunSettings:
        if self.heartbeat_every >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_every:g}) must be shorter than "
                f"lease_seconds ({self.lease_seconds}), or leases expire between heartbeats"
            )
        return self


class ServeSettings(_Settings):
    """`station serve`: the fulfillment service."""

    model_config = SettingsConfigDict(env_prefix="STATION_SERVE_", extra="forbid", frozen=True)
    TABLE: ClassVar[str] = "serve"

    db_url: str | None = Field(None, description="sqlite:///FILE or postgresql://...; default $STATION_DB or ./var/station.db.")
    keys_dir: Path | None = Field(None, description="A key-store folder: refused unless allow_private_keys (use jwks_file).")
    jwks_file: Path | None = Field(None, description="The public JWKS from `station keys export-public` (the service's keys).")
    allow_private_keys: bool = Field(False, description="Let keys_dir hold private keys (a test machine only).")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    retention_seconds: float = Field(DEFAULT_RETENTION_SECONDS, gt=0, description="How long read responses are kept.")
    max_attempts: int = Field(3, ge=1, le=100, description="Keys that may fault on an item before it fails.")
    # the door under abuse (station.fulfillment.door.DoorLimits)
    trusted_proxy: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For is believed (env: comma-separated).")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body (413 above).")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="Largest request head (400 above).")
    head_timeout: float = Field(10.0, gt=0, description="Seconds for a request line and headers to arrive.")
    body_timeout: float = Field(10.0, gt=0, description="Seconds for a body to arrive (408 after).")
    max_connections: int = Field(200, ge=1, description="Concurrent connections and requests (503 above).")
    quota_shipments: int = Field(120, ge=1, description="Shipments a tenant may post per minute (429 above).")
    quota_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Bytes of shipments a tenant may post per minute.")
    docs: bool = Field(False, description="Serve /docs and /redoc (the OpenAPI pages).")
    # directory-connected provisioning (issue 15)
    directory_key: Path | None = Field(None, description="The key file sealing directory secrets "
                                       "(default $STATION_DIRECTORY_KEY, else var/directory-secrets.key).")
    registration_interval: float = Field(10.0, gt=0, description="Seconds between passes over pending "
                                         "directory registrations.")

    @field_validator("trusted_proxy", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        """A list (TOML, options) or one string, comma-separated (STATION_SERVE_TRUSTED_PROXY)."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


_TABLES: dict[str, type[_Settings]] = {"run": RunSettings, "serve": ServeSettings}


# -- public loaders ------------------------------------------------------------------------------


def load_run_settings(
    cli_values: Mapping[str, Any], config_file: Path | None = None, *, require: tuple[str, ...] = ()
) -> RunSettings:
    """RunSettings from the options the user gave, the environment, the TOML file and defaults.

    `cli_values` holds only the options given on the command line (click's
    `ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE`), keyed by setting name.
    `require` names settings that must end up set (e.g. `("service", "token", "keys_dir")`).
    """
    return _load(RunSettings, cli_values, config_file, require)


def load_serve_settings(
    cli_values: Mapping[str, Any], config_file: Path | None = None, *, require: tuple[str, ...] = ()
) -> ServeSettings:
    """ServeSettings, with the same sources and precedence as `load_run_settings`."""
    return _load(ServeSettings, cli_values, config_file, require)


def trust_dir_setting(cli_value: Path | None, config_file: Path | None = None) -> Path:
    """The trust store folder `station run` would use: `--trust`, STATION_RUN_TRUST_DIR, `trust_dir`
    in [run], else the default under the user's data folder (station.trust.store)."""
    return load_run_settings({"trust_dir": cli_value} if cli_value is not None else {}, config_file).trust_dir


def config_path(config_file: Path | None = None) -> Path | None:
    """The TOML file in force: `config_file`, else $STATION_CONFIG, else the system file if it exists."""
    if config_file is not None:
        return Path(config_file)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return SYSTEM_CONFIG_FILE if SYSTEM_CONFIG_FILE.is_file() else None


# -- the layers ------------------------------------------------------------------------------------

#: (value, where): a setting's value and where it was read ("FILE line 3 (slots)", "STATION_RUN_SLOTS")
Layer = dict[str, tuple[Any, str]]

#: options whose name is not the setting's name with dashes
_OPTION_NAMES = {"keys_dir": "--keys", "db_url": "--db", "as_json": "--json", "journal_dir": "--journal",
                 "lease_seconds": "--lease", "jwks_file": "--jwks", "trust_dir": "--trust"}


def option_name(setting: str) -> str:
    """The command-line option of a setting (`lease_seconds` → `--lease-seconds`, `keys_dir` → `--keys`)."""
    return _OPTION_NAMES.get(setting, "--" + setting.replace("_", "-"))


def _load(cls: type[_Settings], cli_values: Mapping[str, Any], config_file: Path | None,
          require: tuple[str, ...]) -> Any:
    path = config_path(config_file)
    layers = (_file_layer(cls, path) if path is not None else {}, _env_layer(cls), _cli_layer(cls, cli_values))
    merged: Layer = {}
    for layer in layers:  # weakest first: a later layer wins
        merged.update(layer)
    try:
        settings = cls(**{name: value for name, (value, _where) in merged.items()})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, cls, {name: where for name, (_v, where) in merged.items()})) from None
    _check_required(settings, require, path)
    return settings


def _cli_layer(cls: type[_Settings], cli_values: Mapping[str, Any]) -> Layer:
    unknown = sorted(set(cli_values) - set(cls.model_fields))
    if unknown:  # a command passing a name that is no setting: say which
        raise ConfigError(f"station {cls.TABLE} has no setting named {', '.join(unknown)}")
    return {name: (value, option_name(name)) for name, value in cli_values.items()}


def _env_layer(cls: type[_Settings]) -> Layer:
    """The STATION_<TABLE>_* variables, read by pydantic-settings; an unknown one is an error."""
    prefix = cls.model_config["env_prefix"]
    known = {prefix + name.upper() for name in cls.model_fields}
    stray = sorted(k for k in os.environ if k.upper().startswith(prefix) and k.upper() not in known)
    if stray:
        raise ConfigError(f"unknown environment variable {', '.join(stray)}; "
                          f"known: {', '.join(sorted(known))}")
    return {name: (value, prefix + name.upper()) for name, value in EnvSettingsSource(cls)().items()}


def _file_layer(cls: type[_Settings], path: Path) -> Layer:
    """The table of `cls` in the TOML file, each value with its line; the whole file is checked."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.__class__.__name__})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    lines = _key_lines(text)
    for table, body in document.items():
        if table not in _TABLES or not isinstance(body, dict):
            raise ConfigError(f"{path} line {lines.get((None, table), '?')}: unknown table or key "
                              f"{table!r}; the file holds the tables [run] and [serve]")
        for key in body:
            if key not in _TABLES[table].model_fields:
                raise ConfigError(f"{path} line {lines.get((table, key), '?')}: unknown key {key!r} "
                                  f"in [{table}]; known: {', '.join(_TABLES[table].model_fields)}")
    return {key: (_from_folder(path.parent, cls, key, value), f"{path} line {lines.get((cls.TABLE, key), '?')} ({key})")
            for key, value in document.get(cls.TABLE, {}).items()}


_TABLE_LINE = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]")
_KEY_LINE = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*[=.]""")


def _key_lines(text: str) -> dict[tuple[str | None, str], int]:
    """(table, key) → line number (1-based) of each key, and (None, table) → its header line."""
    found: dict[tuple[str | None, str], int] = {}
    table: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_LINE.match(line)
        if header:
            table = header.group(1)
            found.setdefault((None, table), number)
            continue
        key = _KEY_LINE.match(line)
        if key:
            name = next(g for g in key.groups() if g is not None)
            found.setdefault((table, name), number)
    return found


def _from_folder(folder: Path, cls: type[_Settings], key: str, value: Any) -> Any:
    """A relative path in the file is taken from the file's folder, not the working folder."""
    annotation = cls.model_fields[key].annotation
    is_path = annotation is Path or Path in get_args(annotation)
    if is_path and isinstance(value, str) and not Path(value).is_absolute():
        return str(folder / value)
    return value


def _describe(exc: ValidationError, cls: type[_Settings], origin: dict[str, str]) -> str:
    """One clause per wrong value, naming where it was read; never the value itself."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        parts.append(f"{origin.get(name, f'station {cls.TABLE}')}: {error['msg']}")
    return "; ".join(parts)


def _check_required(settings: _Settings, require: tuple[str, ...], path: Path | None) -> None:
    missing = [name for name in require if getattr(settings, name) is None]
    if not missing:
        return
    prefix = settings.model_config["env_prefix"]
    where = str(path) if path else f"${CONFIG_ENV} or {SYSTEM_CONFIG_FILE}"
    how = "; ".join(f"{name}: give {option_name(name)}, {prefix}{name.upper()}, or {name} in "
                    f"[{settings.TABLE}] of {where}" for name in missing)
    raise ConfigError(f"missing setting {how}")

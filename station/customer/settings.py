"""Configuration of the identity-provider clients (pydantic-settings): where Okta, Microsoft
Graph and PingOne are, and the credentials to reach them.

A setting's value comes from the first source that has it:

1. an override the caller passes (`station demo --okta-url URL` and the like: URLs only);
2. the environment: `STATION_OKTA_<NAME>`, `STATION_GRAPH_<NAME>`, `STATION_PINGONE_<NAME>`;
3. the TOML file `--customer-config FILE`, else `$STATION_CUSTOMER_CONFIG`, else
   `/etc/fido-station/customer.toml` if it exists: its tables `[okta]`, `[graph]`, `[pingone]`
   (a relative path in the file is relative to the file's folder);
4. the defaults below (the public endpoints of each provider).

Secrets (Okta's API token, the Graph and PingOne client secrets) come from the environment
(`STATION_GRAPH_CLIENT_SECRET`) or from a file named by `*_file` (`client_secret_file =
"graph.secret"`): never from the command line, and never written in the TOML file itself. They
are `SecretStr`: they never show in a repr, an error or a log.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from station.errors import StationError

CONFIG_ENV = "STATION_CUSTOMER_CONFIG"
SYSTEM_CONFIG_FILE = Path("/etc/fido-station/customer.toml")


class CustomerConfigError(StationError):
    """The customer configuration (file, environment, override) holds something unusable."""

    code = "config"


_EXPLICIT: ContextVar[bool] = ContextVar("explicit_settings", default=False)


class _ProviderSettings(BaseSettings):
    TABLE: ClassVar[str]
    SECRET: ClassVar[str]

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        if _EXPLICIT.get():
            return (init_settings,)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @classmethod
    def from_values(cls, **values: Any):
        """Settings from these values and the defaults only: no environment variable, no
        customer TOML (the fulfillment service builds a directory's client from its stored
        configuration, whatever the process's environment holds). A secret given as `str` is
        wrapped in SecretStr. Raises CustomerConfigError naming the value."""
        token = _EXPLICIT.set(True)
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            parts = [f"{'.'.join(map(str, e['loc'])) or cls.TABLE}: {e['msg']}"
                     for e in exc.errors(include_input=False, include_url=False)]
            raise CustomerConfigError(f"[{cls.TABLE}] " + "; ".join(parts)) from None
        finally:
            _EXPLICIT.reset(token)

    def secret(self) -> str:
        """The secret, from the environment or its file (trailing newline removed)."""
        value: SecretStr | None = getattr(self, self.SECRET)
        path: Path | None = getattr(self, self.SECRET + "_file")
        if value is not None:
            return value.get_secret_value()
        if path is not None:
            try:
                text = Path(path).read_text("utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise CustomerConfigError(f"{path}: cannot read the {self.TABLE} {self.SECRET} file "
                                          f"({exc.__class__.__name__})") from None
            if text:
                return text
        prefix = self.model_config["env_prefix"]
        raise CustomerConfigError(f"missing {self.TABLE} {self.SECRET}: set {prefix}{self.SECRET.upper()} or "
                                  f"{self.SECRET}_file in [{self.TABLE}] of the customer configuration")


class OktaSettings(_ProviderSettings):
    """An Okta org and an API token (`SSWS`) of an admin allowed `okta.users.manage`."""

    model_config = SettingsConfigDict(env_prefix="STATION_OKTA_", extra="forbid", frozen=True)
    TABLE: ClassVar[str] = "okta"
    SECRET: ClassVar[str] = "api_token"

    url: str = Field("https://acme.okta.com", pattern=r"^https?://\S+$", description="The org, https://ORG.okta.com.")
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    rp_ids: list[str] | None = Field(None, description="enrollmentRpIds; default the org's host name.")
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    max_retry_wait: float = Field(60.0, ge=0, description="Longest 429 wait honoured before giving up.")

    @property
    def enrollment_rp_ids(self) -> list[str]:
        return self.rp_ids or [urlsplit(self.url).hostname or ""]


class GraphSettings(_ProviderSettings):
    """An app registration in an Entra tenant with UserAuthenticationMethod.ReadWrite.All."""

    model_config = SettingsConfigDict(env_prefix="STATION_GRAPH_", extra="forbid", frozen=True)
    TABLE: ClassVar[str] = "graph"
    SECRET: ClassVar[str] = "client_secret"

    url: str = Field("https://graph.microsoft.com", pattern=r"^https?://\S+$", description="Microsoft Graph.")
    login_url: str = Field("https://login.microsoftonline.com", pattern=r"^https?://\S+$",
                           description="The identity platform (token endpoint host).")
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    challenge_timeout_minutes: int = Field(7 * 24 * 60, ge=5, le=43200,
                                           description="creationOptions challenge lifetime (beta: 5..43200).")
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    max_retry_wait: float = Field(60.0, ge=0)


class PingOneSettings(_ProviderSettings):
    """A PingOne environment, a worker app (Client Secret Post) and the FIDO2 policy to use."""

    model_config = SettingsConfigDict(env_prefix="STATION_PINGONE_", extra="forbid", frozen=True)
    TABLE: ClassVar[str] = "pingone"
    SECRET: ClassVar[str] = "client_secret"

    region: str = Field("com", pattern=r"^[a-z.]+$", description="com, eu, ca, asia, com.au: the hosts' suffix.")
    url: str | None = Field(None, pattern=r"^https?://\S+$", description="Default https://api.pingone.{region}.")
    auth_url: str | None = Field(None, pattern=r"^https?://\S+$", description="Default https://auth.pingone.{region}.")
    environment_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    policy_id: str | None = Field(None, description="The FIDO2 (device authentication) policy of the devices.")
    rp_id: str | None = Field(None, description="The relying party of the FIDO2 policy.")
    rp_name: str | None = None
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    max_retry_wait: float = Field(60.0, ge=0)

    @property
    def api_base(self) -> str:
        return self.url or f"https://api.pingone.{self.region}"

    @property
    def auth_base(self) -> str:
        return self.auth_url or f"https://auth.pingone.{self.region}"


_CLASSES: dict[str, type[_ProviderSettings]] = {"okta": OktaSettings, "graph": GraphSettings, "pingone": PingOneSettings}


def config_path(config_file: Path | None = None) -> Path | None:
    if config_file is not None:
        return Path(config_file)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return SYSTEM_CONFIG_FILE if SYSTEM_CONFIG_FILE.is_file() else None


def load_provider_settings(kind: str, overrides: Mapping[str, Any] | None = None,
                           config_file: Path | None = None) -> Any:
    """The settings of `kind` ("okta", "graph" or "pingone") from overrides, the environment,
    the TOML file and the defaults. Raises CustomerConfigError naming the file, table or variable."""
    cls = _CLASSES[kind]
    path = config_path(config_file)
    merged: dict[str, Any] = {}
    where: dict[str, str] = {}
    if path is not None:
        for key, value in _file_table(path, cls).items():
            merged[key], where[key] = value, f"{path} [{cls.TABLE}] {key}"
    prefix = cls.model_config["env_prefix"]
    known = {prefix + name.upper() for name in cls.model_fields}
    stray = sorted(k for k in os.environ if k.upper().startswith(prefix) and k.upper() not in known)
    if stray:
        raise CustomerConfigError(f"unknown environment variable {', '.join(stray)}; known: {', '.join(sorted(known))}")
    for key, value in EnvSettingsSource(cls)().items():
        merged[key], where[key] = value, prefix + key.upper()
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key], where[key] = value, f"the {key} option"
    try:
        return cls(**merged)
    except ValidationError as exc:
        parts = []
        for error in exc.errors(include_input=False, include_url=False):
            name = str(error["loc"][0]) if error["loc"] else ""
            parts.append(f"{where.get(name, f'[{cls.TABLE}] {name}')}: {error['msg']}")
        raise CustomerConfigError("; ".join(parts)) from None


def _file_table(path: Path, cls: type[_ProviderSettings]) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CustomerConfigError(f"{path}: cannot read the customer configuration ({exc.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CustomerConfigError(f"{path}: {exc}") from None
    for table, body in document.items():
        if table not in _CLASSES or not isinstance(body, dict):
            raise CustomerConfigError(f"{path}: unknown table {table!r}; the file holds [okta], [graph] and [pingone]")
        for key in body:
            if key not in _CLASSES[table].model_fields:
                raise CustomerConfigError(f"{path}: unknown key {key!r} in [{table}]")
            if key == _CLASSES[table].SECRET:
                raise CustomerConfigError(f"{path}: [{table}] {key} must not be written in the file: put it in a "
                                          f"file of its own ({key}_file) or the environment")
    table = dict(document.get(cls.TABLE, {}))
    secret_file = cls.SECRET + "_file"
    if isinstance(table.get(secret_file), str) and not Path(table[secret_file]).is_absolute():
        table[secret_file] = str(path.parent / table[secret_file])
    return table

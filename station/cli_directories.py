"""`station directories add|list|test|edit|delete|preflight|enroll|enrollments|audit|
register-pending` (issue 15): directory-connected provisioning from the service host, on the
store directly, like `station tenants`. Registered from station/cli.py.

A secret never travels on the command line: `--secret-file F` or `--secret-stdin`.
"""

from __future__ import annotations

import getpass
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from station.errors import UsageError


def register(cli: click.Group, db_option, fail_cleanly) -> None:
    """Add the `directories` group to `cli`."""

    tenant_option = click.option("--tenant", "tenant_id", type=int, required=True,
                                 help="The tenant (station tenants list) whose configuration this is.")
    key_option = click.option("--directory-key", "directory_key", type=click.Path(dir_okay=False, path_type=Path),
                              help="The key file sealing directory secrets (default: $STATION_DIRECTORY_KEY, "
                                   "else var/directory-secrets.key, or the OS keyring where present).")
    jwks_option = click.option("--jwks", "jwks_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                               help="The factory's public JWKS (station keys export-public).")

    def secret_options(func):
        func = click.option("--secret-stdin", is_flag=True, help="Read the client secret from standard input.")(func)
        return click.option("--secret-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                            help="A file holding the client secret (keep it 0600).")(func)

    @cli.group()
    def directories() -> None:
        """Directory-connected provisioning: a customer's Entra ID or PingOne, where the service
        enrolls the passkeys itself."""

    @directories.command("add")
    @db_option
    @tenant_option
    @key_option
    @click.option("--kind", type=click.Choice(["entra", "pingone"]), required=True)
    @click.option("--name", required=True, help="The configuration's name (unique per tenant).")
    @click.option("--tenant-id", "directory_tenant", help="Entra: the directory (tenant) ID.")
    @click.option("--environment-id", help="PingOne: the environment ID.")
    @click.option("--region", help="PingOne: com, eu, ca, asia, com.au (default com).")
    @click.option("--client-id", required=True, help="The application (client) ID.")
    @secret_options
    @click.option("--pin-delivery-key", "pin_key_file", required=True,
                  type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help="The customer's public PIN-delivery JWK (EC P-384, use enc): PINs are sealed to it.")
    @click.option("--default-address", "address_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help="JSON: where keys go for users without a complete address in the directory.")
    @click.option("--rp-id", help="PingOne: the FIDO2 relying party (default: the policy's).")
    @click.option("--policy-id", help="PingOne: the FIDO2 policy (default: the environment's default).")
    @click.option("--challenge-timeout-minutes", type=click.IntRange(5, 43200),
                  help="Entra: how long a creationOptions challenge lives (default 7 days).")
    @click.option("--aaguid", "aaguids", multiple=True,
                  help="A model (AAGUID) this tenant orders; repeatable (default: every model the factory ships).")
    @click.option("--graph-url", help="Entra: Microsoft Graph (default https://graph.microsoft.com).")
    @click.option("--login-url", help="Entra: the identity platform (default https://login.microsoftonline.com).")
    @click.option("--api-url", help="PingOne: the API (default https://api.pingone.REGION).")
    @click.option("--auth-url", help="PingOne: the auth server (default https://auth.pingone.REGION).")
    @fail_cleanly
    def add(db_url, tenant_id, directory_key, kind, name, directory_tenant, environment_id, region, client_id,
            secret_file, secret_stdin, pin_key_file, address_file, rp_id, policy_id, challenge_timeout_minutes,
            aaguids, graph_url, login_url, api_url, auth_url) -> None:
        """NEW: verify the values with the directory (a token, one user read), then store them."""
        from station.fulfillment.directories.models import DirectoryCreate

        endpoints = {k: v for k, v in {"graph_url": graph_url, "login_url": login_url, "api_url": api_url,
                                       "auth_url": auth_url}.items() if v}
        body = _model(DirectoryCreate, {
            "kind": kind, "name": name, "tenant_id": directory_tenant, "environment_id": environment_id,
            "region": region, "client_id": client_id, "client_secret": _secret(secret_file, secret_stdin),
            "pin_delivery_key": _json_file(pin_key_file, "--pin-delivery-key"),
            "default_address": _json_file(address_file, "--default-address") if address_file else None,
            "endpoints": endpoints or None, "rp_id": rp_id, "policy_id": policy_id,
            "challenge_timeout_minutes": challenge_timeout_minutes, "aaguids": list(aaguids) or None})
        with _service(db_url, directory_key) as dirs, _advice():
            config = dirs.add(_owner(tenant_id), body, actor=_actor())
        click.echo(f"added {config.kind} directory configuration {config.name!r}: the connection was verified")

    @directories.command("list")
    @db_option
    @tenant_option
    @key_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON document.")
    @fail_cleanly
    def listing(db_url, tenant_id, directory_key, as_json) -> None:
        """The tenant's configurations (never a secret)."""
        with _service(db_url, directory_key) as dirs:
            views = [c.view().model_dump(mode="json") for c in dirs.list(_owner(tenant_id))]
        if as_json:
            click.echo(json.dumps({"directories": views}, indent=2))
            return
        for v in views:
            click.echo(f"{v['name']}\t{v['kind']}\t{v['tenant_id'] or v['environment_id']}\t{v['client_id']}\t"
                       f"updated {_when(v['updated_at'])}")

    @directories.command("test")
    @db_option
    @tenant_option
    @key_option
    @click.argument("name")
    @fail_cleanly
    def test(db_url, tenant_id, directory_key, name) -> None:
        """Test Connection: success, or the directory's refusal (exit 1)."""
        with _service(db_url, directory_key) as dirs:
            result = dirs.test(_owner(tenant_id), name, actor=_actor())
        click.echo(("success: " if result["ok"] else "failure: ") + result["message"],
                   err=not result["ok"])
        if not result["ok"]:
            if result.get("what_to_do"):
                click.echo(result["what_to_do"], err=True)
            sys.exit(1)

    @directories.command("edit")
    @db_option
    @tenant_option
    @key_option
    @click.argument("name")
    @click.option("--new-name", help="Rename the configuration.")
    @click.option("--client-id", help="A new client ID (needs its secret: --secret-file or --secret-stdin).")
    @secret_options
    @fail_cleanly
    def edit(db_url, tenant_id, directory_key, name, new_name, client_id, secret_file, secret_stdin) -> None:
        """Edit the name, the client ID with its secret, or the secret (verified before stored)."""
        from station.fulfillment.directories.models import DirectoryEdit

        secret = _secret(secret_file, secret_stdin) if (secret_file or secret_stdin) else None
        body = _model(DirectoryEdit, {"name": new_name, "client_id": client_id, "client_secret": secret})
        with _service(db_url, directory_key) as dirs, _advice():
            config = dirs.edit(_owner(tenant_id), name, body, actor=_actor())
        click.echo(f"updated directory configuration {config.name!r}")

    @directories.command("delete")
    @db_option
    @tenant_option
    @key_option
    @click.argument("name")
    @click.option("--confirm", help='Type "permanently delete" to delete the configuration.')
    @fail_cleanly
    def remove(db_url, tenant_id, directory_key, name, confirm) -> None:
        """Delete the configuration (its pending enrollments are cancelled)."""
        with _service(db_url, directory_key) as dirs:
            dirs.delete(_owner(tenant_id), name, confirm, actor=_actor())
        click.echo(f"deleted directory configuration {name!r}")

    @directories.command("preflight")
    @db_option
    @tenant_option
    @key_option
    @click.argument("name")
    @click.option("--user", "users", multiple=True, help="A user (UPN / username or id) to check; repeatable.")
    @click.option("--group", help="A group whose members to check.")
    @fail_cleanly
    def preflight(db_url, tenant_id, directory_key, name, users, group) -> None:
        """The directory's FIDO2 policy against the keys this factory ships; exit 1 on a block."""
        with _service(db_url, directory_key) as dirs:
            findings = dirs.preflight(_owner(tenant_id), name, users=list(users) or None, group=group,
                                      actor=_actor())
        _print_findings(findings)
        if any(f.level == "block" for f in findings):
            sys.exit(1)
        click.echo("pre-flight passed: keys can be enrolled")

    @directories.command("enroll")
    @db_option
    @tenant_option
    @key_option
    @jwks_option
    @click.argument("name")
    @click.option("--user", "users", multiple=True, help="A user (UPN / username or id); repeatable.")
    @click.option("--group", help="Every member of this group.")
    @fail_cleanly
    def enroll(db_url, tenant_id, directory_key, jwks_file, name, users, group) -> None:
        """Pre-flight, then one shipment of one pre-registered key per user."""
        from station.fulfillment.directories.service import PreflightBlocked
        from station.fulfillment.directories.models import FindingView

        if bool(users) == bool(group):
            raise UsageError("give --user UPN (repeatable) or --group NAME")
        with _service(db_url, directory_key, jwks_file) as dirs:
            try:
                findings, outcomes = dirs.enroll(_owner(tenant_id), name, users=list(users) or None, group=group,
                                                 actor=_actor())
            except PreflightBlocked as exc:
                _print_findings([FindingView(**f) for f in exc.error_data or []])
                click.echo("preflight_blocked: nothing was enrolled, no key will be programmed", err=True)
                sys.exit(1)
        _print_findings(findings)
        if not outcomes:
            click.echo("nobody to enroll: the group has no user members", err=True)
        for o in outcomes:
            click.echo(f"{o.user}\t{o.outcome}\t{o.shipment_id or ''}\t{o.message or ''}".rstrip())
        if not outcomes or any(o.outcome == "failed" for o in outcomes):
            sys.exit(1)

    @directories.command("enrollments")
    @db_option
    @tenant_option
    @key_option
    @click.argument("name")
    @fail_cleanly
    def enrollments(db_url, tenant_id, directory_key, name) -> None:
        """The enrollments of a configuration: user, shipment, state, method/device id, message."""
        with _service(db_url, directory_key) as dirs:
            rows = dirs.enrollments(_owner(tenant_id), name)
        for r in rows:
            click.echo(f"{r['user_name']}\t{r['shipment_id']}\t{r['state']}\t{r['method_id'] or ''}\t"
                       f"{r['message'] or ''}".rstrip())

    @directories.command("audit")
    @db_option
    @tenant_option
    @key_option
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document.")
    @fail_cleanly
    def audit(db_url, tenant_id, directory_key, name, as_json) -> None:
        """Every directory call made for the configuration (no secret, token or PIN)."""
        with _service(db_url, directory_key) as dirs:
            rows = dirs.audit(_owner(tenant_id), name)
        if as_json:
            click.echo(json.dumps({"audit": rows}, indent=2))
            return
        for r in rows:
            click.echo("\t".join(str(x) for x in (
                _when(r["at"]), r["actor"], r["action"], r["target_user"] or "-", r["outcome"],
                r["http_status"] or "-", r["correlation_id"] or "-", r["method_id"] or "-", r["message"] or "")))

    @directories.command("register-pending")
    @db_option
    @key_option
    @jwks_option
    @fail_cleanly
    def register_pending(db_url, directory_key, jwks_file) -> None:
        """One pass: register in their directories the credentials of every key a station has
        programmed (`station serve` does this in the background as well)."""
        with _service(db_url, directory_key, jwks_file) as dirs:
            done = dirs.register_pending()
        click.echo(f"registered {len(done.registered)}, refused {len(done.refused)} (reset those keys: "
                   f"station reset; do not ship them), retried later {len(done.throttled)}, "
                   f"failed at the factory {len(done.failed)}")


def _owner(tenant_id: int) -> str:
    return f"tenant:{tenant_id}"


def _actor() -> str:
    try:
        return f"operator {getpass.getuser()} (cli)"
    except Exception:  # no user name in this environment
        return "operator (cli)"


def _model(cls, values: dict):
    from pydantic import ValidationError

    from station.protocol.messages import describe_validation_error

    try:
        return cls.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from None


def _secret(path: Path | None, stdin: bool) -> str:
    if bool(path) == bool(stdin):
        raise UsageError("give the client secret with exactly one of --secret-file F and --secret-stdin "
                         "(never on the command line)")
    text = sys.stdin.read() if stdin else path.read_text("utf-8")
    secret = text.strip()
    if not secret:
        raise UsageError("the client secret is empty")
    return secret


def _json_file(path: Path, option: str) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{option} {path}: not a JSON file ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{option} {path}: a JSON object is expected")
    return data


def _print_findings(findings) -> None:
    for f in findings:
        click.echo(f"{'BLOCK' if f.level == 'block' else 'warning'} [{f.code}]: {f.message}",
                   err=f.level == "block")


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class _advice:
    """After a directory's refusal, its one-line `code: message` (fail_cleanly), and first what
    the administrator changes, and where."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        data = getattr(exc, "error_data", None)
        if isinstance(data, dict) and data.get("what_to_do"):
            click.echo(data["what_to_do"], err=True)
        return False


class _NoKeys:
    """Stands in for the factory's keys where a command needs none; says which option it lacks."""

    def jwks(self, kind: str) -> dict:
        raise UsageError("this command needs the factory's public keys: --jwks FILE (station keys export-public)")

    def check_transport_kid(self, kid: str) -> None:
        self.jwks("transport")


class _service:
    def __init__(self, db_url: str | None, directory_key: Path | None, jwks_file: Path | None = None) -> None:
        from station.fulfillment.directories.sealing import open_box
        from station.fulfillment.directories.service import Directories
        from station.fulfillment.store import Store
        from station.protocol.keys import PublishedKeys

        keys = PublishedKeys.from_file(str(jwks_file)) if jwks_file else _NoKeys()
        box = open_box(directory_key)
        self.store = Store.open(db_url)
        self.dirs = Directories(self.store, box, keys)

    def __enter__(self):
        return self.dirs

    def __exit__(self, *exc) -> None:
        self.store.close()

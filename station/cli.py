"""The `station` command line (shared/CLI.md). Click commands only: parse, call one function, print.

Every failure prints one line `error_code: message` on stderr and exits non-zero.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from station.errors import StationError, UsageError


def fail_cleanly(func):
    """Turn a StationError into the one-line `code: message` and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StationError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)

    return wrapper


def given_options(ctx: click.Context, *names: str) -> dict:
    """The options among `names` the user typed (click's parameter source), for station.config."""
    from click.core import ParameterSource

    return {n: ctx.params[n] for n in names if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fido-preregistration-station", prog_name="station")
def cli() -> None:
    """FIDO pre-registration provisioning station."""


# ---------------------------------------------------------------- keys, inspect (protocol)
@cli.group()
def keys() -> None:
    """The key store: transport and signing keys (PROTOCOL.md §1)."""


_KEYS_DIR = click.option(
    "--dir", "keys_dir", required=True, type=click.Path(file_okay=False), help="Key-store folder."
)
_KEY_KIND = click.option(
    "--kind", required=True, type=click.Choice(["transport", "signing"]), help="Which keys."
)


@keys.command("init")
@_KEYS_DIR
@fail_cleanly
def keys_init(keys_dir: str) -> None:
    """Make one transport and one signing key (EC P-384) in a new key store."""
    from station.protocol.keys import KeyStore

    for entry in KeyStore.init(keys_dir).entries:
        click.echo(f"{entry.kind}\t{entry.kid}")


@keys.command("jwks")
@_KEYS_DIR
@_KEY_KIND
@fail_cleanly
def keys_jwks(keys_dir: str, kind: str) -> None:
    """Print the public JWKS of one kind of key."""
    from station.protocol.keys import KeyStore

    _echo_json(KeyStore.open(keys_dir).jwks(kind))


@keys.command("rotate")
@_KEYS_DIR
@_KEY_KIND
@fail_cleanly
def keys_rotate(keys_dir: str, kind: str) -> None:
    """Add a new active key; the old ones stay usable. Prints the new kid."""
    from station.protocol.keys import KeyStore

    click.echo(KeyStore.open(keys_dir).rotate(kind))


@keys.command("export-public")
@_KEYS_DIR
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The JWKS file `station serve --jwks` runs on (public keys only).")
@fail_cleanly
def keys_export_public(keys_dir: str, out_file: Path) -> None:
    """Write the public keys (active transport, unrevoked signing) as one JWKS, atomically.
    Copy it to the service host; a running service picks up a new export without a restart."""
    from station.fsutil import atomic_write
    from station.protocol.keys import KeyStore

    document = KeyStore.open(keys_dir).export_public()
    atomic_write(out_file, (json.dumps(document, indent=2) + "\n").encode("utf-8"), mode=0o644)
    click.echo(f"{out_file}: {', '.join(k['kid'] for k in document['keys'])}")


@keys.command("revoke")
@_KEYS_DIR
@click.argument("kid")
@fail_cleanly
def keys_revoke(keys_dir: str, kid: str) -> None:
    """Revoke a signing key believed compromised: it stops signing and leaves the published set,
    so customers refuse every response it signed (docs/HARDENING.md). Export again afterwards."""
    from station.protocol.keys import KeyStore

    KeyStore.open(keys_dir).revoke(kid)
    click.echo(f"revoked {kid}: run station keys export-public and copy the file to the service")


@keys.command("retire")
@_KEYS_DIR
@click.argument("kid")
@fail_cleanly
def keys_retire(keys_dir: str, kid: str) -> None:
    """Retire KID: a retired transport key no longer opens requests."""
    from station.protocol.keys import KeyStore

    KeyStore.open(keys_dir).retire(kid)
    click.echo(f"retired {kid}")


@cli.command()
@click.option(
    "--keys", "keys_dir", required=True, type=click.Path(file_okay=False), help="Key-store folder."
)
@click.argument("file", type=click.Path(dir_okay=False))
@fail_cleanly
def inspect(keys_dir: str, file: str) -> None:
    """Open the request JWE in FILE: print its header and validated payload as JSON."""
    from station.protocol.jose import inspect_request
    from station.protocol.keys import KeyStore

    compact = _read_text(file).strip()
    _echo_json(inspect_request(compact, keystore=KeyStore.open(keys_dir)))


def _echo_json(data: dict) -> None:
    import json

    click.echo(json.dumps(data, indent=2))


MAX_INPUT_FILE = 1024 * 1024


def _read_text(path: str) -> str:
    """A small text file, or UsageError naming it."""
    from station.errors import UsageError

    try:
        with open(path, encoding="ascii") as handle:
            return handle.read(MAX_INPUT_FILE)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path} as an ASCII text file ({exc.__class__.__name__})") from exc


# ---------------------------------------------------------------- virtual authenticator
@cli.group()
def virtual() -> None:
    """The virtual CTAP 2.1 authenticator used by CI and demos instead of hardware."""


# --- virtual core (profiles, new, ca)
def _as_station_error(func):
    """station.virtual raises its own VirtualError (it imports nothing of the station)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from station.virtual.errors import VirtualError

        try:
            return func(*args, **kwargs)
        except VirtualError as exc:
            raise StationError(str(exc), code="virtual") from None

    return wrapper


@virtual.command("profiles")
@fail_cleanly
def virtual_profiles() -> None:
    """The device models the virtual authenticator imitates, one per line."""
    from station.virtual.profiles import PROFILES

    for name in PROFILES:
        click.echo(name)


@virtual.command("new")
@click.argument("statefile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", required=True, help="One of `station virtual profiles`.")
@click.option("--fault", "fault", metavar="PLAN", default=None,
              help="A fault plan kept with the key in STATEFILE.fault: pull-after:N, pull-during:CMD, "
                   "wedge-after:N, wedge-during:CMD, slow:SECONDS, no-touch[:SECONDS].")
@fail_cleanly
@_as_station_error
def virtual_new(statefile: Path, profile: str, fault: str | None) -> None:
    """Create a fresh, never-programmed virtual key in STATEFILE (never overwrites)."""
    from station.virtual import new_virtual

    with new_virtual(statefile, profile, fault=fault) as key:
        click.echo(f"{statefile}: {key.profile.vendor} {key.profile.model}, serial {key.state.serial}")


@virtual.command("ca")
@fail_cleanly
@_as_station_error
def virtual_ca() -> None:
    """Print the PEM of the TEST root that signs virtual attestation certificates."""
    from station.virtual.attestation import ca_pem

    click.echo(ca_pem(), nl=False)


# --- virtual transports (serve)
def _host_port(ctx, param, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host, int(port)


@virtual.command("serve")
@click.argument("statefile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--vpcd", default="127.0.0.1:35963", show_default=True, callback=_host_port,
              help="Where pcscd's vsmartcard vpcd reader listens.")
@click.option("--presence", default="approve", show_default=True,
              help="How the simulated user answers a touch: approve | delay:SECONDS | never.")
@click.option("--fault", "fault", metavar="PLAN", default=None,
              help="Hardware faults for this run, comma-separated: pull-after:N, pull-during:CMD, "
                   "wedge-after:N, wedge-during:CMD, slow:SECONDS, no-touch[:SECONDS] "
                   "(default: the plan kept in STATEFILE.fault, if any).")
@fail_cleanly
@_as_station_error
def virtual_serve(statefile: Path, vpcd: tuple[str, int], presence: str, fault: str | None) -> None:
    """Insert the key in STATEFILE as a card into pcscd's virtual reader until interrupted."""
    from station.virtual.vpcd import serve_until_signalled

    host, port = vpcd
    serve_until_signalled(statefile, host=host, port=port, presence=presence, fault=fault, announce=click.echo)



# ---------------------------------------------------------------- devices, fulfill, reset (provisioning)
def _virtual_transport_option(func):
    return click.option(
        "--virtual-transport", type=click.Choice(["direct", "hid", "pcsc"]), default="direct",
        show_default=True, help="How a virtual: key is reached (python-fido2 CtapHidDevice or CtapPcscDevice over it).",
    )(func)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def devices(as_json: bool) -> None:
    """Every attached authenticator (USB-HID and PC/SC); keys a station slot holds are listed as
    in use and never opened."""
    from station.console import print_devices
    from station.device.discovery import scan

    found = scan()
    try:
        print_devices(found.devices, as_json=as_json, busy=found.busy, refused=found.refused)
    finally:
        found.close()


@cli.command()
@click.option("--device", "spec", required=True, help="auto, hid[:PATH], pcsc[:READER] or virtual:STATEFILE")
@click.option("--yes", is_flag=True, help="Confirm: every credential and the PIN are erased.")
@click.option("--wait", is_flag=True, help="Reset the key on its next insertion (no race against its window).")
@_virtual_transport_option
@fail_cleanly
def reset(spec: str, yes: bool, wait: bool, virtual_transport: str) -> None:
    """Factory-reset an authenticator, with a touch, within its window after plugging it in
    (YubiKey 5 s, CTAP 2.1 10 s); --wait resets it as it is inserted."""
    from station.console import err_console
    from station.provision.reset import reset_device, reset_window

    if not yes:
        raise UsageError("reset erases the key: add --yes to confirm")

    def touch(d) -> None:
        err_console.print(f"[bold yellow]Touch the key to reset it:[/] {d.label} "
                          f"(within {reset_window(d.vendor)} s of inserting it)")

    label = reset_device(spec, virtual_transport=virtual_transport, on_touch=touch, wait=wait,
                         on_waiting=lambda text: err_console.print(f"[bold]{text}[/]"))
    err_console.print(f"[green]reset:[/] {label} is fresh again")


@cli.command()
@click.argument("shipment_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keys", "keys_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", "spec", required=True, help="auto, hid[:PATH], pcsc[:READER], virtual:STATEFILE or virtual:FOLDER/")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", help="With virtual:FOLDER/: the profile of the fresh key made per item.")
@click.option("--roots", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Deprecated: a folder of roots for operator models; use `station trust add-root`.")
@click.option("--trust", "trust_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The trust store folder (default: STATION_RUN_TRUST_DIR, else ~/.local/share/fido-station/trust).")
@click.option("--trust-test-ca", is_flag=True, help="Trust the virtual authenticator's TEST CA (testing only; implied by virtual: devices).")
@_virtual_transport_option
@fail_cleanly
def fulfill(shipment_file: Path, keys_dir: Path, spec: str, out_file: Path, profile: str | None,
            roots: Path | None, trust_dir: Path | None, trust_test_ca: bool, virtual_transport: str) -> None:
    """Program one key per item of a shipment body and write the product_data (exit 1 if any item failed)."""
    from station.config import trust_dir_setting
    from station.provision.shipment import fulfill_files

    _warn_roots_deprecated(roots)
    ok = fulfill_files(shipment_file=shipment_file, keys_dir=keys_dir, spec=spec, out_file=out_file,
                       profile=profile, roots=roots, trust_test_ca=trust_test_ca, virtual_transport=virtual_transport,
                       trust_dir=trust_dir_setting(trust_dir))
    sys.exit(0 if ok else 1)


# ---------------------------------------------------------------- station daemon (run)
RUN_OPTIONS = ("service", "token", "device", "keys_dir", "journal_dir", "slots", "once", "until_empty",
               "lease_seconds", "heartbeat_seconds", "profile", "roots", "trust_test_ca", "as_json", "virtual_transport", "trust_dir",
               "step_timeout", "lock_dir")


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with a [run] table (default: $STATION_CONFIG, else /etc/fido-station/station.toml).")
@click.option("--service", help="The fulfillment service, e.g. http://127.0.0.1:8080")
@click.option("--token", help="A station token (station tokens create --role station); better: $STATION_RUN_TOKEN.")
@click.option("--device", help="auto (default), hid[:PATH], pcsc[:READER], virtual:STATEFILE or virtual:FOLDER/")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), help="Key-store folder.")
@click.option("--journal", "journal_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where sealed results wait for the service's acknowledgement (default var/journal).")
@click.option("--slots", type=click.IntRange(1, 64), help="Keys programmed at once (default 1).")
@click.option("--once", is_flag=True, default=None, help="Stop after one item (or when the queue is empty).")
@click.option("--until-empty", is_flag=True, default=None, help="Stop when the queue is empty.")
@click.option("--lease", "lease_seconds", type=click.IntRange(10, 3600), help="Lease on a claimed item (default 120 s).")
@click.option("--heartbeat-seconds", type=float, help="Lease extension period (default a quarter of the lease).")
@click.option("--profile", help="With virtual:FOLDER/: the profile of the fresh key made per item.")
@click.option("--roots", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Deprecated: a folder of roots for operator models; use `station trust add-root`.")
@click.option("--trust", "trust_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The trust store folder (station trust; default ~/.local/share/fido-station/trust).")
@click.option("--trust-test-ca", is_flag=True, default=None, help="Trust the TEST CA (testing only; implied by virtual: devices).")
@click.option("--json", "as_json", is_flag=True, default=None, help="Machine-readable event lines on stdout.")
@click.option("--virtual-transport", type=click.Choice(["direct", "hid", "pcsc"]),
              help="How a virtual: key is reached (default direct).")
@click.option("--step-timeout", type=float, help="Seconds without progress after which a key counts as wedged (default 90).")
@click.option("--lock-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Device lock files (default $STATION_LOCK_DIR, else /run/fido-station).")
@click.pass_context
@fail_cleanly
def run(ctx: click.Context, config_file: Path | None, **_options) -> None:
    """The station daemon: claim items, program keys, return sealed responses.
    Options: command line > STATION_RUN_* > the TOML [run] table > defaults."""
    from station.config import load_run_settings
    from station.console import run_events
    from station.fulfillment.runner import RunOptions, run_station

    settings = load_run_settings(given_options(ctx, *RUN_OPTIONS), config_file, require=("service", "token", "keys_dir"))
    opts = RunOptions(
        service=settings.service, token=settings.token.get_secret_value(), spec=settings.device,
        keys_dir=settings.keys_dir, journal_dir=settings.journal_dir, slots=settings.slots, once=settings.once,
        until_empty=settings.until_empty, lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_every, profile=settings.profile,
        virtual_transport=settings.virtual_transport, trust_test_ca=settings.trust_test_ca, roots=settings.roots,
        trust_dir=settings.trust_dir,
        step_timeout=settings.step_timeout, lock_dir=settings.lock_dir,
    )
    _warn_roots_deprecated(settings.roots)
    with run_events(as_json=settings.as_json, slots=settings.slots) as on_event:
        run_station(opts, on_event=on_event)


# ---------------------------------------------------------------- fulfillment service (serve, tokens)
_DB_OPTION = click.option(
    "--db", "db_url", default=None,
    help="sqlite:///FILE or postgresql://USER@HOST/DB (default: $STATION_DB or ./var/station.db).",
)


DOOR_OPTIONS = ("trusted_proxy", "max_body_bytes", "max_header_bytes", "head_timeout", "body_timeout",
                "max_connections", "quota_shipments", "quota_bytes", "docs")
SERVE_OPTIONS = ("db_url", "keys_dir", "jwks_file", "allow_private_keys", "host", "port", "retention_seconds",
                 "max_attempts", *DOOR_OPTIONS, "directory_key", "registration_interval")


@cli.command()
@_DB_OPTION
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with a [serve] table (default: $STATION_CONFIG, else /etc/fido-station/station.toml).")
@click.option("--jwks", "jwks_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The public JWKS from `station keys export-public`: the service's keys.")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path),
              help="A key-store folder instead of --jwks: refused (it holds private keys) unless --allow-private-keys.")
@click.option("--allow-private-keys", is_flag=True, default=None,
              help="Run on a private key store's public half (a test machine only).")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default 8080).")
@click.option("--retention-seconds", type=float, help="How long read responses are kept before the purge.")
@click.option("--trusted-proxy", multiple=True, metavar="CIDR",
              help="A reverse proxy whose X-Forwarded-For is believed (repeatable); default: none, the peer address counts.")
@click.option("--max-body-bytes", type=click.IntRange(1024), help="Largest request body (default 1 MiB; 413 above).")
@click.option("--max-header-bytes", type=click.IntRange(1024), help="Largest request head (default 16 KiB).")
@click.option("--head-timeout", type=click.FloatRange(min=0.1), help="Seconds for the request head (default 10).")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), help="Seconds for the body (default 10; 408 after).")
@click.option("--max-connections", type=click.IntRange(1), help="Concurrent connections (default 200; 503 above).")
@click.option("--quota-shipments", type=click.IntRange(1), help="Shipments per tenant per minute (default 120).")
@click.option("--quota-bytes", type=click.IntRange(1024), help="Shipment bytes per tenant per minute (default 16 MiB).")
@click.option("--docs", is_flag=True, default=None, help="Serve /docs and /redoc (off by default).")
@click.option("--max-attempts", type=click.IntRange(1, 100), help="Keys that may fault on an item before it fails (default 3).")
@click.option("--directory-key", type=click.Path(dir_okay=False, path_type=Path),
              help="The key file sealing directory secrets (default $STATION_DIRECTORY_KEY, else var/directory-secrets.key).")
@click.option("--registration-interval", type=click.FloatRange(min=0.1),
              help="Seconds between passes over pending directory registrations (default 10).")
@click.pass_context
@fail_cleanly
def serve(ctx: click.Context, config_file: Path | None, **_options) -> None:
    """Run the fulfillment service (PROTOCOL.md §4 and the station API) until interrupted.
    Options: command line > STATION_SERVE_* > the TOML [serve] table > defaults."""
    from station.config import load_serve_settings
    from station.fulfillment.api import serve as serve_api
    from station.fulfillment.door import DoorLimits

    given = given_options(ctx, *SERVE_OPTIONS)
    if not given.get("trusted_proxy", True):
        given.pop("trusted_proxy")
    settings = load_serve_settings(given, config_file)
    try:
        limits = DoorLimits(
            max_body_bytes=settings.max_body_bytes, max_header_bytes=settings.max_header_bytes,
            head_timeout=settings.head_timeout, body_timeout=settings.body_timeout,
            max_connections=settings.max_connections, trusted_proxies=tuple(settings.trusted_proxy),
            shipments_per_minute=settings.quota_shipments, shipment_bytes_per_minute=settings.quota_bytes,
            docs=settings.docs,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    serve_api(settings.db_url, None if settings.keys_dir is None else str(settings.keys_dir),
              jwks_file=None if settings.jwks_file is None else str(settings.jwks_file),
              allow_private_keys=settings.allow_private_keys, host=settings.host, port=settings.port,
              retention_seconds=settings.retention_seconds, limits=limits,
              max_attempts=settings.max_attempts,
              directory_key=None if settings.directory_key is None else str(settings.directory_key),
              registration_interval=settings.registration_interval)


@cli.group()
def tokens() -> None:
    """Bearer tokens of the fulfillment service."""


@tokens.command("create")
@_DB_OPTION
@click.option("--role", required=True, type=click.Choice(["customer", "station", "operator"]))
@click.option("--tenant", "tenant_id", type=int, help="The tenant (station tenants add) a customer token acts for.")
@click.option("--name", help="A label: the station's or operator's name in the audit; for a customer, default its tenant's name.")
@click.option("--expires", "expires_days", type=click.FloatRange(min=0), default=365.0, show_default=True,
              help="Days until the token stops working (0: never).")
@fail_cleanly
def tokens_create(db_url: str | None, role: str, tenant_id: int | None, name: str | None, expires_days: float) -> None:
    """Print a new bearer token (only its hash is stored: keep it now)."""
    from station.fulfillment.store import Store, create_token

    if role == "customer" and tenant_id is None:
        raise UsageError("a customer token needs --tenant ID (station tenants add NAME; station tenants list)")
    if name is None:
        if tenant_id is None:
            raise UsageError(f"a {role} token needs --name (its name in the audit)")
        store = Store.open(db_url)
        try:
            name = next((t.name for t in store.list_tenants() if t.id == tenant_id), str(tenant_id))
        finally:
            store.close()
    click.echo(create_token(db_url, role, name, tenant_id=tenant_id, expires_days=expires_days or None))


# tenants add|list, tokens list|revoke (issue 17)
from station.cli_security import register as _register_security  # noqa: E402

_register_security(cli, tokens, _DB_OPTION, fail_cleanly)


# ---------------------------------------------------------------- shipments (the operator's moves)
@cli.command()
@click.argument("shipment_id")
@click.option("--tracking", required=True, help="The carrier's tracking number (the customer reads it).")
@_DB_OPTION
@fail_cleanly
def ship(shipment_id: str, tracking: str, db_url: str | None) -> None:
    """Mark a programmed shipment (102) shipped (103) with its tracking number."""
    from station.fulfillment.store import ShipmentState, set_shipment_state

    click.echo(set_shipment_state(db_url, shipment_id, ShipmentState.SHIPPED, tracking_number=tracking))


@cli.command()
@click.argument("shipment_id")
@_DB_OPTION
@fail_cleanly
def delivered(shipment_id: str, db_url: str | None) -> None:
    """Mark a shipped shipment (103) delivered (104); its responses stay readable."""
    from station.fulfillment.store import ShipmentState, set_shipment_state

    click.echo(set_shipment_state(db_url, shipment_id, ShipmentState.DELIVERED))


# ---------------------------------------------------------------- doctor (machine readiness)
@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with a [run] table (default: $STATION_CONFIG, else /etc/fido-station/station.toml).")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), help="Key-store folder.")
@click.option("--service", help="The fulfillment service URL.")
@click.option("--token", help="The station token (better: $STATION_RUN_TOKEN).")
@click.option("--device", help="The device SPEC the station uses: decides whether USB or PC/SC checks count.")
@click.option("--trust", "trust_dir", type=click.Path(file_okay=False, path_type=Path), help="The trust store folder.")
@click.option("--attached-keys", is_flag=True,
              help="Open each attached key to check its model has a trust anchor (not while station run programs keys).")
@click.option("--user", help="Check hidraw access for this account (the service account) instead of yours.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
@click.pass_context
@fail_cleanly
def doctor(ctx: click.Context, config_file: Path | None, keys_dir: Path | None, service: str | None,
           token: str | None, device: str | None, trust_dir: Path | None, attached_keys: bool, user: str | None,
           as_json: bool) -> None:
    """Check this machine for everything a station needs; exit 0 only if every check passes."""
    from station.console import out_console
    from station.doctor import as_json as doctor_json, diagnose, healthy, list_attached_keys, print_table

    checks = diagnose(given_options(ctx, "keys_dir", "service", "token", "device", "trust_dir"), config_file, user=user,
                      list_keys=list_attached_keys if attached_keys else None)
    if as_json:
        _echo_json(doctor_json(checks))
    else:
        print_table(checks, out_console)
    sys.exit(0 if healthy(checks) else 1)


# ---------------------------------------------------------------- whole system (demo, bench)
@cli.command()
@click.option("--keys", "keys", type=click.IntRange(1, 200), default=4, show_default=True, help="How many keys are ordered.")
@click.option("--transport", type=click.Choice(["direct", "hid", "pcsc"]), default="direct", show_default=True,
              help="How the station reaches each key: in-process, python-fido2 CtapHidDevice, or the real pcscd.")
@click.option("--profile", default="yubikey-5-nfc-5.7", show_default=True, help="The virtual key model (station virtual profiles).")
@click.option("--slots", type=click.IntRange(1, 8), default=1, show_default=True, help="Keys the station programs at once.")
@click.option("--show-pins", is_flag=True, help="Show the PINs that would be mailed (never shown otherwise).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Keep what the run wrote (database, key store, journal, keys) in this empty folder.")
@click.option("--okta-url", envvar="STATION_OKTA_URL", help="An Okta org (or `station standin okta`) instead of the demo's own stand-in.")
@click.option("--graph-url", envvar="STATION_GRAPH_URL", help="Microsoft Graph (or `station standin graph`).")
@click.option("--login-url", envvar="STATION_GRAPH_LOGIN_URL", help="The Microsoft identity platform's token host.")
@click.option("--pingone-url", envvar="STATION_PINGONE_URL", help="PingOne's API (or `station standin pingone`).")
@click.option("--pingone-auth-url", envvar="STATION_PINGONE_AUTH_URL", help="PingOne's auth service (token host).")
@click.option("--customer-config", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The customer TOML ([okta], [graph], [pingone]) with the credentials for those servers.")
@click.option("--directory", type=click.Choice(["entra", "pingone"]),
              help="The directory-connected model instead: the service enrolls a group of the customer's "
                   "(stand-in) Entra ID or PingOne itself, registers the keys there, the users sign in.")
@fail_cleanly
def demo(keys: int, transport: str, profile: str, slots: int, show_pins: bool, keep: Path | None,
         okta_url: str | None, graph_url: str | None, login_url: str | None, pingone_url: str | None,
         pingone_auth_url: str | None, customer_config: Path | None, directory: str | None) -> None:
    """The full pre-registration round trip on this machine, with virtual keys (exit 0 only if
    every key was verified and used to sign in)."""
    from station.console import run_demo_live
    from station.demo import DemoOptions

    ok = run_demo_live(DemoOptions(keys=keys, transport=transport, profile=profile, slots=slots, workdir=keep,
                                   okta_url=okta_url, graph_url=graph_url, login_url=login_url,
                                   pingone_url=pingone_url, pingone_auth_url=pingone_auth_url,
                                   customer_config=customer_config, directory=directory),
                       show_pins=show_pins)
    sys.exit(0 if ok else 1)


from station.cli_idp import standin  # noqa: E402  (`station standin`: the identity providers' stand-ins)

cli.add_command(standin)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The figures as one JSON document.")
@click.option("--db", "db_url", help="A bench-only postgresql:// database (default: temporary SQLite, and a "
              "private PostgreSQL cluster when PostgreSQL is installed).")
@click.option("--quick", is_flag=True, help="Short measurements (seconds, not minutes): a smoke run.")
@fail_cleanly
def bench(as_json: bool, db_url: str | None, quick: bool) -> None:
    """The performance figures of the station, each next to its target."""
    from station.bench import run_bench
    from station.console import err_console, print_bench

    results = run_bench(db_url=db_url, quick=quick, on_progress=lambda text: err_console.print(f"[dim]bench: {text}[/]"))
    if as_json:
        click.echo(json.dumps(results, indent=2, default=str))
    else:
        print_bench(results)


# ---------------------------------------------------------------- trust (the counterfeit guard's store)
from station.cli_trust import trust as _trust_group  # noqa: E402

cli.add_command(_trust_group)


# ---------------------------------------------------------------- directories (issue 15: provisioning on behalf)
from station.cli_directories import register as _register_directories  # noqa: E402

_register_directories(cli, _DB_OPTION, fail_cleanly)


def _warn_roots_deprecated(roots: Path | None) -> None:
    if roots is not None:
        click.echo(f"warning: --roots is deprecated: the roots in {roots} vouch only for models added with "
                   "`station trust add-model`; move them into the trust store (station trust add-root PEM --aaguid UUID)",
                   err=True)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was half-written; run the command again", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""`station standin okta|graph|pingone`: a strict stand-in of that provider's public API on
loopback, for the demo (`station demo --okta-url ...`) and for testing other tools.

The stand-in gets the demo's users (and, for PingOne, its FIDO2 policy) and one set of client
credentials. With `--write-config FILE` it writes the customer configuration that reaches it
(table `[okta]`, `[graph]` or `[pingone]`, merged into FILE) and the secret into a file of its
own beside it (mode 0600): nothing secret is printed.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import click

from station.errors import UsageError


def _toml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_customer_config(path: Path, table: str, values: dict, secret_name: str | None, secret: str | None) -> None:
    """Merge `[table]` into the customer TOML at `path` (other tables kept); the secret goes to
    `<path stem>-<table>.secret` (0600), named by `<secret_name>_file`."""
    document = {}
    if path.exists():
        try:
            document = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{path}: cannot merge into it ({exc})") from None
    body = dict(values)
    if secret_name and secret is not None:
        secret_file = path.with_name(f"{path.stem}-{table}.secret")
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        body[f"{secret_name}_file"] = secret_file.name
    document[table] = body
    lines = []
    for name, items in document.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in items.items())
        lines.append("")
    path.write_text("\n".join(lines), "utf-8")


@click.command("standin")
@click.argument("kind", type=click.Choice(["okta", "graph", "pingone"]))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it loopback).")
@click.option("--port", required=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--users", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many of the demo's users exist in it.")
@click.option("--trust-test-ca", is_flag=True, help="Accept the virtual keys' TEST CA as an attestation root "
              "(the vendors' published roots are always accepted).")
@click.option("--write-config", type=click.Path(dir_okay=False, path_type=Path),
              help="Merge the customer configuration that reaches this stand-in into this TOML file.")
@click.option("--throttle-every", type=click.IntRange(1, 1000), help="Answer every N-th API call with 429.")
@click.option("--retry-after", type=click.IntRange(0, 3600), default=1, show_default=True,
              help="The Retry-After seconds of those 429s.")
def standin(kind: str, host: str, port: int, users: int, trust_test_ca: bool, write_config: Path | None,
            throttle_every: int | None, retry_after: int) -> None:
    """Run a strict stand-in of Okta, Microsoft Graph or PingOne until interrupted."""
    from importlib import resources

    import uvicorn

    from station.standins import DEMO_PINGONE_POLICY, OKTA_DOMAIN, PINGONE_RP_ID, make, seed

    data = resources.files("station") / "data"
    roots = [p.read_bytes() for p in (data / "roots").iterdir() if p.name.endswith(".pem")]
    if trust_test_ca:
        roots.append((data / "testca" / "ca.pem").read_bytes())
    state, app = make(kind, attestation_roots=roots)
    seed(kind, state, users)
    if throttle_every:
        state.throttle.every(throttle_every, retry_after)
    url = f"http://{host}:{port}"
    if kind == "okta":
        values, secret_name, secret = {"url": url, "rp_ids": [OKTA_DOMAIN]}, "api_token", state.new_api_token()
    else:
        client_id, secret = state.add_client()
        secret_name = "client_secret"
        if kind == "graph":
            values = {"url": url, "login_url": url, "tenant_id": state.tenant_id, "client_id": client_id}
        else:
            values = {"url": url, "auth_url": url, "environment_id": state.environment_id, "client_id": client_id,
                      "policy_id": DEMO_PINGONE_POLICY, "rp_id": PINGONE_RP_ID, "rp_name": "Example Org"}
    if write_config is not None:
        write_customer_config(write_config, kind, values, secret_name, secret)
        click.echo(f"customer configuration [{kind}] written to {write_config} (secret in a 0600 file beside it)", err=True)
    click.echo(f"{kind} stand-in on {url} ({users} demo users); Ctrl-C stops it", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)

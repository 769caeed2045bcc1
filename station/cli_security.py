"""`station tenants add|list` and `station tokens list|revoke` (issue 17): tenants as rows,
tokens bound to a tenant, with expiry, listable and revocable. Registered from station/cli.py."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click


def register(cli: click.Group, tokens: click.Group, db_option, fail_cleanly) -> None:
    """Add the `tenants` group to `cli` and `list`/`revoke` to the `tokens` group."""

    @cli.group()
    def tenants() -> None:
        """The customers of the fulfillment service: a shipment belongs to a tenant."""

    @tenants.command("add")
    @db_option
    @click.argument("name")
    @fail_cleanly
    def tenants_add(db_url: str | None, name: str) -> None:
        """Add a tenant; prints its id (give it to `station tokens create --tenant ID`)."""
        with _store(db_url) as store:
            tenant = store.create_tenant(name)
        click.echo(f"{tenant.id}\t{tenant.name}")

    @tenants.command("list")
    @db_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON document.")
    @fail_cleanly
    def tenants_list(db_url: str | None, as_json: bool) -> None:
        """Every tenant: id, name, created."""
        with _store(db_url) as store:
            rows = [{"id": t.id, "name": t.name, "created": _when(t.created)} for t in store.list_tenants()]
        _print(rows, as_json, ("id", "name", "created"))

    @tokens.command("list")
    @db_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON document.")
    @fail_cleanly
    def tokens_list(db_url: str | None, as_json: bool) -> None:
        """Every token: id, role, name, tenant, created, expires, status (never the token: only
        its hash is stored)."""
        import time

        now = time.time()
        with _store(db_url) as store:
            rows = [{"id": t.id, "role": t.role.value, "name": t.name,
                     "tenant": f"{t.tenant_id} {t.tenant}" if t.tenant_id is not None else "(none)",
                     "created": _when(t.created), "expires": _when(t.expires) if t.expires else "never",
                     "status": t.status(now)} for t in store.list_tokens()]
        _print(rows, as_json, ("id", "role", "name", "tenant", "created", "expires", "status"))

    @tokens.command("revoke")
    @db_option
    @click.argument("token_id", type=int)
    @fail_cleanly
    def tokens_revoke(db_url: str | None, token_id: int) -> None:
        """Revoke token ID (from `station tokens list`): it authenticates nothing from now on."""
        with _store(db_url) as store:
            store.revoke_token(token_id)
        click.echo(f"revoked token {token_id}")


class _store:
    def __init__(self, db_url: str | None) -> None:
        from station.fulfillment.store import Store

        self.store = Store.open(db_url)

    def __enter__(self):
        return self.store

    def __exit__(self, *exc) -> None:
        self.store.close()


def _when(at: float | None) -> str:
    return "" if at is None else datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def _print(rows: list[dict], as_json: bool, columns: tuple[str, ...]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("\t".join(columns))
    for row in rows:
        click.echo("\t".join(str(row[c]) for c in columns))

"""Tenants and tokens (issue 17, item 4): tenants are rows, a customer token acts for one tenant
(never for a free-text name), tokens expire, are listed and revoked, and only their hashes are
stored. Without the migrations framework on main, the schema change is additive (`_upgrade_tokens`)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from station.cli import cli
from station.customer.orders import seal_item, shipment_body
from station.errors import UsageError
from station.fulfillment.api import create_app
from station.fulfillment.door import DoorLimits
from station.fulfillment.store import Role, Store

from .conftest import ROOT

OPTIONS = json.loads((ROOT / "fixtures" / "options" / "okta.json").read_text())


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/tenancy.db"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_tenants_are_rows_with_unique_names(db):
    first = run("tenants", "add", "--db", db, "acme")
    assert first.exit_code == 0 and first.output.split() == ["1", "acme"]
    again = run("tenants", "add", "--db", db, "acme")
    assert again.exit_code == 1 and again.output.startswith("usage: ") and "exists already" in again.output
    assert run("tenants", "add", "--db", db, "globex").exit_code == 0
    listed = json.loads(run("tenants", "list", "--db", db, "--json").output)
    assert [(t["id"], t["name"]) for t in listed] == [(1, "acme"), (2, "globex")]


def test_a_customer_token_needs_an_existing_tenant(db):
    missing = run("tokens", "create", "--db", db, "--role", "customer", "--name", "acme")
    assert missing.exit_code == 1 and "--tenant" in missing.output
    unknown = run("tokens", "create", "--db", db, "--role", "customer", "--tenant", "7")
    assert unknown.exit_code == 1 and "no tenant 7" in unknown.output


def _client(store: Store, keystore, **limits) -> TestClient:
    return TestClient(create_app(store, keystore, purge_interval=None, limits=DoorLimits(**limits)))


@pytest.fixture
def service(tmp_path, db):
    from station.protocol.keys import KeyStore

    keystore = KeyStore.init(tmp_path / "keys")
    store = Store.open(db)
    yield store, keystore
    store.close()


def _post(client, token, keystore):
    body = shipment_body([seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])])
    return client.post("/v1/fpr/shipments", json=body, headers={"Authorization": f"Bearer {token}"})


def _get(client, token, shipment_id):
    return client.get(f"/v1/fpr/shipments/{shipment_id}", headers={"Authorization": f"Bearer {token}"})


def test_shipments_belong_to_the_tenant_not_to_a_token_name(service):
    store, keystore = service
    acme, globex = store.create_tenant("acme"), store.create_tenant("globex")
    first = store.create_token(Role.CUSTOMER, "integration", tenant_id=acme.id)
    second = store.create_token(Role.CUSTOMER, "other-integration", tenant_id=acme.id)
    same_label = store.create_token(Role.CUSTOMER, "integration", tenant_id=globex.id)
    legacy_named_acme = store.create_token(Role.CUSTOMER, "acme")  # a pre-tenant token
    client = _client(store, keystore)
    created = _post(client, first, keystore)
    assert created.status_code == 201, created.text
    shipment_id = created.json()["shipment_id"]
    assert _get(client, second, shipment_id).status_code == 200  # one tenant, two tokens
    assert _get(client, same_label, shipment_id).status_code == 404  # same label, another tenant
    assert _get(client, legacy_named_acme, shipment_id).status_code == 404  # a name is no tenant


def test_an_expired_or_revoked_token_authenticates_nothing(service):
    store, keystore = service
    tenant = store.create_tenant("acme")
    expired = store.create_token(Role.CUSTOMER, "old", tenant_id=tenant.id, expires=time.time() - 1)
    valid = store.create_token(Role.CUSTOMER, "new", tenant_id=tenant.id, expires=time.time() + 3600)
    station = store.create_token(Role.STATION, "station-1")
    client = _client(store, keystore)
    assert _post(client, expired, keystore).status_code == 401
    assert _post(client, valid, keystore).status_code == 201
    station_id = next(t.id for t in store.list_tokens() if t.name == "station-1")
    store.revoke_token(station_id)
    answer = client.post("/v1/station/claim", headers={"Authorization": f"Bearer {station}"})
    assert answer.status_code == 401
    with pytest.raises(UsageError, match="no token 999"):
        store.revoke_token(999)


def test_tokens_list_and_revoke_on_the_command_line(db):
    run("tenants", "add", "--db", db, "acme")
    token = run("tokens", "create", "--db", db, "--role", "customer", "--tenant", "1", "--expires", "30").output.strip()
    run("tokens", "create", "--db", db, "--role", "station", "--name", "station-1", "--expires", "0")
    listed = json.loads(run("tokens", "list", "--db", db, "--json").output)
    assert [(t["id"], t["role"], t["name"], t["tenant"], t["status"]) for t in listed] == [
        (1, "customer", "acme", "1 acme", "active"), (2, "station", "station-1", "(none)", "active")]
    assert listed[1]["expires"] == "never" and listed[0]["expires"].startswith("20")
    assert token not in run("tokens", "list", "--db", db).output
    assert run("tokens", "revoke", "--db", db, "1").exit_code == 0
    assert json.loads(run("tokens", "list", "--db", db, "--json").output)[0]["status"] == "revoked"
    store = Store.open(db)
    try:
        assert store.authenticate(token) is None
    finally:
        store.close()


def test_only_token_hashes_are_stored(db, tmp_path):
    store = Store.open(db)
    tenant = store.create_tenant("acme")
    token = store.create_token(Role.CUSTOMER, "acme", tenant_id=tenant.id)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("tenancy.db*"))
    assert token.encode() not in raw
    assert hashlib.sha256(token.encode()).hexdigest().encode() in raw


def test_a_database_from_before_tenants_is_upgraded_and_its_tokens_keep_working(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    # the schema main had before tenants and migrations (tests/fulfillment/schemas)
    old.executescript((Path(__file__).resolve().parent.parent / "fulfillment" / "schemas" / "v1_sqlite.sql").read_text())
    old.execute("INSERT INTO tokens (token_hash, role, name, created) VALUES (?, 'customer', 'acme', 0)",
                (hashlib.sha256(b"old-token").hexdigest(),))
    old.commit()
    old.close()
    store = Store.open(f"sqlite:///{path}")
    try:
        principal = store.authenticate("old-token")
        assert principal is not None and principal.tenant_id is None and principal.owner == "acme"
        assert store.create_tenant("acme").id == 1
        (info,) = store.list_tokens()
        assert (info.tenant, info.expires, info.revoked) == (None, None, None)
    finally:
        store.close()
    Store.open(f"sqlite:///{path}").close()  # a second opening changes nothing


def test_two_tokens_of_one_tenant_share_its_quota(service):
    store, keystore = service
    tenant = store.create_tenant("acme")
    first = store.create_token(Role.CUSTOMER, "a", tenant_id=tenant.id)
    second = store.create_token(Role.CUSTOMER, "b", tenant_id=tenant.id)
    client = _client(store, keystore, shipments_per_minute=1)
    assert _post(client, first, keystore).status_code == 201
    assert _post(client, second, keystore).status_code == 429

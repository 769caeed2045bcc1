"""Schema migrations: a database created by the version-1 schema (the DDL main used before
migrations existed, saved in schemas/) opens, is migrated to the current version with its rows
carried over, and ends with exactly the tables and columns of a fresh database — on SQLite and
PostgreSQL. Every step someone adds is covered by the same comparison."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text, update
from sqlalchemy.engine import make_url

from station.errors import UsageError
from station.fulfillment import migrations
from station.fulfillment.migrations import STEPS, applied_steps, latest_version
from station.fulfillment.store import SCHEMA_VERSION, ItemState, Role, ShipmentState, Store, schema_version

SCHEMAS = Path(__file__).parent / "schemas"
T0 = 1_700_000_000.0
ENVELOPE = {
    "delivery_type": 1,
    "recipient": {"recipient_company": "Acme", "recipient_email": "ada@acme.example",
                  "recipient_firstname": "Ada", "recipient_lastname": "Lovelace",
                  "recipient_telephone": "+44 20 7946 0000"},
    "mailing_address": {"street_line1": "1 Main St", "street_line2": "", "city": "London",
                        "region": "", "postal_code": "N1 9GU", "country_code_2": "GB"},
}
SHIPMENT = "5b0e4a4e-8f5c-4d57-9d36-4f6b9d2f6a01"


def _v1_rows() -> list[str]:
    """Rows a version-1 service wrote: a customer token, a shipment with a fulfilled item, its
    digests and audit trail."""
    result = json.dumps({"serial_number": "12345678", "firmware_version": "5.7.1",
                         "fido_pin_response": "a.b.c.d.e", "fido_credential_responses": ["f.g.h.i.j"]})
    descriptor = json.dumps({"product_id": 29, "inventory_product_id": 18, "product_quantity": 1,
                             "customization_id": "CUST01"})
    q = lambda v: "'" + v.replace("'", "''") + "'"  # noqa: E731 - quoting fixed test strings
    return [
        f"INSERT INTO tokens (token_hash, role, name, created) VALUES ({q('0' * 64)}, 'customer', 'acme', {T0})",
        f"INSERT INTO tokens (token_hash, role, name, created) VALUES ({q('1' * 64)}, 'station', 'st-1', {T0})",
        f"INSERT INTO shipments (id, owner, envelope, created) VALUES ({q(SHIPMENT)}, 'acme', {q(json.dumps(ENVELOPE))}, {T0})",
        "INSERT INTO items (shipment_id, position, descriptor, pin_request, credential_requests, state, "
        f"lease_owner, result, finished_at) VALUES ({q(SHIPMENT)}, 0, {q(descriptor)}, 'p.q.r.s.t', "
        f"{q(json.dumps(['u.v.w.x.y']))}, 'fulfilled', 2, {q(result)}, {T0 + 5})",
        f"INSERT INTO request_digests (digest, item_id, received) VALUES ({q('d' * 64)}, 1, {T0})",
        "INSERT INTO audit (at, event, item_id, shipment_id, token_id, station) "
        f"VALUES ({T0 + 1}, 'claimed', 1, {q(SHIPMENT)}, 2, 'st-1')",
        "INSERT INTO audit (at, event, item_id, shipment_id, token_id, station, serial_number, outcome) "
        f"VALUES ({T0 + 5}, 'fulfilled', 1, {q(SHIPMENT)}, 2, 'st-1', '12345678', 'fulfilled')",
    ]


def _statements(backend: str) -> list[str]:
    ddl = (SCHEMAS / f"v1_{backend}.sql").read_text()
    lines = [line for line in ddl.splitlines() if not line.startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()] + _v1_rows()


@pytest.fixture
def v1_url(db_url) -> str:
    """A database made by the version-1 DDL, holding rows, on the backend of `db_url`."""
    url = db_url
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        with sqlite3.connect(make_url(url).database) as conn:
            for statement in _statements("sqlite"):
                conn.execute(statement)
    else:
        engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
        with engine.begin() as conn:
            for statement in _statements("postgresql"):
                conn.exec_driver_sql(statement)
        engine.dispose()
    return url


def _shape(store: Store) -> dict[str, set[str]]:
    insp = inspect(store.engine)
    return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()}


def test_a_version_1_database_is_migrated_with_its_rows(v1_url, tmp_path, request):
    store = Store.open(v1_url)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(select(schema_version.c.version)).scalars().all() == [SCHEMA_VERSION]
            assert applied_steps(conn) == [s.name for s in STEPS]
        # the rows are still there and speak the new API
        shipment = store.get_shipment("acme", SHIPMENT)
        assert shipment.items[0].state is ItemState.FULFILLED
        assert shipment.state is ShipmentState.PROGRAMMED
        assert shipment.items[0].result["serial_number"] == "12345678"
        assert [r.event.value for r in store.audit_trail()] == ["claimed", "fulfilled"]
        assert store.authenticate("nobody") is None
        page = store.list_shipments("acme", q="lovelace")
        assert [s.id for s in page.shipments] == [SHIPMENT] and page.total == 1
        # the new columns work: the shipment ships
        store.set_state(SHIPMENT, ShipmentState.SHIPPED, tracking_number="1Z999", actor=None)
        assert store.get_shipment("acme", SHIPMENT).tracking_number == "1Z999"
        # the migrated shape is exactly a fresh database's
        fresh_url = (f"sqlite:///{tmp_path}/fresh.db" if v1_url.startswith("sqlite")
                     else request.getfixturevalue("pg_cluster").create_database(f"t_{uuid.uuid4().hex[:16]}"))
        fresh = Store.open(fresh_url)
        try:
            assert _shape(store) == _shape(fresh)
        finally:
            fresh.close()
    finally:
        store.close()
    reopened = Store.open(v1_url)  # a second start has nothing left to do
    with reopened.engine.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalars().all() == [SCHEMA_VERSION]
    reopened.close()


def test_a_fresh_database_records_every_step(store):
    with store.engine.connect() as conn:
        assert applied_steps(conn) == [s.name for s in STEPS]
        assert conn.execute(select(schema_version.c.version)).scalar() == latest_version() == 1 + len(STEPS)


def test_a_step_this_station_does_not_know_is_refused(db_url, store):
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO schema_migrations (name, applied) VALUES ('future: a step', 0)"))
    with pytest.raises(UsageError, match="future: a step"):
        Store.open(db_url)


def test_a_failing_step_leaves_the_old_database_untouched(v1_url, monkeypatch):
    def broken(conn):
        raise RuntimeError("step failed")

    monkeypatch.setattr(migrations, "STEPS", [*STEPS, migrations.Step("test: broken", broken)])
    with pytest.raises(RuntimeError, match="step failed"):
        Store.open(v1_url)
    engine = create_engine(make_url(v1_url).set(drivername="postgresql+psycopg")
                           if v1_url.startswith("postgresql") else v1_url)
    try:
        with engine.connect() as conn:  # one transaction: the earlier steps were rolled back too
            assert conn.execute(select(schema_version.c.version)).scalar() == 1
            assert "state_override" not in {c["name"] for c in inspect(conn).get_columns("shipments")}
    finally:
        engine.dispose()


def test_store_tokens_survive_migration(v1_url):
    store = Store.open(v1_url)
    try:
        token = store.create_token(Role.CUSTOMER, "acme")
        assert store.authenticate(token).name == "acme"
        with store.engine.begin() as conn:
            conn.execute(update(schema_version).values(version=SCHEMA_VERSION + 1))
    finally:
        store.close()
    with pytest.raises(UsageError, match="newer than this station"):
        Store.open(v1_url)

"""A factory: 8 station processes on virtual keys against one service on PostgreSQL. Every item
is claimed once, fulfilled once, on its own key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from shipments import check_fulfilled, post_each

from station.customer.orders import seal_item
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.embedded import EmbeddedService
from station.fulfillment.store import AuditEvent, Role, Store

OPTIONS = json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "options" / "okta.json").read_text())
STATIONS = 8
ITEMS = 24


@pytest.mark.postgres
def test_eight_station_processes_on_postgresql_claim_every_item_once(pg_cluster, keystore, tmp_path):
    store = Store.open(pg_cluster.create_database(f"fleet_{uuid.uuid4().hex[:8]}"))
    try:
        with EmbeddedService(store, keystore, purge_interval=None) as service:
            customer = FulfillmentClient(service.url, store.create_token(Role.CUSTOMER, "acme"))
            jwks = customer.jwks("transport")
            items = [seal_item(transport_jwks=jwks, options=[OPTIONS]) for _ in range(ITEMS)]
            shipment_id = post_each(customer, items)
            env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
            stations = [
                subprocess.Popen(
                    [sys.executable, "-m", "station.cli", "run", "--service", service.url,
                     "--token", store.create_token(Role.STATION, f"station-{n}"),
                     "--device", f"virtual:{tmp_path}/keys-{n}/",
                     "--profile", "yubikey-5-nfc-5.7", "--keys", str(keystore.path),
                     "--journal", str(tmp_path / f"journal-{n}"), "--until-empty", "--json"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for n in range(STATIONS)
            ]
            outputs = [p.communicate(timeout=180) for p in stations]
            assert [p.returncode for p in stations] == [0] * STATIONS, [err for _, err in outputs]

            fulfilled_by = [
                json.loads(line)["item"] for out, _ in outputs for line in out.splitlines()
                if line.startswith("{") and json.loads(line)["kind"] == "fulfilled"
            ]
            assert sorted(fulfilled_by) == sorted(set(fulfilled_by)) and len(fulfilled_by) == ITEMS
            assert sum(1 for out, _ in outputs if '"fulfilled"' in out) > 1  # the work was shared
            claims = [r.item_id for r in store.audit_trail() if r.event == AuditEvent.CLAIMED]
            assert sorted(claims) == sorted(set(claims)) and len(claims) == ITEMS  # claimed once each

            check_fulfilled(customer, shipment_id, items)  # state 102, responses open, one key per item
            customer.close()
    finally:
        store.close()

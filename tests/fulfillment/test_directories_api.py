"""The directory API over real HTTP (issue 15): under the customer's token, tenant-isolated like
shipments, PROTOCOL-style refusals with the directory's words, never a secret in an answer or in
the service's log, delete only with the confirmation text."""

from __future__ import annotations

import logging
import types

import httpx
import pytest

from station.fulfillment.embedded import EmbeddedService
from station.fulfillment.store import Role, Store
from station.standins import running
from tests.fulfillment.directories_helpers import attestation_roots, entra_body, pin_delivery_key

YUBIKEY_5 = "a25342c0-3cdc-4414-8e46-f4807fca511c"


@pytest.fixture
def entra():
    with running("graph", attestation_roots=attestation_roots()) as (standin, url):
        users = [standin.add_user(f"{n.lower()}@contoso.com", f"{n} Example") for n in ("Ada", "Grace")]
        standin.add_group("Key pilots", [u.id for u in users])
        client_id, secret = standin.add_client()
        yield types.SimpleNamespace(standin=standin, url=url, users=users, client_id=client_id, secret=secret)


@pytest.fixture
def service(tmp_path, keystore):
    store = Store.open(f"sqlite:///{tmp_path}/service.db")
    with EmbeddedService(store, keystore, purge_interval=None,
                         directory_key=str(tmp_path / "state" / "directory-secrets.key")) as service:
        acme, other = store.create_tenant("Contoso"), store.create_tenant("Fabrikam")
        service.tokens = {"contoso": store.create_token(Role.CUSTOMER, "contoso", tenant_id=acme.id),
                          "fabrikam": store.create_token(Role.CUSTOMER, "fabrikam", tenant_id=other.id),
                          "station": store.create_token(Role.STATION, "st-1")}
        yield service
    store.close()


def _api(service, who: str = "contoso") -> httpx.Client:
    return httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.tokens[who]}"}, timeout=60)


def test_add_list_get_never_answer_the_secret_and_other_tenants_get_404(service, entra, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    body = entra_body(entra.standin, entra.url, entra.client_id, entra.secret, pin_delivery_key(), aaguids=[YUBIKEY_5])
    with _api(service) as api, _api(service, "fabrikam") as other:
        added = api.post("/v1/directories", json=body)
        assert added.status_code == 201, added.text
        assert added.json()["tenant_id"] == entra.standin.tenant_id and "client_secret" not in added.json()
        answers = [added.text, api.get("/v1/directories").text, api.get("/v1/directories/Contoso").text,
                   api.post("/v1/directories/Contoso/test").text, api.get("/v1/directories/Contoso/audit").text]
        assert api.post("/v1/directories/Contoso/test").json()["ok"] is True
        for path, method in (("/v1/directories/Contoso", "GET"), ("/v1/directories/Contoso/test", "POST"),
                             ("/v1/directories/Contoso/audit", "GET"), ("/v1/directories/Contoso", "PATCH"),
                             ("/v1/directories/Contoso/enrollments", "POST")):
            json_body = {"client_secret": "x"} if method == "PATCH" else {"users": ["ada@contoso.com"]}
            refused = other.request(method, path, json=json_body if method != "GET" else None)
            assert refused.status_code == 404 and refused.json()["error_code"] == "not_found", (method, path)
        assert other.get("/v1/directories").json() == {"directories": []}
        station = httpx.get(f"{service.url}/v1/directories",
                            headers={"Authorization": f"Bearer {service.tokens['station']}"})
        assert station.status_code == 403
    for text in answers:
        assert entra.secret not in text
    assert entra.secret not in caplog.text
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("service.db*"))
    assert entra.secret.encode() not in raw


def test_a_wrong_secret_or_a_missing_permission_is_422_with_the_directorys_words(service, entra):
    with _api(service) as api:
        wrong = api.post("/v1/directories", json=entra_body(entra.standin, entra.url, entra.client_id, "nope",
                                                            pin_delivery_key()))
        assert wrong.status_code == 422
        body = wrong.json()
        assert set(body) == {"error_code", "error_message", "error_data"}
        assert body["error_code"] == "directory_credentials_refused" and "AADSTS" in body["error_message"]
        client_id, secret = entra.standin.add_client(roles=[])
        forbidden = api.post("/v1/directories", json=entra_body(entra.standin, entra.url, client_id, secret,
                                                                pin_delivery_key()))
        assert forbidden.status_code == 422 and forbidden.json()["error_code"] == "directory_permission_missing"
        assert forbidden.json()["error_data"]["http_status"] == 403
        assert forbidden.json()["error_data"]["correlation_id"]
        assert "Grant admin consent" in forbidden.json()["error_data"]["what_to_do"]  # where to fix it
        assert api.get("/v1/directories").json() == {"directories": []}  # nothing stored


def test_invalid_bodies_are_400_never_fastapis_422(service, entra):
    with _api(service) as api:
        key = pin_delivery_key()
        private = entra_body(entra.standin, entra.url, entra.client_id, entra.secret, key)
        private["pin_delivery_key"] = key.export_private(as_dict=True)
        answer = api.post("/v1/directories", json=private)
        assert answer.status_code == 400 and "private" in answer.json()["error_message"]
        assert "d" not in str(answer.json().get("error_data") or "")
        mixed = entra_body(entra.standin, entra.url, entra.client_id, entra.secret, key, environment_id="env")
        assert api.post("/v1/directories", json=mixed).status_code == 400
        api.post("/v1/directories", json=entra_body(entra.standin, entra.url, entra.client_id, entra.secret, key))
        partial = api.patch("/v1/directories/Contoso", json={"client_id": "another-app"})
        assert partial.status_code == 400 and "client_secret" in partial.json()["error_message"]
        assert api.get("/v1/directories/Contoso").json()["client_id"] == entra.client_id


def test_delete_needs_the_confirmation_text(service, entra):
    with _api(service) as api:
        api.post("/v1/directories", json=entra_body(entra.standin, entra.url, entra.client_id, entra.secret,
                                                    pin_delivery_key()))
        for body in (None, {}, {"confirm": "yes"}, {"confirm": "PERMANENTLY DELETE"}):
            refused = api.request("DELETE", "/v1/directories/Contoso", json=body)
            assert refused.status_code == 400 and refused.json()["error_code"] == "confirmation_required"
            assert "permanently delete" in refused.json()["error_message"]
            assert api.get("/v1/directories/Contoso").status_code == 200
        assert api.request("DELETE", "/v1/directories/Contoso", json={"confirm": "permanently delete"}).status_code == 204
        assert api.get("/v1/directories/Contoso").status_code == 404


def test_preflight_and_enroll_over_http(service, entra):
    with _api(service) as api:
        api.post("/v1/directories", json=entra_body(entra.standin, entra.url, entra.client_id, entra.secret,
                                                    pin_delivery_key(), aaguids=[YUBIKEY_5]))
        assert api.post("/v1/directories/Contoso/preflight", json={"group": "Key pilots"}).json()["ok"] is True
        entra.standin.set_fido2_policy(state="disabled")
        blocked = api.post("/v1/directories/Contoso/enrollments", json={"group": "Key pilots"})
        assert blocked.status_code == 422 and blocked.json()["error_code"] == "preflight_blocked"
        assert any(f["level"] == "block" for f in blocked.json()["error_data"])
        assert api.get("/v1/fpr/shipments").json()["total"] == 0
        entra.standin.set_fido2_policy(state="enabled")
        enrolled = api.post("/v1/directories/Contoso/enrollments", json={"group": "Key pilots"})
        assert enrolled.status_code == 200, enrolled.text
        assert [u["outcome"] for u in enrolled.json()["users"]] == ["enrolled", "enrolled"]
        shipments = api.get("/v1/fpr/shipments").json()
        assert shipments["total"] == 2 and {s["shipment_state"]["shipment_state_id"] for s in shipments["shipments"]} == {100}
        assert len(api.get("/v1/directories/Contoso/enrollments").json()["enrollments"]) == 2
        actions = [a["action"] for a in api.get("/v1/directories/Contoso/audit").json()["audit"]]
        assert actions.count("options") == 2


def test_a_refused_registration_shows_in_get_shipment_and_on_the_operators_failed_items(
        service, entra, keystore, tmp_path, monkeypatch):
    import time

    import station.standins.graph as graph_standin
    from station.fulfillment.directories.sealing import open_box
    from station.fulfillment.directories.service import Directories
    from station.protocol.keys import PublishedKeys
    from tests.fulfillment.directories_helpers import Station

    with _api(service) as api:
        api.post("/v1/directories", json=entra_body(entra.standin, entra.url, entra.client_id, entra.secret,
                                                    pin_delivery_key(), aaguids=[YUBIKEY_5],
                                                    challenge_timeout_minutes=5))
        shipment_id = api.post("/v1/directories/Contoso/enrollments",
                               json={"users": ["ada@contoso.com"]}).json()["users"][0]["shipment_id"]
        Station(service.store, keystore, tmp_path).program_all()
        monkeypatch.setattr(graph_standin, "time", types.SimpleNamespace(
            time=lambda: time.time() + 3600, monotonic=time.monotonic, sleep=time.sleep))
        dirs = Directories(service.store, open_box(tmp_path / "state" / "directory-secrets.key"),
                           PublishedKeys.of_store(keystore.path))
        assert len(dirs.register_pending().refused) == 1
        shipment = api.get(f"/v1/fpr/shipments/{shipment_id}").json()
        assert shipment["shipment_state"]["shipment_state_id"] == 8
        error = shipment["shipment_items"][0]["product_data"][0]
        assert error["error_code"] == "directory_refused" and "expired" in error["error_message"]
        enrollment = api.get("/v1/directories/Contoso/enrollments").json()["enrollments"][0]
        assert enrollment["state"] == "refused" and "expired" in enrollment["message"]
    operator = service.store.create_token(Role.OPERATOR, "jane")
    failed = httpx.get(f"{service.url}/v1/operator/items/failed", headers={"Authorization": f"Bearer {operator}"})
    assert failed.status_code == 200
    row = next(f for f in failed.json() if f["shipment_id"] == shipment_id)
    assert row["error_code"] == "directory_refused" and "do not ship" in row["what_to_do"]


def test_enrollment_shipments_count_against_the_tenants_quota(tmp_path, keystore, entra):
    from station.fulfillment.door import DoorLimits

    store = Store.open(f"sqlite:///{tmp_path}/service.db")
    try:
        with EmbeddedService(store, keystore, purge_interval=None, limits=DoorLimits(shipments_per_minute=1),
                             directory_key=str(tmp_path / "k.key")) as service:
            tenant = store.create_tenant("Contoso")
            service.tokens = {"contoso": store.create_token(Role.CUSTOMER, "contoso", tenant_id=tenant.id)}
            with _api(service) as api:
                api.post("/v1/directories", json=entra_body(entra.standin, entra.url, entra.client_id, entra.secret,
                                                            pin_delivery_key(), aaguids=[YUBIKEY_5]))
                outcomes = api.post("/v1/directories/Contoso/enrollments", json={"group": "Key pilots"}).json()["users"]
                assert [o["outcome"] for o in outcomes] == ["enrolled", "failed"]
                assert "quota" in outcomes[1]["message"]
                assert api.get("/v1/fpr/shipments").json()["total"] == 1
    finally:
        store.close()

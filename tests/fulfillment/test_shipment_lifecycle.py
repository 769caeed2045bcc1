"""PROTOCOL.md §4 as amended, over a real uvicorn: one key per shipment, YubiEnterprise's field
limits, listing, PATCH and DELETE until a station takes the item, the states an operator sets,
and the operator API (which never shows a JWE)."""

from __future__ import annotations

import json

import httpx
import pytest

from station.fulfillment.client import FulfillmentClient
from station.fulfillment.store import Role

PRODUCT_DATA = {"serial_number": "23456789", "firmware_version": "5.7.1",
                "fido_pin_response": "p.i.n.j.we", "fido_credential_responses": ["c.r.e.d.s"]}


class Api:
    """Raw HTTP to the service with one token per role."""

    def __init__(self, service) -> None:
        self.url = service.url
        self.store = service.store
        self.customer = service.token(Role.CUSTOMER, "acme")
        self.other = service.token(Role.CUSTOMER, "globex")
        self.station = service.token(Role.STATION, "station-1")
        self.operator = service.token(Role.OPERATOR, "ops")

    def __call__(self, method: str, path: str, token: str, **kwargs) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {token}"},
                             timeout=10, **kwargs)

    def post(self, body: dict, token: str | None = None) -> str:
        response = self("POST", "/v1/fpr/shipments", token or self.customer, json=body)
        assert response.status_code == 201, response.text
        return response.json()["shipment_id"]

    def program(self, shipment_id: str) -> int:
        """A station claims the next item (it must be this shipment's) and fulfills it."""
        with FulfillmentClient(self.url, self.station) as station:
            claimed = station.claim()
            assert claimed.shipment_id == shipment_id
            station.submit(claimed.item_id, product_data=PRODUCT_DATA)
            return claimed.item_id


@pytest.fixture
def api(service) -> Api:
    return Api(service)


def refused(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_message", "error_data"} and body["error_code"] == code
    return body


def named_fields(body: dict) -> set[str]:
    return {str(part) for entry in body["error_data"] for part in entry["loc"]}


# -- the door ------------------------------------------------------------------------------


def test_exactly_one_item_of_quantity_one(api, shipment_body):
    refused(api("POST", "/v1/fpr/shipments", api.customer, json=shipment_body(items=2)), 400, "invalid_request")
    for quantity in (1.0, True, "1", 2, 0):
        body = shipment_body()
        body["shipment_items"][0]["product_quantity"] = quantity
        error = refused(api("POST", "/v1/fpr/shipments", api.customer, json=body), 400, "invalid_request")
        assert "product_quantity" in named_fields(error), quantity
    assert api.post(shipment_body())


LIMITS = [
    ("recipient", "recipient_company", 20), ("recipient", "recipient_firstname", 15),
    ("recipient", "recipient_lastname", 20), ("mailing_address", "street_line1", 60),
    ("mailing_address", "street_line2", 60), ("mailing_address", "city", 60),
    ("mailing_address", "region", 50),
]


@pytest.mark.parametrize("part, name, limit", LIMITS)
def test_yubienterprise_field_limits(api, shipment_body, part, name, limit):
    body = shipment_body()
    body[part][name] = "x" * limit
    assert api.post(body)
    body = shipment_body()
    body[part][name] = "x" * (limit + 1)
    error = refused(api("POST", "/v1/fpr/shipments", api.customer, json=body), 400, "invalid_request")
    assert name in named_fields(error)


def test_email_telephone_region_and_delivery_type(api, shipment_body):
    def attempt(change) -> httpx.Response:
        body = shipment_body()
        change(body)
        return api("POST", "/v1/fpr/shipments", api.customer, json=body)

    local = "a" * (80 - len("@acme.example"))
    assert attempt(lambda b: b["recipient"].update(recipient_email=local + "@acme.example")).status_code == 201
    assert "recipient_email" in named_fields(refused(
        attempt(lambda b: b["recipient"].update(recipient_email="a" + local + "@acme.example")), 400, "invalid_request"))
    phone = "+91 " + "9" * 36  # 40 characters
    assert attempt(lambda b: b["recipient"].update(recipient_telephone=phone)).status_code == 201
    long_phone = "+91 " + "9" * 100
    error = refused(attempt(lambda b: b["recipient"].update(recipient_telephone=long_phone)), 400, "invalid_request")
    assert "recipient_telephone" in error["error_message"]
    india = attempt(lambda b: (b["recipient"].update(recipient_telephone=long_phone),
                               b["mailing_address"].update(country_code_2="IN", region="")))
    assert india.status_code == 201
    for country in ("US", "CA"):
        error = refused(attempt(lambda b: b["mailing_address"].update(country_code_2=country, region="")),
                        400, "invalid_request")
        assert "region" in error["error_message"]
        assert attempt(lambda b: b["mailing_address"].update(country_code_2=country, region="NY")).status_code == 201
    for delivery in (0, 3, 1.0, True, "1"):
        error = refused(attempt(lambda b: b.update(delivery_type=delivery)), 400, "invalid_request")
        assert "delivery_type" in named_fields(error)
    assert attempt(lambda b: b.update(delivery_type=2)).status_code == 201
    assert "country_code_2" in named_fields(refused(
        attempt(lambda b: b["mailing_address"].update(country_code_2="GBR")), 400, "invalid_request"))


@pytest.mark.parametrize("bad", ["\x00", "\n", "\t", "\x1b[31m", "\x85", "\u202e", "\u2066", "\u200f", "\u2028"])
@pytest.mark.parametrize("part, name", [("recipient", "recipient_firstname"), ("mailing_address", "city"),
                                        ("recipient", "recipient_company")])
def test_no_control_or_bidi_character_in_any_field(api, shipment_body, bad, part, name):
    body = shipment_body()
    body[part][name] = "Ad" + bad + "a"
    error = refused(api("POST", "/v1/fpr/shipments", api.customer, json=body), 400, "invalid_request")
    assert name in named_fields(error)
    assert f"U+{ord(bad[0]):04X}" in error["error_message"]


def test_a_plain_unicode_name_is_accepted(api, shipment_body):
    body = shipment_body()
    body["recipient"].update(recipient_firstname="Zoë", recipient_lastname="Ångström-Ćwik")
    body["mailing_address"].update(city="東京", country_code_2="JP")
    assert api.post(body)


# -- listing -------------------------------------------------------------------------------


def test_listing_is_tenant_scoped_newest_first_with_state_and_q(api, shipment_body):
    ids = []
    for first, last in (("Ada", "Lovelace"), ("Grace", "Hopper"), ("Alan", "Turing")):
        body = shipment_body()
        body["recipient"].update(recipient_firstname=first, recipient_lastname=last,
                                 recipient_email=f"{first.lower()}@acme.example")
        ids.append(api.post(body))
    foreign = api.post(shipment_body(), token=api.other)
    api.program(ids[0])
    listed = api("GET", "/v1/fpr/shipments", api.customer).json()
    assert listed["total"] == 3 and [s["shipment_id"] for s in listed["shipments"]] == ids[::-1]
    assert foreign not in json.dumps(listed)
    assert "fido_" not in json.dumps(listed)  # a listing carries no JWE
    first = listed["shipments"][-1]
    assert first["shipment_state"] == {"shipment_state_id": 102}
    assert first["recipient"]["recipient_lastname"] == "Lovelace"

    def ids_of(**params) -> list[str]:
        answer = api("GET", "/v1/fpr/shipments", api.customer, params=params)
        assert answer.status_code == 200, answer.text
        return [s["shipment_id"] for s in answer.json()["shipments"]]

    assert ids_of(state=100) == [ids[2], ids[1]]
    assert ids_of(state=102) == [ids[0]]
    assert ids_of(state=103) == []
    assert ids_of(q="HOPPER") == [ids[1]]
    assert ids_of(q="grace hop") == [ids[1]]
    assert ids_of(q="alan@") == [ids[2]]
    assert ids_of(q=ids[0][:13]) == [ids[0]]
    assert ids_of(q="%") == [] and ids_of(q="_") == []  # LIKE wildcards match themselves only
    assert ids_of(limit=1) == [ids[2]] and ids_of(limit=1, offset=1) == [ids[1]]
    assert api("GET", "/v1/fpr/shipments", api.customer, params={"limit": 1}).json()["total"] == 3
    for params in ({"limit": 101}, {"limit": 0}, {"offset": -1}, {"offset": 2**31}, {"state": 5}, {"stat": 100},
                   [("q", "ada"), ("q", "grace")]):
        refused(api("GET", "/v1/fpr/shipments", api.customer, params=params), 400, "invalid_request")
    assert api("GET", "/v1/fpr/shipments", api.other).json()["total"] == 1


def test_listing_needs_a_customer_token(api):
    assert api("GET", "/v1/fpr/shipments", api.station).status_code == 403
    assert api("GET", "/v1/fpr/shipments", api.operator).status_code == 403
    assert httpx.get(api.url + "/v1/fpr/shipments").status_code == 401


# -- PATCH and DELETE ----------------------------------------------------------------------


def test_patch_changes_only_the_envelope_until_locked(api, shipment_body):
    shipment_id = api.post(shipment_body())
    path = f"/v1/fpr/shipments/{shipment_id}"
    recipient = {**shipment_body()["recipient"], "recipient_firstname": "Augusta"}
    answer = api("PATCH", path, api.customer, json={"recipient": recipient, "delivery_type": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json()["recipient"]["recipient_firstname"] == "Augusta" and answer.json()["delivery_type"] == 2
    got = api("GET", path, api.customer).json()
    assert got["recipient"]["recipient_firstname"] == "Augusta"
    assert got["mailing_address"]["city"] == "London"  # untouched
    assert api("GET", "/v1/fpr/shipments", api.customer, params={"q": "augusta"}).json()["total"] == 1
    # the products cannot change; the same limits hold; a US address needs a region
    body = shipment_body()
    for patch in ({"shipment_items": body["shipment_items"]}, {},
                  {"recipient": {**recipient, "recipient_firstname": "x" * 16}},
                  {"mailing_address": {**body["mailing_address"], "country_code_2": "US", "region": ""}},
                  {"mailing_address": {**body["mailing_address"], "city": "Lon\u202edon"}},
                  {"delivery_type": 3}, {"delivery_type": None}):
        refused(api("PATCH", path, api.customer, json=patch), 400, "invalid_request")
    # a long Indian telephone needs the address to be in India
    long_phone = {**recipient, "recipient_telephone": "+91 " + "9" * 60}
    refused(api("PATCH", path, api.customer, json={"recipient": long_phone}), 400, "invalid_request")
    india = {**body["mailing_address"], "country_code_2": "IN"}
    assert api("PATCH", path, api.customer, json={"recipient": long_phone, "mailing_address": india}).status_code == 200
    # another tenant's shipment is not found
    refused(api("PATCH", path, api.other, json={"delivery_type": 1}), 404, "not_found")
    refused(api("DELETE", path, api.other), 404, "not_found")
    # once a station holds it: locked
    with FulfillmentClient(api.url, api.station) as station:
        claimed = station.claim()
        body = refused(api("PATCH", path, api.customer, json={"delivery_type": 1}), 409, "shipment_locked")
        assert body["error_data"] == {"shipment_state_id": 101}
        refused(api("DELETE", path, api.customer), 409, "shipment_locked")
        station.submit(claimed.item_id, product_data=PRODUCT_DATA)
    refused(api("PATCH", path, api.customer, json={"delivery_type": 1}), 409, "shipment_locked")
    refused(api("DELETE", path, api.customer), 409, "shipment_locked")
    assert api("GET", path, api.customer).json()["shipment_items"][0]["product_data"][0]["serial_number"] == "23456789"


def test_delete_purges_the_shipment_and_its_jwes(api, shipment_body):
    body = shipment_body()
    shipment_id = api.post(body)
    pin_jwe = body["shipment_items"][0]["product_customizations"][0]["fido_pin_request"]
    path = f"/v1/fpr/shipments/{shipment_id}"
    assert api("DELETE", path, api.customer).status_code == 204
    refused(api("GET", path, api.customer), 404, "not_found")
    refused(api("DELETE", path, api.customer), 404, "not_found")
    refused(api("PATCH", path, api.customer, json={"delivery_type": 1}), 404, "not_found")
    assert api("GET", "/v1/fpr/shipments", api.customer).json()["total"] == 0
    with api.store.engine.connect() as conn:
        dump = " ".join(str(row) for table in ("shipments", "items", "audit", "request_digests")
                        for row in conn.exec_driver_sql(f"SELECT * FROM {table}").all())
    assert pin_jwe not in dump and shipment_id in dump  # the audit keeps that it was deleted
    with FulfillmentClient(api.url, api.station) as station:
        assert station.claim() is None  # nothing left to program
    # the same JWEs stay refused: their digests are kept
    refused(api("POST", "/v1/fpr/shipments", api.customer, json=body), 400, "invalid_request")


# -- states an operator sets ---------------------------------------------------------------


def test_shipped_with_tracking_then_delivered(api, shipment_body):
    shipment_id = api.post(shipment_body())
    state_path = f"/v1/operator/shipments/{shipment_id}/state"
    refused(api("POST", state_path, api.operator, json={"shipment_state_id": 103, "tracking_number": "1Z9"}),
            409, "invalid_transition")  # not programmed yet
    api.program(shipment_id)
    refused(api("POST", state_path, api.operator, json={"shipment_state_id": 103}), 400, "invalid_request")
    refused(api("POST", state_path, api.operator, json={"shipment_state_id": 100}), 400, "invalid_request")
    assert api("POST", state_path, api.customer, json={"shipment_state_id": 104}).status_code == 403
    assert api("POST", state_path, api.station, json={"shipment_state_id": 104}).status_code == 403
    shipped = api("POST", state_path, api.operator, json={"shipment_state_id": 103, "tracking_number": "1Z999AA10123456784"})
    assert shipped.status_code == 200 and shipped.json()["shipment_state"]["shipment_state_id"] == 103
    got = api("GET", f"/v1/fpr/shipments/{shipment_id}", api.customer).json()
    assert got["shipment_state"] == {"shipment_state_id": 103} and got["tracking_number"] == "1Z999AA10123456784"
    assert got["shipment_items"][0]["product_data"][0]["fido_pin_response"] == PRODUCT_DATA["fido_pin_response"]
    assert api("POST", state_path, api.operator, json={"shipment_state_id": 104}).status_code == 200
    got = api("GET", f"/v1/fpr/shipments/{shipment_id}", api.customer).json()
    assert got["shipment_state"] == {"shipment_state_id": 104}
    assert got["shipment_items"][0]["product_data"][0]["fido_pin_response"]  # still readable
    refused(api("POST", state_path, api.operator, json={"shipment_state_id": 105}), 409, "invalid_transition")
    assert api("GET", "/v1/fpr/shipments", api.customer, params={"state": 104}).json()["total"] == 1


def test_an_error_state_before_programming_keeps_stations_away(api, shipment_body):
    shipment_id = api.post(shipment_body())
    answer = api("POST", f"/v1/operator/shipments/{shipment_id}/state", api.operator, json={"shipment_state_id": 9})
    assert answer.status_code == 200, answer.text
    with FulfillmentClient(api.url, api.station) as station:
        assert station.claim() is None
    got = api("GET", f"/v1/fpr/shipments/{shipment_id}", api.customer).json()
    assert got["shipment_state"] == {"shipment_state_id": 9}
    refused(api("DELETE", f"/v1/fpr/shipments/{shipment_id}", api.customer), 409, "shipment_locked")


# -- the operator API ----------------------------------------------------------------------


def test_the_operator_sees_every_tenant_and_never_a_jwe(api, shipment_body):
    mine = shipment_body()
    acme = api.post(mine)
    globex = api.post(shipment_body(), token=api.other)
    item_id = api.program(acme)
    with FulfillmentClient(api.url, api.station) as station:
        failed = station.claim()
        station.submit(failed.item_id, error={"error_code": "device_not_fresh", "error_message": "holds a PIN"},
                       serial_number="555")
    listing = api("GET", "/v1/operator/shipments", api.operator).json()
    assert {(s["shipment_id"], s["tenant"]) for s in listing["shipments"]} == {(acme, "acme"), (globex, "globex")}
    assert api("GET", "/v1/operator/shipments", api.operator, params={"tenant": "globex"}).json()["total"] == 1
    view = api("GET", f"/v1/operator/shipments/{acme}", api.operator).json()
    assert view["items"][0]["serial_number"] == "23456789" and view["items"][0]["firmware_version"] == "5.7.1"
    assert view["items"][0]["attempts"] == 1 and view["items"][0]["item_id"] == item_id
    [attempt] = view["items"][0]["attempt_history"]
    assert (attempt["station"], attempt["outcome"], attempt["serial_number"]) == ("station-1", "fulfilled", "23456789")
    assert [e["event"] for e in view["timeline"]] == ["received", "claimed", "fulfilled"]
    assert "station-1" in view["timeline"][1]["detail"] and "firmware 5.7.1" in view["timeline"][2]["detail"]
    assert [s["shipment_state_id"] for s in view["next_states"]] == [103, 1, 6, 7, 9, 99]
    everything = " ".join(api("GET", path, api.operator).text for path in (
        "/v1/operator/shipments", f"/v1/operator/shipments/{acme}", f"/v1/operator/shipments/{globex}",
        "/v1/operator/stations", "/v1/operator/items/failed", "/v1/operator/audit", "/v1/operator/tenants"))
    jwes = [mine["shipment_items"][0]["product_customizations"][0]["fido_pin_request"],
            PRODUCT_DATA["fido_pin_response"], PRODUCT_DATA["fido_credential_responses"][0]]
    assert not any(jwe in everything for jwe in jwes)
    # reading as the operator is not the customer's read (the purge clock does not start)
    with api.store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT read_at FROM items WHERE id = ?", (item_id,)).scalar() is None
    failed_view = api("GET", "/v1/operator/items/failed", api.operator).json()
    assert [(f["shipment_id"], f["error_code"], f["keys_tried"]) for f in failed_view] == [(globex, "device_not_fresh", ["555"])]
    assert "station reset" in failed_view[0]["what_to_do"]
    tenants = {t["tenant"]: t for t in api("GET", "/v1/operator/tenants", api.operator).json()}
    assert tenants["acme"]["by_state"] == {"102": 1} and tenants["globex"]["by_state"] == {"8": 1}
    for params in ({"offset": 2**70}, {"event": "nope"}, {"limit": 0}, [("event", "failed"), ("event", "claimed")]):
        refused(api("GET", "/v1/operator/audit", api.operator, params=params), 400, "invalid_request")
    audit = api("GET", "/v1/operator/audit", api.operator, params={"event": "failed"}).json()
    assert audit["total"] == 1 and audit["records"][0]["outcome"] == "device_not_fresh"
    for path in ("/v1/operator/shipments", "/v1/operator/stations", "/v1/operator/audit"):
        assert api("GET", path, api.customer).status_code == 403
        assert api("GET", path, api.station).status_code == 403


def test_station_status_reports_show_slots_and_mark_the_timeline(api, service, shipment_body):
    shipment_id = api.post(shipment_body())
    with FulfillmentClient(api.url, api.station) as station:
        claimed = station.claim()
    report = {"version": "0.1", "items_done": 4, "slots": [
        {"slot": 1, "state": "programming", "item": claimed.item_id, "shipment": shipment_id,
         "device": "pcsc:Virtual PCD 00 00", "model": "YubiKey 5 NFC", "serial": "31415926", "firmware": "5.7.1"},
        {"slot": 2, "state": "waiting_key"}]}
    for _ in range(2):  # the same report again adds nothing to the timeline
        assert api("POST", "/v1/station/status", api.station, json=report).status_code == 204
    assert api("POST", "/v1/station/status", api.customer, json=report).status_code == 403
    refused(api("POST", "/v1/station/status", api.station, json={"slots": [{"slot": 0, "state": "x"}]}),
            400, "invalid_request")
    refused(api("POST", "/v1/station/status", api.station,
                json={"slots": [{"slot": 1, "state": "x", "serial": "12a"}]}), 400, "invalid_request")
    stations = api("GET", "/v1/operator/stations", api.operator).json()
    [view] = [s for s in stations if s["name"] == "station-1"]
    assert not view["silent"] and view["leases"] == 1 and view["items_done"] == 4
    assert [(s["slot"], s["state"], s.get("serial")) for s in view["slots"]] == [
        (1, "programming", "31415926"), (2, "waiting_key", None)]
    timeline = api("GET", f"/v1/operator/shipments/{shipment_id}", api.operator).json()["timeline"]
    on_slot = [e for e in timeline if e["event"] == "on_slot"]
    assert len(on_slot) == 1 and on_slot[0]["slot"] == 1 and on_slot[0]["serial_number"] == "31415926"
    # another station cannot mark an item it does not hold
    other = service.token(Role.STATION, "station-2")
    moved = {"slots": [{**report["slots"][0], "slot": 3}]}
    assert api("POST", "/v1/station/status", other, json=moved).status_code == 204
    timeline = api("GET", f"/v1/operator/shipments/{shipment_id}", api.operator).json()["timeline"]
    assert [e["slot"] for e in timeline if e["event"] == "on_slot"] == [1]


def test_attempt_history_follows_every_claim(api, service, shipment_body):
    shipment_id = api.post(shipment_body())
    with FulfillmentClient(api.url, api.station) as first, \
            FulfillmentClient(api.url, service.token(Role.STATION, "station-2")) as second:
        claimed = first.claim()
        first.release(claimed.item_id)
        claimed = second.claim()
        second.submit(claimed.item_id, error={"error_code": "device_error", "error_message": "pulled"},
                      serial_number="999")
    view = api("GET", f"/v1/operator/shipments/{shipment_id}", api.operator).json()
    [item] = view["items"]
    assert item["attempts"] == 2 and item["error_code"] == "device_error" and "hub" in item["what_to_do"]
    assert [(a["station"], a["outcome"], a.get("serial_number")) for a in item["attempt_history"]] == [
        ("station-1", "released", None), ("station-2", "failed: device_error", "999")]
    assert view["shipment_state"] == {"shipment_state_id": 8, "meaning": "processing error: the item failed (see its error_code)"}


def test_the_client_lists_fixes_and_cancels(api, shipment_body):
    from station.fulfillment.errors import Conflict, NotFound

    with FulfillmentClient(api.url, api.customer) as customer:
        keep, cancel = (customer.post_shipment(shipment_body()).shipment_id for _ in range(2))
        assert [s.shipment_id for s in customer.list_shipments().shipments] == [cancel, keep]
        fixed = customer.patch_shipment(keep, {"delivery_type": 2})
        assert fixed.delivery_type == 2
        customer.delete_shipment(cancel)
        with pytest.raises(NotFound):
            customer.get_shipment(cancel)
        page = customer.list_shipments(state=100, q="ada", limit=10)
        assert page.total == 1 and page.shipments[0].delivery_type == 2
        api.program(keep)
        with pytest.raises(Conflict) as locked:
            customer.delete_shipment(keep)
        assert locked.value.code == "shipment_locked"

"""The service over a real uvicorn on 127.0.0.1, through httpx and FulfillmentClient."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from station.fulfillment.client import FulfillmentClient
from station.fulfillment.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
)
from station.fulfillment.pgcluster import free_port
from station.fulfillment.store import Role

PRODUCT_DATA = {"serial_number": "23456789", "firmware_version": "5.7.1",
                "fido_pin_response": "p.i.n.j.we", "fido_credential_responses": ["c.r.e.d.s"]}
ITEM_ERROR = {"error_code": "device_unsupported", "error_message": "cannot force a PIN change"}


@pytest.fixture
def customer(service):
    with FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme")) as client:
        yield client


@pytest.fixture
def station(service):
    with FulfillmentClient(service.url, service.token(Role.STATION, "station-1")) as client:
        yield client


def raw(service, method, path, token=None, headers=None, **kwargs) -> httpx.Response:
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, service.url + path, headers=headers, timeout=10, **kwargs)


def assert_error_body(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_message", "error_data"}
    assert body["error_code"] == code and body["error_message"]
    return body


# -- keys and authentication ---------------------------------------------------------------


def test_jwks_need_no_token_and_hold_public_keys(service, keystore):
    with FulfillmentClient(service.url) as anonymous:
        for kind in ("transport", "signing"):
            jwks = anonymous.jwks(kind)
            assert jwks == keystore.jwks(kind)
            assert all("d" not in key for key in jwks["keys"])
        with pytest.raises(ValueError):
            anonymous.jwks("private")


def test_a_missing_or_unknown_token_is_401(service, shipment_body):
    missing = raw(service, "POST", "/v1/fpr/shipments", json=shipment_body())
    assert_error_body(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    unknown = raw(service, "GET", "/v1/fpr/shipments/00000000-0000-0000-0000-000000000000", token="nope")
    assert_error_body(unknown, 401, "unauthorized")
    assert_error_body(raw(service, "POST", "/v1/station/claim", token="nope"), 401, "unauthorized")
    with FulfillmentClient(service.url, "nope") as stranger, pytest.raises(Unauthorized):
        stranger.claim()


def test_a_token_of_the_wrong_role_is_403(customer, station, shipment_body):
    with pytest.raises(Forbidden):
        customer.claim()
    with pytest.raises(Forbidden):
        station.post_shipment(shipment_body())


def test_a_customer_sees_only_its_own_shipments(service, customer, shipment_body):
    created = customer.post_shipment(shipment_body())
    with FulfillmentClient(service.url, service.token(Role.CUSTOMER, "globex")) as other:
        with pytest.raises(NotFound) as refused:
            other.get_shipment(created.shipment_id)
    assert (refused.value.status, refused.value.code) == (404, "not_found")
    with pytest.raises(NotFound):
        customer.get_shipment("00000000-0000-4000-8000-000000000000")
    with FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme")) as second_token:
        assert second_token.get_shipment(created.shipment_id).shipment_id == created.shipment_id


# -- the customer API ----------------------------------------------------------------------


def test_post_then_get_a_shipment(service, customer, shipment_body):
    body = shipment_body(credentials=2)
    response = raw(service, "POST", "/v1/fpr/shipments", customer_token(customer), json=body)
    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"shipment_id", "shipment_state"}
    assert created["shipment_state"] == {"shipment_state_id": 100}
    got = customer.get_shipment(created["shipment_id"])
    assert got.shipment_state.shipment_state_id == 100
    assert got.recipient.model_dump() == body["recipient"]
    assert got.mailing_address.country_code_2 == "GB"
    assert [(i.customization_id, i.product_data) for i in got.shipment_items] == [("CUST00", [])]
    assert "tracking_number" not in response.json() and "tracking_number" not in got.model_dump()


def customer_token(client: FulfillmentClient) -> str:
    return client._http.headers["Authorization"].removeprefix("Bearer ")


@pytest.mark.parametrize(
    "breaks, where",
    [
        (lambda b: b["shipment_items"][0].update(product_quantity=2), "product_quantity"),
        (lambda b: b["shipment_items"][0]["product_customizations"][0].update(fido_credential_requests=[]),
         "fido_credential_requests"),
        (lambda b: b["recipient"].update(recipient_firstname="x" * 101), "recipient_firstname"),
        (lambda b: b["mailing_address"].update(country_code_2="gb"), "country_code_2"),
        (lambda b: b.update(shipment_items=[]), "shipment_items"),
        (lambda b: b["shipment_items"][0]["product_customizations"][0].update(fido_pin_request="not-a-jwe"),
         "fido_pin_request"),
        (lambda b: b.pop("recipient"), "recipient"),
    ],
)
def test_field_limits_are_checked_at_the_door(service, customer, shipment_body, breaks, where):
    body = shipment_body()
    breaks(body)
    response = raw(service, "POST", "/v1/fpr/shipments", customer_token(customer), json=body)
    error = assert_error_body(response, 400, "invalid_request")
    assert any(where in entry["loc"] for entry in error["error_data"])
    assert "fido_" not in json.dumps(error["error_data"]).split("loc")[0]  # no echo of the input


def test_a_body_that_is_not_json_is_400(service, customer):
    response = raw(service, "POST", "/v1/fpr/shipments", customer_token(customer),
                   content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error_body(response, 400, "invalid_request")


def test_a_malformed_shipment_id_is_400(service, customer):
    response = raw(service, "GET", "/v1/fpr/shipments/not-a-shipment-id", customer_token(customer))
    assert_error_body(response, 400, "invalid_request")


def _reheader(jwe: str, **changes) -> str:
    header_b64, *rest = jwe.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    header.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return ".".join([encoded, *rest])


@pytest.mark.parametrize(
    "header",
    [{"kid": "not-a-key-we-hold"}, {"alg": "dir"}, {"enc": "A128GCM"}, {"alg": "RSA-OAEP"}],
)
def test_jwe_headers_are_checked_at_the_door(service, customer, shipment_body, header):
    body = shipment_body(credentials=2)
    customization = body["shipment_items"][0]["product_customizations"][0]
    customization["fido_credential_requests"][1] = _reheader(customization["fido_credential_requests"][1], **header)
    with pytest.raises(BadRequest) as refused:
        customer.post_shipment(body)
    assert refused.value.code == "decrypt_failed"
    assert refused.value.error_data == {"shipment_item": 0, "member": "fido_credential_requests[1]"}


def test_a_jwe_with_a_bad_epk_is_refused(service, customer, shipment_body):
    body = shipment_body()
    customization = body["shipment_items"][0]["product_customizations"][0]
    customization["fido_pin_request"] = _reheader(
        customization["fido_pin_request"], epk={"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"})
    with pytest.raises(BadRequest) as refused:
        customer.post_shipment(body)
    assert refused.value.code == "decrypt_failed"
    assert refused.value.error_data["member"] == "fido_pin_request"


def test_a_replayed_jwe_is_refused_with_400(customer, shipment_body):
    body = shipment_body()
    customer.post_shipment(body)
    replay = shipment_body()
    replay["shipment_items"][0]["product_customizations"][0]["fido_pin_request"] = (
        body["shipment_items"][0]["product_customizations"][0]["fido_credential_requests"][0])
    with pytest.raises(BadRequest) as refused:
        customer.post_shipment(replay)
    assert (refused.value.status, refused.value.code) == (400, "invalid_request")
    assert "already received" in refused.value.message


def test_an_oversized_body_is_413(service, customer):
    big = b"x" * (1024 * 1024 + 1)
    declared = raw(service, "POST", "/v1/fpr/shipments", customer_token(customer), content=big,
                   headers={"Content-Type": "application/json"})
    assert_error_body(declared, 413, "payload_too_large")
    chunked = raw(service, "POST", "/v1/fpr/shipments", customer_token(customer),
                  content=iter([big[:600_000], big[600_000:]]), headers={"Content-Type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert_error_body(chunked, 413, "payload_too_large")
    with pytest.raises(PayloadTooLarge):
        customer.post_shipment({"padding": "x" * (1024 * 1024)})


def test_an_unknown_route_answers_an_error_body(service):
    # under /v1/ the door authenticates first (issue 17): no token, no answer about routes
    assert_error_body(raw(service, "GET", "/v1/nothing"), 401, "unauthorized")
    token = service.store.create_token("customer", "route-prober")
    assert_error_body(raw(service, "GET", "/v1/nothing", token), 404, "not_found")
    assert_error_body(raw(service, "DELETE", "/v1/fpr/shipments", token), 405, "http_error")
    assert_error_body(raw(service, "GET", "/nothing"), 404, "not_found")


# -- the station API -----------------------------------------------------------------------


def test_the_round_trip_through_the_station_api(customer, station, shipment_body):
    body = shipment_body()
    created = customer.post_shipment(body)
    second_shipment = customer.post_shipment(shipment_body())
    first = station.claim(lease_seconds=60)
    assert first.shipment_id == created.shipment_id
    customization = body["shipment_items"][0]["product_customizations"][0]
    assert first.fido_pin_request == customization["fido_pin_request"]
    assert first.fido_credential_requests == customization["fido_credential_requests"]
    assert first.lease_expires_at == pytest.approx(time.time() + 60, abs=5)
    assert customer.get_shipment(created.shipment_id).shipment_state.shipment_state_id == 101
    lease = station.heartbeat(first.item_id, lease_seconds=120)
    assert lease.lease_expires_at > first.lease_expires_at
    assert station.submit(first.item_id, product_data=PRODUCT_DATA).item_state == "fulfilled"
    assert station.submit(first.item_id, product_data=PRODUCT_DATA).item_state == "fulfilled"  # idempotent
    with pytest.raises(Conflict):
        station.submit(first.item_id, product_data={**PRODUCT_DATA, "fido_pin_response": "o.t.h.e.r"})
    second = station.claim()
    assert station.claim() is None
    assert station.submit(second.item_id, error=ITEM_ERROR, serial_number="777").item_state == "failed"
    got = customer.get_shipment(created.shipment_id)
    assert got.shipment_state.shipment_state_id == 102
    assert [i.product_data[0].model_dump() for i in got.shipment_items] == [PRODUCT_DATA]
    failed = customer.get_shipment(second_shipment.shipment_id)
    assert failed.shipment_state.shipment_state_id == 8
    assert [i.product_data[0].model_dump() for i in failed.shipment_items] == [ITEM_ERROR]


def test_a_fulfilled_shipment_is_102_programmed(customer, station, shipment_body):
    created = customer.post_shipment(shipment_body())
    station.submit(station.claim().item_id, product_data=PRODUCT_DATA)
    got = customer.get_shipment(created.shipment_id)
    assert got.shipment_state.shipment_state_id == 102
    assert got.shipment_items[0].product_data[0].fido_pin_response == PRODUCT_DATA["fido_pin_response"]


def test_release_and_leases_between_stations(service, customer, station, shipment_body):
    customer.post_shipment(shipment_body())
    claimed = station.claim()
    with FulfillmentClient(service.url, service.token(Role.STATION, "station-2")) as other:
        assert other.claim() is None
        with pytest.raises(Conflict):
            other.heartbeat(claimed.item_id)
        with pytest.raises(Conflict):
            other.submit(claimed.item_id, product_data=PRODUCT_DATA)
        assert station.release(claimed.item_id).item_state == "queued"
        with pytest.raises(Conflict):
            station.release(claimed.item_id)
        assert other.claim().item_id == claimed.item_id
    with pytest.raises(NotFound):
        station.heartbeat(claimed.item_id + 1000)


def test_submit_needs_exactly_one_outcome(service, station):
    token = customer_token(station)
    for body in ({}, {"product_data": PRODUCT_DATA, "error": ITEM_ERROR},
                 {"error": {"error_code": "not_a_code", "error_message": "x"}},
                 {"product_data": PRODUCT_DATA, "serial_number": "12a"},
                 {"product_data": PRODUCT_DATA, "unknown": 1}):
        response = raw(service, "POST", "/v1/station/items/1/submit", token, json=body)
        assert_error_body(response, 400, "invalid_request")
    with pytest.raises(ValueError):
        station.submit(1)
    with pytest.raises(ValueError):
        station.submit(1, product_data=PRODUCT_DATA, error=ITEM_ERROR)


def test_the_audit_records_only_a_decimal_serial(service, customer, station, shipment_body):
    customer.post_shipment(shipment_body())
    customer.post_shipment(shipment_body())
    odd = station.claim()
    station.submit(odd.item_id, product_data={**PRODUCT_DATA, "serial_number": "YK-1\x00"})
    named = station.claim()
    station.submit(named.item_id, product_data={**PRODUCT_DATA, "serial_number": None}, serial_number="99")
    serials = {r.item_id: r.serial_number for r in service.store.audit_trail() if r.event.value == "fulfilled"}
    assert serials == {odd.item_id: None, named.item_id: "99"}


@pytest.mark.parametrize("lease", [0, 3601, True, "30", 30.5])
def test_lease_seconds_are_bounded_integers(service, station, lease):
    response = raw(service, "POST", "/v1/station/claim", customer_token(station), json={"lease_seconds": lease})
    assert_error_body(response, 400, "invalid_request")


def test_an_item_id_out_of_range_is_400(service, station):
    response = raw(service, "POST", "/v1/station/items/0/heartbeat", customer_token(station))
    assert_error_body(response, 400, "invalid_request")


def test_an_unreachable_service_is_service_unavailable():
    with FulfillmentClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as client:
        with pytest.raises(ServiceUnavailable):
            client.claim()


def test_the_service_purges_read_shipments(start_service, shipment_body):
    service = start_service(purge_interval=0.05, retention_seconds=0)
    purge, failures = service.store.purge, []

    def flaky_purge(now=None):  # the database is away for the first rounds
        if len(failures) < 2:
            failures.append(now)
            raise ServiceUnavailable("database unavailable: test")
        return purge(now)

    service.store.purge = flaky_purge
    customer = FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme"))
    station = FulfillmentClient(service.url, service.token(Role.STATION, "s"))
    created = customer.post_shipment(shipment_body())
    station.submit(station.claim().item_id, product_data=PRODUCT_DATA)
    assert customer.get_shipment(created.shipment_id).shipment_state.shipment_state_id == 102
    deadline = time.monotonic() + 5
    while True:
        try:
            customer.get_shipment(created.shipment_id)
        except NotFound:
            break
        assert time.monotonic() < deadline, "the purge loop never ran"
        time.sleep(0.05)
    assert len(failures) == 2
    customer.close()
    station.close()


def test_openapi_documents_error_bodies_not_422(service):
    document = raw(service, "GET", "/openapi.json").json()
    operations = [op for path in document["paths"].values() for op in path.values()]
    # customer 5, keys 2, station 7, operator 7, directories 10 (the console is not an API)
    assert len(operations) == 31
    assert "/v1/station/items/{item_id}/confirm" in document["paths"]
    for operation in operations:
        assert "422" not in operation["responses"]
        assert operation["responses"]["4XX"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"

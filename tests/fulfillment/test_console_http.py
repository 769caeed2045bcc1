"""The console's refusals over plain HTTP (the browser test covers what it shows): sign-in
limits, no open redirect, every page behind the session, headers, locked shipments."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from station.fulfillment.client import FulfillmentClient
from station.fulfillment.store import Role

PAGES = ["/console/shipments", "/console/stations", "/console/failed", "/console/audit",
         f"/console/shipments/{uuid.uuid4()}"]


def sign_in(service, token: str, *, next_path: str = "/console/shipments") -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=service.url)
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return client, client.post("/console/login", data={"csrf": csrf, "token": token, "next": next_path})


@pytest.mark.parametrize("path", PAGES)
def test_every_page_needs_a_session(service, path):
    answer = httpx.get(service.url + path)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login?next=")


def test_only_operator_tokens_sign_in_and_failures_are_limited(start_service):
    service = start_service()
    for role in (Role.CUSTOMER, Role.STATION):
        client, answer = sign_in(service, service.token(role, f"{role.value}-1"))
        assert answer.status_code == 401 and "not an operator token" in answer.text
        assert "station_console" not in client.cookies
    statuses = [sign_in(service, f"guess-{n}")[1].status_code for n in range(11)]
    assert statuses == [401] * 10 + [429]
    # the limit is the door's: a bearer token from this address is refused unseen now
    answer = httpx.get(service.url + "/v1/fpr/shipments", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 429


def test_sign_in_without_its_csrf_cookie_is_refused(service):
    token = service.token(Role.OPERATOR, "ops")
    form = httpx.get(service.url + "/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    answer = httpx.post(service.url + "/console/login", data={"csrf": csrf, "token": token})  # no cookie
    assert answer.status_code == 403 and "station_console" not in answer.cookies


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/v1/fpr/shipments", "/\\evil"])
def test_the_next_page_is_only_ever_the_console(service, target):
    client, answer = sign_in(service, service.token(Role.OPERATOR, "ops"), next_path=target)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/shipments"
    page = client.get("/console/shipments")
    assert page.status_code == 200
    for header, value in (("cache-control", "no-store"), ("x-frame-options", "DENY")):
        assert page.headers[header] == value
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script at all


def test_a_locked_or_unknown_shipment_is_answered_on_the_page(service, shipment_body):
    customer = FulfillmentClient(service.url, service.token(Role.CUSTOMER, "acme"))
    shipment_id = customer.post_shipment(shipment_body()).shipment_id
    FulfillmentClient(service.url, service.token(Role.STATION, "st")).claim()
    client, _ = sign_in(service, service.token(Role.OPERATOR, "ops"))
    page = client.get(f"/console/shipments/{shipment_id}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert 'id="edit-form"' not in page.text  # a station holds it
    answer = client.post(f"/console/shipments/{shipment_id}/delete", data={"csrf": csrf, "confirm": "yes"})
    assert answer.status_code == 409 and "can no longer be changed" in answer.text
    answer = client.post(f"/console/shipments/{shipment_id}/state", data={"csrf": csrf, "shipment_state_id": "103",
                                                                          "tracking_number": "1Z"})
    assert answer.status_code == 409 and "can follow only 102" in answer.text
    assert customer.get_shipment(shipment_id).shipment_state.shipment_state_id == 101
    assert client.get(f"/console/shipments/{uuid.uuid4()}").status_code == 404
    assert client.get("/console/shipments/not-a-uuid").status_code == 404
    assert client.get("/console/shipments", params={"state": "x", "offset": "-5"}).status_code == 200

"""Fixtures for the customer side: a factory key store, fresh virtual keys programmed by the
station's provisioning engine, and an in-memory fulfillment service (a stand-in for
`station.fulfillment.client.FulfillmentClient` until the lead wires the real one).

Tests are not `customer`: they may use `station.provision` and `station.device` to play the factory.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from station.device.discovery import open_device
from station.errors import StationError
from station.protocol.keys import KeyStore
from station.protocol.messages import ShipmentRequest
from station.provision.genuine import TrustStore
from station.provision.item import provision_item
from station.virtual import new_virtual

PROFILE = "yubikey-5-nfc-5.7"


class Factory:
    """The factory side: one key store, and a fresh virtual key per item programmed with
    `provision_item` (trusting the test CA, as a station does for `virtual:` devices)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keystore = KeyStore.init(folder / "keys")
        self.trust = TrustStore.default(trust_test_ca=True)
        self._count = itertools.count()

    def jwks(self, kind: str) -> dict:
        return self.keystore.jwks(kind)

    def program(self, pin_request_jwe: str, credential_request_jwes: list[str], *, profile: str = PROFILE):
        """→ (product_data, statefile of the programmed virtual key)."""
        statefile = self.folder / f"key-{next(self._count)}.json"
        new_virtual(statefile, profile).close()
        device = open_device(f"virtual:{statefile}")
        try:
            result = provision_item(
                device=device,
                pin_request_jwe=pin_request_jwe,
                credential_request_jwes=credential_request_jwes,
                keystore=self.keystore,
                trust=self.trust,
            )
        finally:
            device.close()
        return result.product_data, statefile


class FakeFulfillment:
    """In memory, the customer API of PROTOCOL.md §4: the body is checked at the door; the first
    `get_shipment` answers 100 (received), the next one programs every item (103, or 8 when an
    item failed with its error code)."""

    def __init__(self, factory: Factory, *, polls_before_done: int = 1) -> None:
        self.factory = factory
        self.polls_before_done = polls_before_done
        self.shipments: dict[str, dict] = {}
        self.statefiles: dict[str, list[Path | None]] = {}
        self._ids = itertools.count(1)

    def jwks(self, kind: str) -> dict:
        return self.factory.jwks(kind)

    def post_shipment(self, body: dict) -> dict:
        ShipmentRequest.model_validate(body)
        shipment_id = f"S{next(self._ids):04d}"
        self.shipments[shipment_id] = {"body": body, "polls": 0, "items": None}
        return {"shipment_id": shipment_id, "shipment_state": {"shipment_state_id": 100}}

    def get_shipment(self, shipment_id: str) -> dict:
        record = self.shipments[shipment_id]
        record["polls"] += 1
        if record["polls"] > self.polls_before_done and record["items"] is None:
            record["items"] = self._fulfil(shipment_id, record["body"])
        items = record["items"]
        if items is None:
            state = 100
        else:
            state = 8 if any("error_code" in i for i in items) else 103
        return {
            "shipment_id": shipment_id,
            "shipment_state": {"shipment_state_id": state},
            "shipment_items": [
                {**{k: v for k, v in item.items() if k != "product_customizations"},
                 "product_data": [] if items is None else [items[n]]}
                for n, item in enumerate(record["body"]["shipment_items"])
            ],
        }

    def _fulfil(self, shipment_id: str, body: dict) -> list[dict]:
        results, statefiles = [], []
        for item in body["shipment_items"]:
            custom = item["product_customizations"][0]
            try:
                product, statefile = self.factory.program(custom["fido_pin_request"], custom["fido_credential_requests"])
            except StationError as exc:
                product, statefile = {"error_code": exc.code, "error_message": exc.message}, None
            results.append(product)
            statefiles.append(statefile)
        self.statefiles[shipment_id] = statefiles
        return results


@pytest.fixture
def factory(tmp_path) -> Factory:
    return Factory(tmp_path)


@pytest.fixture
def fulfillment(factory) -> FakeFulfillment:
    return FakeFulfillment(factory)


@pytest.fixture
def live_service(factory, tmp_path):
    """The real fulfillment service (uvicorn on 127.0.0.1, SQLite) over the factory's key store
    → (base_url, customer token, station token); stopped at teardown."""
    from station.fulfillment.embedded import EmbeddedService
    from station.fulfillment.store import Role, Store

    store = Store.open(f"sqlite:///{tmp_path}/service.db")
    try:
        with EmbeddedService(store, factory.keystore) as service:
            yield (service.url, store.create_token(Role.CUSTOMER, "entra"), store.create_token(Role.STATION, "bench-1"))
    finally:
        store.close()


# -- the identity providers: stand-ins on loopback and our clients of them -----------------------

from dataclasses import dataclass  # noqa: E402
from importlib import resources  # noqa: E402

from station.customer.graph import GraphClient  # noqa: E402
from station.customer.okta import OktaClient  # noqa: E402
from station.customer.pingone import PingOneClient  # noqa: E402
from station.customer.settings import GraphSettings, OktaSettings, PingOneSettings  # noqa: E402
from station.standins import running  # noqa: E402


def attestation_roots() -> list[bytes]:
    """The vendors' roots and the TEST CA (the keys here are virtual)."""
    data = resources.files("station") / "data"
    return [*(p.read_bytes() for p in (data / "roots").iterdir() if p.name.endswith(".pem")),
            (data / "testca" / "ca.pem").read_bytes()]


class Waits(list):
    """A sleep that only records: throttling tests do not wait for real."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@dataclass
class Provider:
    standin: object
    url: str
    client: object
    sleeps: Waits
    user_id: str
    settings: object


OKTA_DOMAIN = "acme.okta.com"
PING_RP = "example.org"


@pytest.fixture
def okta():
    with running("okta", org_domain=OKTA_DOMAIN, attestation_roots=attestation_roots()) as (standin, url):
        user = standin.add_user("jdoe@acme.com", first_name="Jane", last_name="Doe")
        settings = OktaSettings(url=url, api_token=standin.new_api_token(), rp_ids=[OKTA_DOMAIN])
        sleeps = Waits()
        with OktaClient(settings, sleep=sleeps) as client:
            yield Provider(standin, url, client, sleeps, user.id, settings)


@pytest.fixture
def graph():
    with running("graph", attestation_roots=attestation_roots()) as (standin, url):
        user = standin.add_user("kim@contoso.com", "Kim Cook")
        client_id, secret = standin.add_client()
        settings = GraphSettings(url=url, login_url=url, tenant_id=standin.tenant_id, client_id=client_id,
                                 client_secret=secret)
        sleeps = Waits()
        with GraphClient(settings, sleep=sleeps) as client:
            yield Provider(standin, url, client, sleeps, user.id, settings)


@pytest.fixture
def pingone():
    with running("pingone", attestation_roots=attestation_roots()) as (standin, url):
        user = standin.add_user("lee@example.org")
        policy = standin.add_policy(PING_RP)
        client_id, secret = standin.add_client()
        settings = PingOneSettings(url=url, auth_url=url, environment_id=standin.environment_id, client_id=client_id,
                                   client_secret=secret, policy_id=policy.id, rp_id=PING_RP, rp_name="Example")
        sleeps = Waits()
        with PingOneClient(settings, sleep=sleeps) as client:
            yield Provider(standin, url, client, sleeps, user.id, settings)

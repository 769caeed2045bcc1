"""Shared material of the fulfillment tests: databases on both backends, a key store, request
JWEs, shipment bodies, and a real uvicorn serving the API on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from station.fulfillment.embedded import EmbeddedService
from station.fulfillment.pgcluster import PrivateCluster
from station.fulfillment.store import Role, Store
from station.protocol.jose import seal_request
from station.protocol.keys import KeyStore

RESPONSE_KEY = {  # a public P-384 key; the service never opens requests, so any valid one does
    "kty": "EC",
    "crv": "P-384",
    "use": "enc",
    "kid": "okta-h2r91gconqiai1vs0psg",
    "x": "ZlRn6wV4vZcmPlzEqOF8Do6l1pZWnTbfWd2WV50oDOcczS1C3gsDsd5jrv2WvVhw",
    "y": "eRLVySb7TWBa2C7Rq-7DHQQD9sJwuQ66e53sV5IHdjDGRpMrCW4ey8Mf7Ob9Db5Q",
}


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster for the session (fsync off: test data only)."""
    cluster = PrivateCluster(durable=False).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/station.db"
    return request.getfixturevalue("pg_cluster").create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def store(db_url) -> Iterator[Store]:
    opened = Store.open(db_url)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def keystore(tmp_path_factory) -> KeyStore:
    return KeyStore.init(tmp_path_factory.mktemp("fulfillment") / "keys")


@pytest.fixture(scope="session")
def make_jwe(keystore) -> Callable[..., str]:
    """A fresh request JWE (a new epk each time, so a new digest) to the transport key."""
    transport = keystore.jwks("transport")["keys"][0]

    def make(kid: str | None = None) -> str:
        payload = {"version": 1, "requestId": str(uuid.uuid4()), "type": "generate",
                   "responseKey": RESPONSE_KEY}
        return seal_request(payload, transport_jwk=transport, kid=kid or transport["kid"])

    return make


@pytest.fixture(scope="session")
def shipment_body(make_jwe) -> Callable[..., dict]:
    """A valid `POST /v1/fpr/shipments` body with fresh JWEs."""

    def body(items: int = 1, credentials: int = 1) -> dict:
        return {
            "delivery_type": 1,
            "recipient": {"recipient_company": "Acme", "recipient_email": "ada@acme.example",
                          "recipient_firstname": "Ada", "recipient_lastname": "Lovelace",
                          "recipient_telephone": "+44 20 7946 0000"},
            "mailing_address": {"street_line1": "1 Main St", "street_line2": "", "city": "London",
                                "region": "", "postal_code": "N1 9GU", "country_code_2": "GB"},
            "shipment_items": [
                {"product_id": 29, "inventory_product_id": 18, "product_quantity": 1,
                 "customization_id": f"CUST{i:02d}",
                 "product_customizations": [{"fido_pin_request": make_jwe(),
                                             "fido_credential_requests": [make_jwe() for _ in range(credentials)]}]}
                for i in range(items)
            ],
        }

    return body


class Service(EmbeddedService):
    """The API served by uvicorn in a thread on 127.0.0.1 (station.fulfillment.embedded)."""

    def token(self, role: Role, name: str) -> str:
        return self.store.create_token(role, name)


@pytest.fixture
def start_service(tmp_path, keystore) -> Iterator[Callable[..., Service]]:
    """Start a service over a fresh SQLite store (options: purge_interval, retention_seconds)."""
    started: list[tuple[Service, Store]] = []

    def start(*, purge_interval: float | None = None, retention_seconds: float = 3600, **app_options) -> Service:
        store = Store.open(f"sqlite:///{tmp_path}/service-{len(started)}.db",
                           retention_seconds=retention_seconds)
        service = Service(store, keystore, purge_interval=purge_interval, **app_options).start()
        started.append((service, store))
        return service

    yield start
    for service, store in started:
        service.stop()
        store.close()


@pytest.fixture
def service(start_service) -> Service:
    return start_service()

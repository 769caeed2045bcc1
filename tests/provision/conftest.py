"""Fixtures for the provisioning engine: a key store, fresh virtual keys, customer orders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from station.customer.orders import seal_item
from station.device.discovery import open_device
from station.protocol.keys import KeyStore
from station.provision.genuine import TrustStore
from station.virtual import new_virtual

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def load_options(name: str) -> dict:
    return json.loads((FIXTURES / "options" / f"{name}.json").read_text())


@pytest.fixture
def keystore(tmp_path) -> KeyStore:
    return KeyStore.init(tmp_path / "keys")


@pytest.fixture
def trust() -> TrustStore:
    return TrustStore.default(trust_test_ca=True)


@pytest.fixture
def make_key(tmp_path):
    """make_key(profile, transport="direct", **create_kw) → an open Device on a fresh virtual key."""
    opened = []

    def make(profile: str = "yubikey-5-nfc-5.7", transport: str = "direct", name: str = "key.json", **create_kw):
        statefile = tmp_path / name
        if not statefile.exists():
            new_virtual(statefile, profile, **create_kw).close()
        device = open_device(f"virtual:{statefile}", virtual_transport=transport)
        opened.append(device)
        return device

    yield make
    for device in opened:
        device.close()


@pytest.fixture
def order(keystore):
    """order(*option_names, **seal_kw) → a SealedItem sealed to this station's transport key."""

    def make(*names: str, **kw):
        options = [load_options(n) if isinstance(n, str) else n for n in (names or ("okta",))]
        return seal_item(transport_jwks=keystore.jwks("transport"), options=options, **kw)

    return make

"""Shared material of the protocol tests: a key store, a customer response key, sample options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jwcrypto.jwk import JWK

from station.protocol.keys import KeyStore

OPTIONS_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "options"


def load_options(name: str) -> dict:
    return json.loads((OPTIONS_DIR / f"{name}.json").read_text("utf-8"))


@pytest.fixture(scope="session")
def keystore(tmp_path_factory) -> KeyStore:
    """A read-only store for the whole session (tests that change keys make their own)."""
    return KeyStore.init(tmp_path_factory.mktemp("protocol") / "keys")


@pytest.fixture(scope="session")
def transport_jwk(keystore) -> dict:
    return keystore.jwks("transport")["keys"][0]


@pytest.fixture(scope="session")
def response_private_key() -> JWK:
    return JWK.generate(kty="EC", crv="P-384", use="enc", kid="okta-h2r91gconqiai1vs0psg")


@pytest.fixture(scope="session")
def response_key(response_private_key) -> dict:
    return json.loads(response_private_key.export_public())


@pytest.fixture
def pin_request(response_key) -> dict:
    return {
        "version": 1,
        "requestId": "7c1d3c1e-6a55-4d0e-9e3c-0b1f0c0a5b11",
        "type": "generate",
        "length": 6,
        "minPINLength": 6,
        "forcePINChange": True,
        "responseKey": response_key,
    }


@pytest.fixture(params=["graph", "okta"])
def credential_request(request, response_key) -> dict:
    return {
        "version": 1,
        "requestId": f"0f0d8f0a-{request.param}",
        "notAfter": "2099-12-06T10:00:00Z",
        "responseKey": response_key,
        "publicKey": load_options(request.param),
    }

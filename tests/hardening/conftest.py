"""Shared material of the hardening suite: a key store, a fresh virtual key, the service app
in process (FastAPI's TestClient), and the scripts under scripts/ loaded as modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from station.fulfillment.api import create_app
from station.fulfillment.store import Role, Store
from station.protocol.keys import KeyStore
from station.virtual import VirtualAuthenticator

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (the scripts are not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def keystore(tmp_path_factory) -> KeyStore:
    return KeyStore.init(tmp_path_factory.mktemp("hardening") / "keys")


@pytest.fixture(scope="session")
def transport_jwk(keystore) -> dict:
    return keystore.jwks("transport")["keys"][0]


@pytest.fixture(scope="module")
def authenticator(tmp_path_factory) -> Iterator[VirtualAuthenticator]:
    """One fresh YubiKey 5 NFC 5.7 per module (fuzzing may set a PIN on it: that is fine)."""
    key = VirtualAuthenticator.create(tmp_path_factory.mktemp("vkey") / "key.json", "yubikey-5-nfc-5.7")
    yield key
    key.close()


class Api:
    """The service app over a fresh SQLite store, spoken to in process."""

    def __init__(self, folder: Path, keystore: KeyStore, **app_options) -> None:
        self.store = Store.open(f"sqlite:///{folder}/service.db")
        self.app = create_app(self.store, keystore, purge_interval=None, **app_options)
        self.client = TestClient(self.app, raise_server_exceptions=False)
        self.customer = self.store.create_token(Role.CUSTOMER, "acme")
        self.station = self.store.create_token(Role.STATION, "station-1")

    def post(self, path: str, token: str | None, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.post(path, headers=headers, **kw)

    def get(self, path: str, token: str | None, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get(path, headers=headers, **kw)

    def close(self) -> None:
        self.client.close()
        self.store.close()


@pytest.fixture
def make_api(tmp_path, keystore) -> Iterator:
    made: list[Api] = []

    def make(**app_options) -> Api:
        folder = tmp_path / f"api-{len(made)}"
        folder.mkdir()
        api = Api(folder, keystore, **app_options)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api) -> Api:
    return make_api()

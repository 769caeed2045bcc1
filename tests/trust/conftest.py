"""Fixtures for the trust store: a store folder, the CLI, a test MDS."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from station.cli import cli

from .pki import MdsSigner


@pytest.fixture
def store(tmp_path):
    return tmp_path / "trust"


@pytest.fixture
def station(store):
    """station(*args) → click Result of `station trust ARGS --trust STORE`."""

    def invoke(*args: str, trust: bool = True):
        extra = ["--trust", str(store)] if trust else []
        return CliRunner().invoke(cli, ["trust", *args, *extra])

    return invoke


@pytest.fixture(scope="session")
def mds() -> MdsSigner:
    return MdsSigner()

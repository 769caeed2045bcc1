"""Fixtures for the virtual authenticator's CTAP-level tests (transport "direct")."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2

from station.virtual import VirtualAuthenticator, VirtualCtapDevice

PIN = "123456"


@dataclass
class Key:
    """An open virtual key with python-fido2's client-side objects over transport "direct"."""

    path: Path
    authenticator: VirtualAuthenticator
    device: VirtualCtapDevice

    @cached_property
    def ctap(self) -> Ctap2:
        """One Ctap2 (its constructor sends getInfo, which ends a getNextAssertion series)."""
        return Ctap2(self.device)

    def client_pin(self, protocol: int | None = None) -> ClientPin:
        proto = {1: PinProtocolV1, 2: PinProtocolV2}[protocol]() if protocol else None
        return ClientPin(self.ctap, proto)

    def token(self, permissions: ClientPin.PERMISSION, rp_id: str | None = None, protocol: int | None = None):
        """(pin protocol, pinUvAuthToken) using the PIN."""
        cp = self.client_pin(protocol)
        return cp.protocol, cp.get_pin_token(PIN, permissions, rp_id)


def make_key(path: Path, profile: str = "yubikey-5-nfc-5.7", *, pin: str | None = None, **kw) -> Key:
    """A fresh virtual key at `path`, with `pin` set when given (a quick PIN'd key)."""
    authenticator = VirtualAuthenticator.create(path, profile, **kw)
    key = Key(path, authenticator, VirtualCtapDevice(authenticator))
    if pin is not None:
        key.client_pin().set_pin(pin)
    return key


@pytest.fixture
def new_key(tmp_path) -> Iterator[Callable[..., Key]]:
    """Factory: make_key(profile, pin=..., presence=...) in tmp_path, closed at teardown."""
    keys: list[Key] = []

    def factory(profile: str = "yubikey-5-nfc-5.7", **kw) -> Key:
        key = make_key(tmp_path / f"key{len(keys)}.json", profile, **kw)
        keys.append(key)
        return key

    yield factory
    for key in keys:
        key.authenticator.close()


@pytest.fixture
def key(new_key) -> Key:
    """A YubiKey 5 NFC 5.7 with PIN 123456."""
    return new_key(pin=PIN)

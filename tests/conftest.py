"""Shared fixtures: pcscd with vsmartcard's virtual reader, virtual keys, a Fido2Client round trip."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import CtapDevice
from fido2.ctap2 import Ctap2
from fido2.ctap2.extensions import (
    CredPropsExtension,
    CredProtectExtension,
    HmacSecretExtension,
    MinPinLengthExtension,
)
from fido2.ctap2.pin import ClientPin
from fido2.utils import websafe_decode
from options import graph_creation_options

PCSCD_PIDFILE = Path("/run/pcscd/pcscd.pid")
PCSCD_TEST_LOCK = Path(tempfile.gettempdir()) / "station-tests-pcscd.lock"
VPCD_CONF = Path("/etc/reader.conf.d/vpcd")
#: The PIN the transport round trips set (test-only, never a real key's PIN).
TEST_PIN = "493817"


# ---------------------------------------------------------------- pcscd + vpcd
def _running_pcscd() -> int | None:
    try:
        pid = int(PCSCD_PIDFILE.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _vpcd_readers() -> list[str]:
    from smartcard.Exceptions import SmartcardException
    from smartcard.pcsc.PCSCExceptions import BaseSCardException
    from smartcard.System import readers

    try:
        return [str(r) for r in readers() if str(r).startswith("Virtual PCD")]
    except (SmartcardException, BaseSCardException):  # pcscd not (yet) answering
        return []


@contextlib.contextmanager
def _exclusive(lock_path: Path, seconds: float):
    """An flock shared by every test session on this machine (they all see one pcscd)."""
    with open(lock_path, "w") as handle:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {lock_path} for {seconds:.0f} s")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory) -> Iterator[list[str]]:
    """pcscd with the vpcd readers ("Virtual PCD 00 00" on TCP 35963, "00 01" on 35964).

    Reuses a running pcscd; otherwise starts `pcscd -f` and stops it by PID at the end.
    Sessions on one machine take turns (PCSCD_TEST_LOCK), so no session stops the pcscd
    another is using or inserts a card into a reader another is testing. Yields the reader names.
    """
    if shutil.which("pcscd") is None or not VPCD_CONF.exists():
        pytest.skip("pcscd or vsmartcard-vpcd is not installed (.ci/run installs both)")
    with _exclusive(PCSCD_TEST_LOCK, seconds=240):
        process = None
        if _running_pcscd() is None:
            log = tmp_path_factory.mktemp("pcscd") / "pcscd.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(["pcscd", "-f"], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while not (names := _vpcd_readers()):
                if time.monotonic() > deadline or (process is not None and process.poll() is not None):
                    pytest.fail("pcscd did not list the vpcd readers within 15 s")
                time.sleep(0.1)
            yield names
        finally:
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# ---------------------------------------------------------------- virtual keys
@pytest.fixture
def transport_key(tmp_path) -> Iterator[Callable[..., object]]:
    """Factory: a fresh virtual key of a profile (closed at teardown)."""
    from station.virtual.authenticator import VirtualAuthenticator

    opened = []

    def make(profile: str = "yubikey-5-nfc-5.7", presence=None):
        key = VirtualAuthenticator.create(
            tmp_path / f"key-{len(opened)}.json", profile, presence=presence
        )
        opened.append(key)
        return key

    yield make
    for key in opened:
        key.close()


class PinInteraction(UserInteraction):
    """Supplies the PIN when the client asks for it; nothing else to do for a virtual key."""

    def __init__(self, pin: str) -> None:
        self._pin = pin

    def request_pin(self, permissions, rp_id):
        return self._pin


def _client(device: CtapDevice, origin: str) -> Fido2Client:
    return Fido2Client(
        device,
        DefaultClientDataCollector(origin),
        PinInteraction(TEST_PIN),
        extensions=[
            HmacSecretExtension(allow_hmac_secret=True),
            CredProtectExtension(),
            MinPinLengthExtension(),
            CredPropsExtension(),
        ],
    )


def client_roundtrip(device: CtapDevice) -> dict:
    """What a relying party does with a fresh key, through python-fido2's Fido2Client:
    set a PIN, register with the Graph-shaped options (rk, UV, hmac-secret, credProtect), then a
    credential with credProtect=3 and prf, sign in twice with prf. Returns what a test checks."""
    ClientPin(Ctap2(device)).set_pin(TEST_PIN)
    graph = _client(device, "https://login.microsoft.com")
    graph_reg = graph.make_credential(graph_creation_options())

    client = _client(device, "https://example.com")
    reg = client.make_credential(
        {
            "rp": {"id": "example.com", "name": "Example"},
            "user": {"id": b"user-0001", "name": "alice", "displayName": "Alice"},
            "challenge": os.urandom(32),
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
            "authenticatorSelection": {"residentKey": "required", "userVerification": "required"},
            "extensions": {
                "credentialProtectionPolicy": "userVerificationRequired",
                "enforceCredentialProtectionPolicy": True,
                "prf": {},
            },
        }
    )
    salt = b"\x5a" * 32
    request = {
        "rpId": "example.com",
        "challenge": os.urandom(32),
        "userVerification": "required",
        "extensions": {"prf": {"eval": {"first": salt}}},
    }
    first = client.get_assertion(request).get_response(0)
    second = client.get_assertion(dict(request, challenge=os.urandom(32))).get_response(0)
    return {"graph": graph_reg, "registration": reg, "assertions": (first, second)}


@pytest.fixture
def fido2_roundtrip() -> Callable[[CtapDevice], dict]:
    """The Fido2Client round trip (client_roundtrip) as a fixture."""
    return client_roundtrip


@pytest.fixture
def check_fido2_roundtrip() -> Callable[[dict], None]:
    """Asserts what a relying party would check on the round trip's results."""

    def check(result: dict) -> None:
        graph_data = result["graph"].response.attestation_object.auth_data
        assert graph_data.is_user_verified()
        assert graph_data.extensions["hmac-secret"] is True
        assert graph_data.extensions["credProtect"] == 1  # userVerificationOptional

        reg = result["registration"]
        auth_data = reg.response.attestation_object.auth_data
        assert auth_data.is_user_verified() and auth_data.is_user_present()
        assert auth_data.extensions["credProtect"] == 3
        assert reg.client_extension_results["prf"]["enabled"] is True
        credential = auth_data.credential_data
        first, second = result["assertions"]
        for assertion in (first, second):
            response = assertion.response
            assert response.authenticator_data.is_user_verified()
            assert assertion.raw_id == credential.credential_id
            credential.public_key.verify(
                bytes(response.authenticator_data) + response.client_data.hash, response.signature
            )
        prf_first = websafe_decode(first.client_extension_results["prf"]["results"]["first"])
        assert len(prf_first) == 32
        assert prf_first == websafe_decode(second.client_extension_results["prf"]["results"]["first"])
        assert second.response.authenticator_data.counter > first.response.authenticator_data.counter

    return check


# ---------------------------------------------------------------- virtual USB hub (virtual-transports)
@pytest.fixture
def virtual_hid_bus(tmp_path) -> Iterator[object]:
    """Virtual keys on a USB hub behind python-fido2's own HID enumeration (VirtualHidBus):
    `bus.plug_new(profile, fault=PLAN)` makes a fresh key and returns its hidraw path; every
    `fido2.hid.open_device(path)` / `CtapHidDevice.list_devices()` is a new opener (a second
    opener breaks the first one's channel, as on Linux); `bus.unplug(path)` pulls the key."""
    from station.virtual import new_virtual, set_plan
    from station.virtual.hid import VirtualHidBus

    bus = VirtualHidBus()
    made = []

    def plug_new(profile: str = "yubikey-5-nfc-5.7", fault: str | None = None) -> str:
        key = new_virtual(tmp_path / f"hub-{len(made)}.json", profile)
        made.append(key)
        if fault:
            set_plan(key, fault)
        return bus.plug(key)

    bus.plug_new = plug_new  # type: ignore[attr-defined]
    with bus.installed():
        yield bus
    bus.close()

"""A USB hub of virtual keys behind python-fido2's own USB-HID enumeration, for tests.

There is no hidraw in this kernel, so the one mocked part is the OS: python-fido2's
`list_descriptors()` (the hidraw nodes it finds) and `open_connection()` (opening one). Each
plugged key is one `VirtualHidDevice` for as long as it is plugged in: every opener gets its own
connection and every input report, as with hidraw, and python-fido2's real `CtapHidDevice`
speaks CTAPHID to it. Pulling a key closes every connection to it (reads and writes then fail
with OSError, as hidraw's ENODEV); a wedged key swallows every output report and never answers.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from pathlib import Path

from fido2.hid.base import CtapHidConnection

from station.virtual import VirtualAuthenticator, new_virtual
from station.virtual.hid import VirtualHidDevice


class _U2fOnlyHidDevice(VirtualHidDevice):
    """A key whose CTAPHID_INIT offers no CBOR (a FIDO U2F-only key): python-fido2's Ctap2
    refuses it with ValueError("Device does not support CTAP2.")."""

    @property
    def capabilities(self):
        from fido2.hid import CAPABILITY

        return CAPABILITY.WINK


class _Port:
    def __init__(self, path: str, statefile: Path, authenticator: VirtualAuthenticator, u2f_only: bool) -> None:
        self.path, self.statefile, self.authenticator = path, statefile, authenticator
        self.device = (_U2fOnlyHidDevice if u2f_only else VirtualHidDevice)(authenticator)
        self.descriptor = dataclasses.replace(self.device.descriptor, path=path)
        self.connections: list[_Connection] = []
        self.wedged = threading.Event()
        self.opened = 0
        self.most_openers = 0  # the most connections open at once: a held key must never get a second


class _Connection(CtapHidConnection):
    def __init__(self, port: _Port) -> None:
        self.port = port
        self.inner = port.device.connect()

    def write_packet(self, data: bytes) -> None:
        if self.port.wedged.is_set():
            if self.inner._closed:
                raise OSError(19, "No such device")
            return  # a wedged key takes the report and never answers
        self.inner.write_packet(data)

    def read_packet(self) -> bytes:
        return self.inner.read_packet()

    def close(self) -> None:
        if self in self.port.connections:
            self.port.connections.remove(self)
        self.inner.close()


class UsbHub:
    """plug(profile) → a hidraw path; unplug(path); wedge(path); `opened(path)` counts opens."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self.ports: dict[str, _Port] = {}
        self.unplugged_openers: list[int] = []

    def plug(self, profile: str = "yubikey-5-nfc-5.7", *, path: str | None = None, statefile: Path | None = None,
             u2f_only: bool = False, **create) -> str:
        number = next(self._numbers)
        path = path or f"/dev/hidraw{number}"
        if statefile is None:
            statefile = self.folder / f"usb-key-{number}.json"
            new_virtual(statefile, profile, **create).close()
        port = _Port(path, statefile, VirtualAuthenticator.open(statefile), u2f_only)
        with self._lock:
            assert path not in self.ports, f"{path} is taken"
            self.ports[path] = port
        return path

    def unplug(self, path: str) -> None:
        with self._lock:
            port = self.ports.pop(path, None)
        if port is None:
            return
        self.unplugged_openers.append(port.most_openers)
        for connection in list(port.connections):
            connection.close()
        port.authenticator.close()

    def wedge(self, path: str) -> None:
        self.ports[path].wedged.set()

    def serial(self, path: str) -> str:
        return str(self.ports[path].authenticator.state.serial)

    def opened(self, path: str) -> int:
        return self.ports[path].opened if path in self.ports else 0

    def most_openers(self) -> int:
        """The most connections any key ever had open at once (1: no key was opened twice)."""
        return max([p.most_openers for p in self.ports.values()] + self.unplugged_openers)

    def close(self) -> None:
        for path in list(self.ports):
            self.unplug(path)

    # -- what python-fido2 calls -------------------------------------------------------------
    def list_descriptors(self):
        with self._lock:
            return [port.descriptor for port in self.ports.values()]

    def open_connection(self, descriptor) -> CtapHidConnection:
        with self._lock:
            port = self.ports.get(str(descriptor.path))
        if port is None:
            raise OSError(2, f"No such file or directory: {descriptor.path}")
        port.opened += 1
        connection = _Connection(port)
        port.connections.append(connection)
        port.most_openers = max(port.most_openers, len(port.connections))
        return connection


def install(monkeypatch, folder: Path) -> UsbHub:
    """Put a UsbHub behind python-fido2's enumeration for one test."""
    from fido2 import hid

    hub = UsbHub(folder)
    monkeypatch.setattr(hid, "list_descriptors", hub.list_descriptors)
    monkeypatch.setattr(hid, "open_connection", hub.open_connection)
    return hub

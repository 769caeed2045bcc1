"""Which slot owns which physical key: lock files, insertion, removal and a quick swap.

A key is opened only under its lock file (`<lock dir>/<spec>.lock`, an flock), so no slot of
this daemon, no second daemon and no `station devices` ever opens a key someone else holds:
opening is what disturbs a key (a second CTAPHID opener makes python-fido2 fail with "Wrong
channel"; a PC/SC probe's disconnect powers the card down under the slot writing it). Listing
comes first and opens nothing: hidraw descriptors, reader names and pcscd's reader states.

A slot keeps its key's lock until the key is physically gone: over USB the slot's own handle
stops answering a CTAPHID PING (a key swapped in on the same hidraw path is a new handle the
old one never reaches); over PC/SC pcscd's card event count moves (an insertion or a removal
between two looks). A physical key is named by AAGUID + serial; the path is only where it was.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from station.device.discovery import (
    TRANSPORT_HID,
    TRANSPORT_PCSC,
    Device,
    candidates,
    check_spec,
    new_virtual_key,
    open_device,
    reader_states,
)
from station.device.faults import TRANSPORT_ERRORS, with_action
from station.errors import DeviceError, StationError, UsageError

LOCK_DIR_ENV = "STATION_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("/run/fido-station")

T = TypeVar("T")


# ------------------------------------------------------------------------------ lock files
def lock_dir(folder: Path | None = None) -> Path:
    """Where device lock files live: `folder`, else $STATION_LOCK_DIR, else /run/fido-station
    (when it can be made), else a folder of this user under the temporary directory."""
    for candidate in (folder, os.environ.get(LOCK_DIR_ENV), DEFAULT_LOCK_DIR):
        if not candidate:
            continue
        path = Path(candidate)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    path = Path(tempfile.gettempdir()) / f"fido-station-{os.getuid()}"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


class DeviceLock:
    """An exclusive flock on one device's lock file, held until `release()`. flock locks belong
    to an open file, so a second lock of the same device fails in this process too."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __repr__(self) -> str:
        return f"DeviceLock({str(self.path)!r})"


def _lock_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_") + ".lock"


def try_lock(spec: str, folder: Path | None = None) -> DeviceLock | None:
    """The lock of the device `spec`, or None when a slot or another process holds it."""
    path = lock_dir(folder) / _lock_name(spec)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return DeviceLock(path, fd)


# ------------------------------------------------------------------------------ deadlines
class Wedged(Exception):
    """A call into a key did not return within its deadline."""


def run_with_deadline(func: Callable[[], T], seconds: float, *, name: str = "key-call") -> T:
    """`func()` in a helper thread; Wedged if it has not returned after `seconds` (the thread is
    left to finish on its own: a wedged key's read only returns once the key is pulled)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # handed to the caller's thread as is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=call, name=name, daemon=True).start()
    if not done.wait(seconds):
        raise Wedged(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ------------------------------------------------------------------------------ the pool
@dataclass
class Refusal:
    """A key a slot opened (and holds) but cannot use: `error` says why and what to do."""

    spec: str
    label: str
    error: StationError
    device: Device | None = None
    candidate: Any = None


class KeyPool:
    """Hands each slot a key no other slot or process holds.

    `virtual:FOLDER/` makes a fresh virtual key for every item; a named spec (`virtual:FILE`,
    `hid:PATH`, `pcsc:READER`) serves one slot; `auto`/`hid`/`pcsc` watch for inserted keys.
    """

    def __init__(self, spec: str, *, slots: int = 1, profile: str | None = None,
                 virtual_transport: str = "direct", virtual_options: dict | None = None,
                 poll_seconds: float = 1.0, open_timeout: float = 30.0, lock_folder: Path | None = None) -> None:
        self.spec = spec
        self.kind, self.arg = check_spec(spec)
        self.profile = profile
        self.virtual_transport = virtual_transport
        self.virtual_options = virtual_options or {}
        self.poll_seconds = poll_seconds
        self.open_timeout = open_timeout
        self.lock_folder = lock_folder
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._events: dict[str, int] = {}  # pcsc reader → card event count when it was opened
        if self.kind == "virtual" and self.arg.endswith("/"):
            if not profile:
                raise UsageError("virtual:FOLDER/ makes a fresh key per item: name its --profile")
            Path(self.arg).mkdir(parents=True, exist_ok=True)
        elif self.names_one_key() and slots > 1:
            raise UsageError(f"{spec} names one key: it can serve one slot, not {slots}")

    def fresh_virtual(self) -> bool:
        return self.kind == "virtual" and self.arg.endswith("/")

    def names_one_key(self) -> bool:
        return not self.fresh_virtual() and (self.kind == "virtual" or bool(self.arg))

    def watches_insertions(self) -> bool:
        """True when another key can come along (fresh virtual keys, or a hub being watched)."""
        return self.fresh_virtual() or self.kind != "virtual"

    # -- taking a key ------------------------------------------------------------------------
    def take(self, stop: threading.Event, idle: Callable[[], bool] | None = None) -> Device | Refusal | None:
        """The next key for a slot (or a key it holds but cannot use), or None once `stop` is set
        or `idle()` (asked while no key is there) says to stop waiting."""
        while not stop.is_set():
            got = self._try_take()
            if got is not None:
                return got
            if idle is not None and idle():
                return None
            stop.wait(self.poll_seconds)
        return None

    def _try_take(self) -> Device | Refusal | None:
        if self.fresh_virtual():
            spec = new_virtual_key(Path(self.arg) / f"key-{uuid.uuid4().hex[:16]}.json", self.profile)
            return self._hold(open_device(spec, virtual_transport=self.virtual_transport, **self.virtual_options))
        if self.kind == "virtual":
            with self._lock:
                if self.spec in self._held:
                    return None
            try:
                return self._hold(open_device(self.spec, virtual_transport=self.virtual_transport,
                                              **self.virtual_options))
            except UsageError:
                return None
        try:
            found = candidates(self.kind, self.arg)
        except UsageError:
            return None  # pcscd away for a moment (or not installed): keep watching
        for candidate in found:
            with self._lock:
                if candidate.spec in self._held:
                    continue
            lock = try_lock(candidate.spec, self.lock_folder)
            if lock is None:
                continue  # another process (a second daemon, `station devices`) holds it
            with self._lock:
                self._held.add(candidate.spec)
            got = self._open_locked(candidate, lock)
            if got is not None:
                return got
        return None

    def _open_locked(self, candidate, lock: DeviceLock) -> Device | Refusal | None:
        if candidate.transport == TRANSPORT_PCSC:
            events = reader_states([candidate.path]).get(candidate.path, (True, 0))[1]
            with self._lock:
                self._events[candidate.spec] = events
        try:
            device = run_with_deadline(candidate.open, self.open_timeout, name=f"open {candidate.path}")
        except Wedged:
            err = with_action(DeviceError(f"{candidate.transport} {candidate.path}: the key did not answer "
                                          f"within {self.open_timeout:g} s"), "unplug")
            return Refusal(candidate.spec, f"{candidate.transport} {candidate.path}", err, candidate=candidate,
                           device=_LockOnly(lock, candidate))
        except StationError as exc:
            if exc.key_action is None:
                with_action(exc, "set_aside")
            return Refusal(candidate.spec, f"{candidate.transport} {candidate.path}", exc, candidate=candidate,
                           device=_LockOnly(lock, candidate))
        except BaseException:
            lock.release()
            self._forget(candidate.spec)
            raise
        device.lock = lock
        return device

    def _hold(self, device: Device) -> Device:
        with self._lock:
            self._held.add(device.spec)
        return device

    def _forget(self, spec: str) -> None:
        with self._lock:
            self._held.discard(spec)
            self._events.pop(spec, None)

    # -- giving it back ------------------------------------------------------------------------
    def give_back(self, device, stop: threading.Event, *, wait_removal: bool) -> None:
        """Free the key; with `wait_removal` (a key written to, or refused) first wait until it is
        physically gone, holding its lock, so no slot takes it again while it is still there."""
        try:
            if wait_removal and self.kind != "virtual":
                while not stop.is_set() and self.present(device):
                    stop.wait(self.poll_seconds)
        finally:
            device.close()
            self._forget(device.spec)

    def present(self, device) -> bool:
        """Is this very key still attached where it was?"""
        if device.transport == TRANSPORT_PCSC:
            states = reader_states([device.path])
            if device.path not in states:
                return True  # pcscd does not answer: assume nothing moved
            present, count = states[device.path]
            with self._lock:
                seen = getattr(self, "_events", {}).get(device.spec, count)
            return present and count == seen
        if device.transport == TRANSPORT_HID:
            ctap_device = getattr(device, "ctap_device", None)
            if ctap_device is None or getattr(device, "wedged", False):
                return self._same_key_at(device)
            try:
                run_with_deadline(lambda: ctap_device.ping(b"station"), 5.0, name=f"ping {device.path}")
            except (Wedged, *TRANSPORT_ERRORS):
                return False
            return True
        return True  # a virtual key stays where its state file is


    def _same_key_at(self, device) -> bool:
        """A key that cannot be pinged (wedged, or never opened): gone when its node is, or when a
        different key answers on that node (a quick swap). A key that still hangs is still there."""
        found = [c for c in candidates("hid", device.path)]
        if not found:
            return False
        key_id = getattr(device, "key_id", None)
        if key_id is None:
            return True
        try:
            probe = run_with_deadline(found[0].open, 2.0, name=f"probe {device.path}")
        except Wedged:
            return True
        except (StationError, *TRANSPORT_ERRORS):
            return False  # something else answers there now
        try:
            return probe.key_id == key_id
        finally:
            probe.close()


class _LockOnly:
    """A refused key: its lock and where it is, for `give_back` (it may hold no open handle)."""

    def __init__(self, lock: DeviceLock, candidate) -> None:
        self.lock, self.spec, self.transport, self.path = lock, candidate.spec, candidate.transport, candidate.path
        self.ctap_device = None

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


__all__ = ["DeviceLock", "KeyPool", "Refusal", "Wedged", "lock_dir", "run_with_deadline", "try_lock"]

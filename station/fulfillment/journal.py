"""The station's local journal: what it must not forget across a crash (kill -9, power loss).

An append-only file of JSON lines, each fsynced before the step it announces is taken:

    claimed    item leased from the service (nothing written to a key yet)
    touching   the key is about to be written (setPIN): from here the key needs a reset if the
               item does not finish
    sealed     the sealed product_data (JWEs only the customer can open) and the requestIds
    failed     the item's error, decided but not yet acknowledged by the service
    submitted  the service acknowledged the result; the item is closed
    released   the item went back to the queue untouched, or after an interrupted key was reported
    stale      the service gave the item's claim to another: the key in hand must not ship

No PIN, no decrypted request and no key material is ever written here: a sealed response is
ciphertext for the customer. On start the station replays the journal (see runner.recover).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from station.errors import StationError
from station.fsutil import atomic_write

JOURNAL_FILE = "journal.jsonl"
CLOSING_EVENTS = ("submitted", "released", "stale")


class JournalError(StationError):
    code = "journal"


@dataclass
class OpenItem:
    """An item the journal has not seen closed, with the last thing known of it."""

    item_id: int
    last: str
    shipment_id: str | None = None
    serial: str | None = None
    device: str | None = None
    product_data: dict | None = None
    error: dict | None = None
    request_ids: list[str] = field(default_factory=list)
    #: the claim's generation (the service refuses a result of a superseded claim)
    generation: int | None = None


class Journal:
    """A folder (mode 0700) holding journal.jsonl (mode 0600). Thread-safe appends."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.folder, 0o700)
        except OSError as exc:
            raise JournalError(f"{self.folder}: cannot use it as the journal folder ({exc.strerror})") from None
        self.path = self.folder / JOURNAL_FILE
        self._lock = threading.Lock()
        self._fulfilled: set[str] = set()
        self._open: dict[int, OpenItem] = {}
        self._replay()

    # -- writing ------------------------------------------------------------------------------
    def record(self, event: str, item_id: int, **data: Any) -> None:
        """Append one event and fsync it before returning.

        The lock covers the append only: the fsync comes after it, so slots recording at once
        wait on the disk together (one fsync makes every line written before it durable)
        instead of one after another behind the lock."""
        line = json.dumps({"at": round(time.time(), 3), "event": event, "item": item_id, **data},
                          separators=(",", ":")) + "\n"
        with self._lock:  # the file compact() may replace, the line, and the state in that order
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                self._apply(json.loads(line))
            except BaseException:
                os.close(fd)
                raise
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def compact(self) -> None:
        """Rewrite the file with only what is still needed: open items and the fulfilled ids."""
        with self._lock:
            lines = [json.dumps({"event": "fulfilled", "item": 0, "request_ids": sorted(self._fulfilled)})]
            for item in self._open.values():
                lines.append(json.dumps({"event": item.last, "item": item.item_id, **_item_data(item)}))
            atomic_write(self.path, ("\n".join(lines) + "\n").encode(), mode=0o600)

    # -- reading ------------------------------------------------------------------------------
    def open_items(self) -> list[OpenItem]:
        with self._lock:
            return list(self._open.values())

    def was_fulfilled(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._fulfilled

    def _replay(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for raw in handle:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue  # a line torn by a crash mid-write: nothing was acted on after it
                self._apply(entry)

    def _apply(self, entry: dict) -> None:
        event, item_id = entry.get("event"), entry.get("item")
        if event == "fulfilled":
            self._fulfilled.update(entry.get("request_ids", []))
            return
        if event in CLOSING_EVENTS:
            self._open.pop(item_id, None)
            return
        item = self._open.setdefault(item_id, OpenItem(item_id=item_id, last=event))
        item.last = event
        for name in ("shipment_id", "serial", "device", "product_data", "error", "generation"):
            if entry.get(name) is not None:
                setattr(item, name, entry[name])
        if entry.get("request_ids"):
            item.request_ids = list(entry["request_ids"])
        if event == "sealed":
            self._fulfilled.update(item.request_ids)


def _item_data(item: OpenItem) -> dict:
    data = {k: getattr(item, k) for k in ("shipment_id", "serial", "device", "product_data", "error", "generation")}
    data["request_ids"] = item.request_ids
    return {k: v for k, v in data.items() if v is not None}

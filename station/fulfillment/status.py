"""The daemon's report of its slots to the service (`POST /v1/station/status`), for the
operator's view of the floor: which slot waits for a key, which one programs which item on
which key, which one waits for a touch or for the key to be pulled.

`StatusReporter` sits between the daemon and its event sink: it keeps one row per slot from
the events (runner.py's `emit`), and a thread posts the table whenever it changed, and every
`every` seconds even when nothing did (the station's heartbeat). Reporting is best effort: a
service that is away is told next time; one that does not know the route (404) is not asked
again. Events carry no secret, and the report takes only the members below from them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from station.fulfillment.client import FulfillmentClient
from station.fulfillment.errors import NotFound, ServiceError

#: event kind → the slot state it leaves behind (other kinds leave the state as it is)
SLOT_STATES = {
    "waiting_key": "waiting_key",
    "claimed": "programming",
    "step": "programming",
    "touch": "waiting_touch",
    "fulfilled": "fulfilled",
    "failed": "failed",
    "not_fresh": "not_fresh",
    "remove_key": "remove_key",
    "queue_empty": "queue_empty",
    "abandoned": "abandoned",
    "fatal": "fatal",
}
_KEEPS_ITEM = {"claimed", "step", "touch", "fulfilled", "failed"}


class StatusReporter:
    """`Station(opts, on_event=StatusReporter(client, slots=N, on_event=sink))`, then
    `start()` and, when the daemon stops, `stop()` (a last report is sent)."""

    def __init__(self, client: FulfillmentClient, *, slots: int, every: float = 10.0,
                 on_event: Callable[[dict], None] | None = None, version: str | None = None) -> None:
        self.client = client
        self.every = every
        self.version = version
        self._forward = on_event or (lambda event: None)
        self._lock = threading.Lock()
        now = time.time()
        self._slots = {n: {"slot": n, "state": "starting", "since": now} for n in range(1, slots + 1)}
        self._done = 0
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.enabled = True

    def __call__(self, event: dict[str, Any]) -> None:
        self._note(event)
        self._forward(event)

    def _note(self, event: dict[str, Any]) -> None:
        kind, slot = event.get("kind"), event.get("slot")
        if kind == "fulfilled":
            with self._lock:
                self._done += 1
        if kind not in SLOT_STATES or slot not in self._slots:
            return
        with self._lock:
            row = self._slots[slot]
            state = SLOT_STATES[kind]
            if state != row["state"]:
                row["since"] = time.time()
            row["state"] = state
            if kind == "claimed":
                row.update(item=event.get("item"), shipment=event.get("shipment"), device=event.get("device"),
                           model=event.get("model"), serial=_decimal(event.get("serial")), message=None)
            elif kind not in _KEEPS_ITEM:
                for member in ("item", "shipment", "serial", "model"):
                    row.pop(member, None)
            if kind == "step":
                row["message"] = str(event.get("step"))[:300]
            elif kind in ("failed", "not_fresh", "fatal"):
                row["message"] = str(event.get("error_code") or event.get("message") or kind)[:300]
            elif kind in ("waiting_key", "queue_empty"):
                row["message"] = None
        self._changed.set()

    def report(self) -> dict[str, Any]:
        """The report as it would be posted now."""
        with self._lock:
            slots = [{k: v for k, v in row.items() if v is not None} for _, row in sorted(self._slots.items())]
            return {"slots": slots, "version": self.version, "items_done": self._done}

    def send(self) -> bool:
        """Post the report once; False when the service could not take it."""
        if not self.enabled:
            return False
        try:
            self.client.report_status(self.report())
            return True
        except NotFound:
            self.enabled = False  # a service from before the route: stop asking
        except ServiceError:
            pass  # away for a moment: the next report says it all
        return False

    def start(self) -> StatusReporter:
        self._thread = threading.Thread(target=self._loop, name="status-report", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._changed.wait(self.every)
            if self._stop.is_set():
                break
            self._changed.clear()
            self.send()
            self._stop.wait(0.2)  # at most five reports a second, however busy the slots are

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for row in self._slots.values():
                row.update(state="stopped", message=None)
        self.send()


def _decimal(serial: Any) -> str | None:
    return serial if isinstance(serial, str) and serial.isdigit() and len(serial) <= 20 else None

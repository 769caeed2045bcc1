"""`station run`: the station daemon. Waits for a key, claims an item, programs the key, submits
the sealed responses, tells the technician to remove the key, and repeats — in N slots at once.

Crash safety rests on the journal (journal.py), written before each step it names:
- a sealed result not yet acknowledged is resubmitted on restart (submit is idempotent);
- an item whose key was being written when the station died is reported (that key needs a reset)
  and released back to the queue; an item claimed but untouched is released;
- a requestId this station already fulfilled is refused (`invalid_request`), so no order is
  programmed twice even if the service hands it out again.
SIGTERM abandons an item whose key was not yet written and finishes one whose key was.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from station.device.discovery import Device, check_spec, list_devices, new_virtual_key, open_device
from station.errors import StationError, UsageError
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.errors import Conflict, NotFound, ServiceError, ServiceUnavailable
from station.fulfillment.journal import Journal
from station.protocol.keys import KeyStore
from station.provision.genuine import TrustStore
from station.provision.item import provision_item

#: Fault injection for the crash matrix (tests and scripts/fault_matrix.py only): the process
#: kills itself with SIGKILL right after the named journal event ("claimed", "touching",
#: "credential-1", "sealed", "submitting", ...). Unset in production.
FAULT_ENV = "STATION_FAULT_KILL_AFTER"

Event = dict[str, Any]


class Abandon(Exception):
    """Stop the current item before its key is written (SIGTERM, or a lost lease)."""


@dataclass
class RunOptions:
    service: str
    token: str
    spec: str
    keys_dir: Path
    journal_dir: Path
    slots: int = 1
    once: bool = False
    until_empty: bool = False
    lease_seconds: int = 120
    heartbeat_seconds: float = 20.0
    poll_seconds: float = 1.0
    profile: str | None = None
    virtual_transport: str = "direct"
    trust_test_ca: bool = False
    roots: Path | None = None
    trust_dir: Path | None = None  # the operator's trust store (station.trust.store)
    #: passed to the virtual keys the station opens (presence policy, latency model): bench and tests
    virtual_options: dict = field(default_factory=dict)


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------ keys for slots
class KeyPool:
    """Hands each slot a key no other slot holds. `virtual:FOLDER/` makes a fresh virtual key for
    every item; a named spec serves one slot; `auto`/`hid`/`pcsc` watch for inserted keys."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.kind, self.arg = check_spec(opts.spec)
        self._lock = threading.Lock()
        self._held: set[str] = set()
        if self.kind == "virtual" and self.arg.endswith("/"):
            if not opts.profile:
                raise UsageError("virtual:FOLDER/ makes a fresh key per item: name its --profile")
            Path(self.arg).mkdir(parents=True, exist_ok=True)
        elif (self.kind == "virtual" or ":" in opts.spec) and opts.slots > 1:
            raise UsageError(f"{opts.spec} names one key: it can serve one slot, not {opts.slots}")

    def fresh_virtual(self) -> bool:
        return self.kind == "virtual" and self.arg.endswith("/")

    def watches_insertions(self) -> bool:
        """True when another key can come along (fresh virtual keys, or a hub being watched)."""
        return self.fresh_virtual() or (self.kind != "virtual" and ":" not in self.opts.spec)

    def take(self, stop: threading.Event) -> Device | None:
        """The next key for a slot, or None once `stop` is set."""
        while not stop.is_set():
            device = self._try_take()
            if device is not None:
                return device
            stop.wait(self.opts.poll_seconds)
        return None

    def _try_take(self) -> Device | None:
        if self.fresh_virtual():
            spec = new_virtual_key(Path(self.arg) / f"key-{uuid.uuid4().hex[:16]}.json", self.opts.profile)
            return self._hold(open_device(spec, virtual_transport=self.opts.virtual_transport,
                                          **self.opts.virtual_options))
        if self.kind == "virtual" or ":" in self.opts.spec:
            with self._lock:
                if self.opts.spec in self._held:
                    return None
            try:
                return self._hold(open_device(self.opts.spec, virtual_transport=self.opts.virtual_transport,
                                              **self.opts.virtual_options))
            except UsageError:
                return None
        for device in list_devices():
            if self.kind != "auto" and device.spec.split(":", 1)[0] != self.kind:
                device.close()
                continue
            with self._lock:
                free = device.spec not in self._held
            if free:
                return self._hold(device)
            device.close()
        return None

    def _hold(self, device: Device) -> Device:
        with self._lock:
            self._held.add(device.spec)
        return device

    def give_back(self, device: Device, stop: threading.Event, *, wait_removal: bool) -> None:
        """Close the key; for hardware wait until it is pulled out before its spec is free."""
        device.close()
        if wait_removal and not (self.kind == "virtual"):
            while not stop.is_set() and any(d.spec == device.spec for d in _closing(list_devices())):
                stop.wait(self.opts.poll_seconds)
        with self._lock:
            self._held.discard(device.spec)


def _closing(devices: list[Device]) -> list[Device]:
    for d in devices:
        d.close()
    return devices


# ------------------------------------------------------------------------------ the daemon
class Station:
    def __init__(self, opts: RunOptions, *, on_event: Callable[[Event], None] | None = None,
                 client: FulfillmentClient | None = None, pool: KeyPool | None = None) -> None:
        self.opts = opts
        self.keystore = KeyStore.open(opts.keys_dir)
        self.trust = TrustStore.default(operator_roots=opts.roots, trust_dir=opts.trust_dir,
                                        trust_test_ca=opts.trust_test_ca or opts.spec.startswith("virtual:"))
        self.journal = Journal(opts.journal_dir)
        self.client = client or FulfillmentClient(opts.service, opts.token)
        self.pool = pool or KeyPool(opts)
        self.stop = threading.Event()
        self._emit = on_event or (lambda event: None)
        self._done_lock = threading.Lock()
        self.done = 0
        self.fatal: StationError | None = None

    def emit(self, **event: Any) -> None:
        self._emit(event)

    # -- recovery -----------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish what a previous run of this station left open (see module docstring)."""
        for item in self.journal.open_items():
            if item.last == "sealed":
                self._submit(item.item_id, product_data=item.product_data, serial=item.serial, recovered=True)
            elif item.last == "failed":
                self._submit(item.item_id, error=item.error, serial=item.serial, recovered=True)
            else:
                touched = item.last != "claimed"
                if touched:
                    self.emit(kind="interrupted_key", item=item.item_id, serial=item.serial, device=item.device,
                              message=f"item {item.item_id} was interrupted after its key was written: "
                                      f"reset key {item.serial or item.device} before reuse")
                self._release(item.item_id, touched=touched)
        self.journal.compact()

    # -- running ------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the slots until stopped (or, with --once, until one item is done). The number of
        items finished."""
        self.recover()
        threads = [threading.Thread(target=self._slot, args=(n + 1,), name=f"slot-{n + 1}", daemon=True)
                   for n in range(self.opts.slots)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.done

    def _slot(self, slot: int) -> None:
        while not self.stop.is_set():
            self.emit(kind="waiting_key", slot=slot)
            try:
                device = self.pool.take(self.stop)
            except StationError as exc:
                self.fatal = exc
                self.emit(kind="fatal", slot=slot, message=str(exc))
                self.stop.set()
                return
            if device is None:
                return
            written = False
            try:
                written = self._one_item(slot, device)
            except ServiceUnavailable as exc:  # the service is away for a moment
                self.emit(kind="service_error", slot=slot, message=exc.message)
                self.stop.wait(self.opts.poll_seconds)
            except StationError as exc:  # a problem no retry mends (a bad token, a key store gone)
                self.fatal = exc
                self.emit(kind="fatal", slot=slot, message=str(exc))
                self.stop.set()
            finally:
                if written:
                    self.emit(kind="remove_key", slot=slot, device=device.label)
                self.pool.give_back(device, self.stop, wait_removal=written)
            if self.opts.once and self.done:
                self.stop.set()

    def _claim(self, slot: int):
        while not self.stop.is_set():
            claim = self.client.claim(self.opts.lease_seconds)
            if claim is not None:
                return claim
            self.emit(kind="queue_empty", slot=slot)
            if self.opts.once or self.opts.until_empty:
                self.stop.set()
                return None
            self.stop.wait(self.opts.poll_seconds)
        return None

    def _one_item(self, slot: int, device: Device) -> bool:
        """Claim and program one item on `device`. True when the key was written to."""
        claim = self._claim(slot)
        if claim is None:
            return False
        item_id = claim.item_id
        self.journal.record("claimed", item_id, shipment_id=claim.shipment_id, device=device.spec,
                            serial=device.identity.serial)
        _fault_point("claimed")
        self.emit(kind="claimed", slot=slot, item=item_id, shipment=claim.shipment_id, model=device.short_model,
                  serial=device.identity.serial, device=device.spec)
        started = time.monotonic()
        state = {"touched": False, "credentials": 0}
        lost_lease = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(item_id, lost_lease), daemon=True)
        beat.start()

        def on_step(name: str, data: dict) -> None:
            if name == "preflight":
                if self.stop.is_set() or lost_lease.is_set():
                    raise Abandon()
                self.journal.record("touching", item_id, serial=device.identity.serial, device=device.spec)
                state["touched"] = True
                _fault_point("touching")
            if name == "credential":
                state["credentials"] += 1
                _fault_point(f"credential-{state['credentials']}")
            self.emit(kind="step", slot=slot, item=item_id, step=name, elapsed=round(time.monotonic() - started, 2))

        try:
            result = provision_item(
                device=device,
                pin_request_jwe=claim.fido_pin_request,
                credential_request_jwes=list(claim.fido_credential_requests),
                keystore=self.keystore,
                trust=self.trust,
                on_touch=lambda: self.emit(kind="touch", slot=slot, item=item_id, device=device.label),
                on_step=on_step,
                already_fulfilled=self.journal.was_fulfilled,
            )
        except Abandon:
            self._release(item_id, touched=False)
            self.emit(kind="abandoned", slot=slot, item=item_id)
            return False
        except StationError as exc:
            if exc.code == "device_not_fresh" and not state["touched"]:
                self._release(item_id, touched=False)
                self.emit(kind="not_fresh", slot=slot, item=item_id, device=device.label, message=exc.message)
                if not self.pool.watches_insertions():
                    self.stop.set()  # the one named key will stay not fresh until it is reset
                return True  # the technician must pull this key (and reset it)
            error = {"error_code": exc.code, "error_message": exc.message}
            self.journal.record("failed", item_id, error=error, serial=device.identity.serial)
            self._submit(item_id, error=error, serial=device.identity.serial)
            self.emit(kind="failed", slot=slot, item=item_id, error_code=exc.code, message=exc.message,
                      key_touched=state["touched"], device=device.label)
            return state["touched"]
        finally:
            beat_stop(beat, lost_lease)
        self.journal.record("sealed", item_id, product_data=result.product_data, request_ids=result.request_ids,
                            serial=device.identity.serial)
        _fault_point("sealed")
        self._submit(item_id, product_data=result.product_data, serial=device.identity.serial)
        with self._done_lock:
            self.done += 1
        self.emit(kind="fulfilled", slot=slot, item=item_id, shipment=claim.shipment_id,
                  serial=device.identity.serial, elapsed=round(time.monotonic() - started, 2))
        return True

    def _heartbeat(self, item_id: int, lost: threading.Event) -> None:
        while not lost.wait(self.opts.heartbeat_seconds):
            try:
                self.client.heartbeat(item_id, self.opts.lease_seconds)
            except (Conflict, NotFound):
                lost.set()  # the lease is gone: the item may already be another station's
                return
            except ServiceError:
                continue  # the service is away for a moment; the lease has slack

    def _submit(self, item_id: int, *, product_data=None, error=None, serial=None, recovered=False) -> None:
        """Submit until the service acknowledges; a result is never dropped: if the station is
        stopped first, it stays in the journal and the next start resubmits it."""
        _fault_point("submitting")
        delay = self.opts.poll_seconds
        while True:
            try:
                self.client.submit(item_id, product_data=product_data, error=error, serial_number=serial)
                _fault_point("acknowledged")
                break
            except Conflict as exc:
                # the service holds a different result for this item: ours stays in the journal file
                self.emit(kind="conflict", item=item_id, message=exc.message)
                break
            except ServiceUnavailable as exc:
                self.emit(kind="service_error", item=item_id, message=exc.message)
                if self.stop.wait(delay):
                    raise
                delay = min(delay * 2, 30.0)
        self.journal.record("submitted", item_id)
        if recovered:
            self.emit(kind="resubmitted", item=item_id)

    def _release(self, item_id: int, *, touched: bool) -> None:
        try:
            self.client.release(item_id)
        except (Conflict, NotFound):
            pass  # the lease already ran out: the item is back in the queue
        self.journal.record("released", item_id, touched=touched)


def beat_stop(beat: threading.Thread, lost: threading.Event) -> None:
    """Stop a heartbeat thread (setting `lost` ends its wait)."""
    lost.set()
    if beat.is_alive() and beat is not threading.current_thread():
        beat.join(timeout=5)


def run_station(opts: RunOptions, *, on_event: Callable[[Event], None] | None = None) -> int:
    """`station run` with SIGTERM/SIGINT handling; the number of items finished. The slots are
    reported to the service for the operator's console as they change (status.py)."""
    from station.fulfillment.status import StatusReporter

    client = FulfillmentClient(opts.service, opts.token)  # one client (and TLS context) for both
    reporter = StatusReporter(client, slots=opts.slots, on_event=on_event)
    station = Station(opts, on_event=reporter, client=client)
    reporter.start()

    def stop(signum, frame):
        station.emit(kind="stopping", signal=signal.Signals(signum).name)
        station.stop.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        done = station.run()
        if station.fatal is not None:
            raise station.fatal
        return done
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        reporter.stop()
        station.client.close()

"""`station run`: the station daemon. Waits for a key, claims an item, programs the key, submits
the sealed responses, tells the technician to remove the key, and repeats — in N slots at once.

Crash safety rests on the journal (journal.py), written before each step it names:
- a sealed result not yet acknowledged is resubmitted on restart (submit is idempotent);
- an item whose key was being written when the station died is reported (that key needs a reset)
  and released back to the queue; an item claimed but untouched is released;
- a requestId this station already fulfilled is refused (`invalid_request`), so no order is
  programmed twice even if the service hands it out again.
SIGTERM abandons an item whose key was not yet written and finishes one whose key was.

Every fault is a named outcome (issue 12):
- a key's fault (pulled, wedged, not genuine, not fresh, PIN refused, unsupported) sends the
  item back to the queue with the key's error, which counts an attempt; only the request's own
  faults (`decrypt_failed`, `invalid_request`, `expired`) fail the item from here;
- every claim carries a generation: the station confirms it before the first write, heartbeats
  it while writing, and a submit refused as stale (409) means "do not ship: reset this key";
- a per-step watchdog gives up on a wedged key; a slot supervisor logs an unexpected exception
  to the journal folder's errors.log and restarts the slot; anything fatal stops the daemon
  with a non-zero exit status, so systemd restarts it. No traceback reaches the screen.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from station.device.discovery import Device
from station.device.faults import with_action
from station.device.pool import KeyPool as DevicePool
from station.device.pool import Refusal
from station.errors import REQUEST_ERROR_CODES, DeviceError, StationError
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.errors import STALE_LEASE, Conflict, NotFound, ServiceError, ServiceUnavailable
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


class LostLease(Exception):
    """The service gave the item's claim up while its key was being written: do not ship it."""


#: An unexpected exception restarts its slot; more than this many in RESTART_WINDOW stops the daemon.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
ERRORS_LOG = "errors.log"
log = logging.getLogger(__name__)


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
    #: the watchdog: a key that shows no progress (no step, no keepalive) this long is wedged
    step_timeout: float = 90.0
    #: how long opening a newly inserted key may take before it counts as wedged
    open_timeout: float = 30.0
    #: where the device lock files live (default: $STATION_LOCK_DIR or /run/fido-station)
    lock_dir: Path | None = None


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------ keys for slots
class KeyPool(DevicePool):
    """The daemon's pool (station.device.pool.KeyPool) built from its RunOptions."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        super().__init__(opts.spec, slots=opts.slots, profile=opts.profile, virtual_transport=opts.virtual_transport,
                         virtual_options=opts.virtual_options, poll_seconds=opts.poll_seconds,
                         open_timeout=opts.open_timeout, lock_folder=opts.lock_dir)


# ------------------------------------------------------------------------------ the daemon
class Station:
    def __init__(self, opts: RunOptions, *, on_event: Callable[[Event], None] | None = None,
                 client: FulfillmentClient | None = None, pool: DevicePool | None = None) -> None:
        self.opts = opts
        self.keystore = KeyStore.open(opts.keys_dir)
        self.trust = TrustStore.default(operator_roots=opts.roots, trust_dir=opts.trust_dir,
                                        trust_test_ca=opts.trust_test_ca or opts.spec.startswith("virtual:"))
        self.journal = Journal(opts.journal_dir)
        self.client = client or FulfillmentClient(opts.service, opts.token)
        self.pool = pool or KeyPool(opts)
        self.stop = threading.Event()
        #: --until-empty / --once found the queue empty: take no new item, finish the ones in hand
        self.draining = threading.Event()
        self._active = 0
        self._active_lock = threading.Lock()
        self._emit = on_event or (lambda event: None)
        self._done_lock = threading.Lock()
        self.done = 0
        self.fatal: StationError | None = None

    def emit(self, **event: Any) -> None:
        """Hand an event to the screen; a screen that fails (a closed pipe) never fails an item."""
        try:
            self._emit(event)
        except Exception as exc:  # noqa: BLE001 - the display is not the key's business
            self._log_unexpected(event.get("slot") or 0, exc)

    # -- recovery -----------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish what a previous run of this station left open (see module docstring)."""
        for item in self.journal.open_items():
            if item.last == "sealed":
                self._submit(item.item_id, product_data=item.product_data, serial=item.serial, recovered=True,
                             generation=item.generation)
            elif item.last == "failed":
                self._submit(item.item_id, error=item.error, serial=item.serial, recovered=True,
                             generation=item.generation)
            else:
                touched = item.last not in ("claimed",)
                if touched:
                    self.emit(kind="interrupted_key", item=item.item_id, serial=item.serial, device=item.device,
                              message=f"item {item.item_id} was interrupted after its key was written: "
                                      f"reset key {item.serial or item.device} before reuse")
                self._release(item.item_id, touched=touched, generation=item.generation)
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

    def _fail(self, slot: int | None, exc: StationError) -> None:
        self.fatal = exc
        self.emit(kind="fatal", slot=slot, message=str(exc))
        self.stop.set()

    def _slot(self, slot: int) -> None:
        """The slot supervisor: runs the slot's loop and restarts it after an unexpected
        exception (logged with its traceback to the journal folder, never to the screen)."""
        restarts: deque[float] = deque()
        while not self.stop.is_set():
            try:
                self._slot_loop(slot)
                return
            except Exception as exc:  # noqa: BLE001 - the supervisor's one broad catch
                where = self._log_unexpected(slot, exc)
                now = time.monotonic()
                restarts.append(now)
                while restarts and now - restarts[0] > RESTART_WINDOW_SECONDS:
                    restarts.popleft()
                if len(restarts) > MAX_RESTARTS:
                    self._fail(slot, StationError(
                        f"slot {slot} failed {len(restarts)} times within {RESTART_WINDOW_SECONDS:.0f} s "
                        f"(last: {type(exc).__name__}); details in {where}", code="slot_failed"))
                    return
                self.emit(kind="slot_restarted", slot=slot,
                          message=f"slot {slot}: unexpected {type(exc).__name__}; the slot restarted "
                                  f"(details in {where})")
                self.stop.wait(min(self.opts.poll_seconds * len(restarts), 5.0))

    def _log_unexpected(self, slot: int, exc: BaseException) -> Path:
        path = self.opts.journal_dir / ERRORS_LOG
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} slot {slot}\n{text}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            log.error("slot %s: %s", slot, text)
        return path

    def _drain(self) -> None:
        """No new items from now on; stop once no slot holds one."""
        self.draining.set()
        with self._active_lock:
            if self._active == 0:
                self.stop.set()

    def _slot_loop(self, slot: int) -> None:
        while not self.stop.is_set():
            if self.draining.is_set():  # another slot may still give an item back
                self.stop.wait(self.opts.poll_seconds)
                continue
            self.emit(kind="waiting_key", slot=slot)
            try:
                got = self.pool.take(self.stop, idle=self._idle)
            except StationError as exc:
                self._fail(slot, exc)
                return
            if got is None:
                continue
            if isinstance(got, Refusal):
                self.emit(kind="key_refused", slot=slot, device=got.label, spec=got.spec, error_code=got.error.code,
                          message=got.error.message, action=got.error.key_action)
                self.emit(kind="remove_key", slot=slot, device=got.label, spec=got.spec, action=got.error.key_action)
                self.pool.give_back(got.device, self.stop, wait_removal=True)
                continue
            device = got
            remove = False
            action = "ship"
            try:
                remove, action = self._one_item(slot, device)
            except ServiceUnavailable as exc:  # the service is away for a moment
                self.emit(kind="service_error", slot=slot, message=exc.message)
                self.stop.wait(self.opts.poll_seconds)
            except StationError as exc:  # a problem no retry mends (a bad token, a key store gone)
                self._fail(slot, exc)
            finally:
                if remove:
                    self.emit(kind="remove_key", slot=slot, device=device.label, spec=device.spec, action=action)
                self.pool.give_back(device, self.stop, wait_removal=remove)
            if self.opts.once and self.done:
                self.stop.set()

    def _idle(self) -> bool:
        """While a slot waits for a key: with --once or --until-empty, stop once nothing is queued."""
        if not (self.opts.once or self.opts.until_empty):
            return False
        if self.draining.is_set():
            return True
        try:
            if self.client.queued() == 0:
                self._drain()
                return True
        except ServiceUnavailable:
            pass
        return False

    def _claim(self, slot: int, device: Device):
        while not self.stop.is_set() and not self.draining.is_set():
            if self.pool.watches_insertions() and not self.pool.present(device):
                return None  # the key left while the queue was empty: wait for the next one
            claim = self.client.claim(self.opts.lease_seconds)
            if claim is not None:
                return claim
            self.emit(kind="queue_empty", slot=slot)
            if self.opts.once or self.opts.until_empty:
                self._drain()
                return None
            self.stop.wait(self.opts.poll_seconds)
        return None

    def _one_item(self, slot: int, device: Device) -> tuple[bool, str]:
        """Claim and program one item on `device`. (must the key be removed, what is done with it:
        "ship", "reset", "set_aside", "reuse", "unplug", "do_not_ship")."""
        with self._active_lock:
            self._active += 1
        try:
            claim = self._claim(slot, device)
            if claim is None:
                return False, "reuse"
            return self._claimed_item(slot, device, claim)
        finally:
            with self._active_lock:
                self._active -= 1
                if self.draining.is_set() and self._active == 0:
                    self.stop.set()

    def _claimed_item(self, slot: int, device: Device, claim) -> tuple[bool, str]:
        item_id, generation = claim.item_id, claim.generation
        self.journal.record("claimed", item_id, shipment_id=claim.shipment_id, device=device.spec,
                            serial=device.identity.serial, generation=generation)
        _fault_point("claimed")
        self.emit(kind="claimed", slot=slot, item=item_id, shipment=claim.shipment_id, model=device.short_model,
                  serial=device.identity.serial, device=device.spec, spec=device.spec, label=device.label,
                  attempts=claim.attempts,
                  generation=generation)
        started = time.monotonic()
        state = {"touched": False, "credentials": 0}
        lost_lease = threading.Event()
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(item_id, generation, lost_lease, beat_stop), daemon=True)
        beat.start()

        def on_step(name: str, data: dict) -> None:
            if name == "preflight":
                if self.stop.is_set() or lost_lease.is_set():
                    raise Abandon()
                try:  # the lease must still be ours before the first write (and is marked written)
                    self.client.confirm(item_id, self.opts.lease_seconds, generation=generation)
                except (Conflict, NotFound):
                    lost_lease.set()
                    raise Abandon() from None
                _fault_point("confirmed")
                self.journal.record("touching", item_id, serial=device.identity.serial, device=device.spec)
                state["touched"] = True
                _fault_point("touching")
            elif state["touched"] and lost_lease.is_set():
                raise LostLease()
            if name == "credential":
                state["credentials"] += 1
                _fault_point(f"credential-{state['credentials']}")
            self.emit(kind="step", slot=slot, item=item_id, step=name, elapsed=round(time.monotonic() - started, 2))

        try:
            result = self._provision_watched(slot, item_id, device, claim, on_step)
        except Abandon:
            if not lost_lease.is_set():
                self._release(item_id, touched=False, generation=generation)
                self.emit(kind="abandoned", slot=slot, item=item_id)
            else:
                self.journal.record("released", item_id, touched=False, stale=True)
                self.emit(kind="lost_lease", slot=slot, item=item_id, device=device.label,
                          message=f"item {item_id}: the lease was lost before the key was written; "
                                  "nothing was written to it")
            return False, "reuse"
        except LostLease:
            return True, self._stale(slot, item_id, device, "the lease was lost while the key was written")
        except StationError as exc:
            return True, self._item_failed(slot, item_id, generation, device, exc, state["touched"])
        except BaseException:
            # a bug of the station's own: the item goes back untouched (no attempt counted) and
            # the supervisor restarts the slot; a key already written is named for a reset
            self._release(item_id, touched=state["touched"], generation=generation)
            if state["touched"]:
                self.emit(kind="interrupted_key", slot=slot, item=item_id, device=device.label,
                          message=f"{device.label}: interrupted after it was written: reset it before reuse")
            raise
        finally:
            beat_stop.set()
            if beat.is_alive():
                beat.join(timeout=5)
        self.journal.record("sealed", item_id, product_data=result.product_data, request_ids=result.request_ids,
                            serial=device.identity.serial)
        _fault_point("sealed")
        if not self._submit(item_id, product_data=result.product_data, serial=device.identity.serial,
                            generation=generation, slot=slot, device=device):
            return True, "do_not_ship"
        with self._done_lock:
            self.done += 1
        self.emit(kind="fulfilled", slot=slot, item=item_id, shipment=claim.shipment_id,
                  serial=device.identity.serial, elapsed=round(time.monotonic() - started, 2))
        return True, "ship"

    def _provision_watched(self, slot: int, item_id: int, device: Device, claim, on_step):
        """provision_item under the watchdog: a key that shows no progress (a step, a keepalive)
        for `step_timeout` seconds is wedged; its call is cancelled and left behind, and the
        item is given back as that key's fault."""
        progress = {"at": time.monotonic(), "step": "opening the requests"}
        cancel = threading.Event()
        gave_up = threading.Event()
        box: dict[str, Any] = {}
        done = threading.Event()

        def step(name: str, data: dict) -> None:
            if gave_up.is_set():
                raise Abandon()  # the watchdog gave up on this key: write nothing more
            progress.update(at=time.monotonic(), step=name)
            on_step(name, data)

        def touch() -> None:
            progress["at"] = time.monotonic()
            self.emit(kind="touch", slot=slot, item=item_id, device=device.label, spec=device.spec)

        def work() -> None:
            try:
                box["result"] = provision_item(
                    device=device,
                    pin_request_jwe=claim.fido_pin_request,
                    credential_request_jwes=list(claim.fido_credential_requests),
                    keystore=self.keystore,
                    trust=self.trust,
                    on_touch=touch,
                    on_step=step,
                    event=cancel,
                    already_fulfilled=self.journal.was_fulfilled,
                )
            except BaseException as exc:  # handed to the slot's thread
                box["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=work, name=f"slot-{slot}-item-{item_id}", daemon=True)
        worker.start()
        while not done.wait(min(1.0, self.opts.step_timeout / 4)):
            if time.monotonic() - progress["at"] > self.opts.step_timeout:
                gave_up.set()
                cancel.set()
                if done.wait(1.0) and "error" in box and not isinstance(box["error"], Abandon):
                    break  # the cancel was heard: report what the key said
                touched = progress["step"] not in ("opening the requests", "opened")
                err = DeviceError(f"{device.label}: the key stopped answering for {self.opts.step_timeout:g} s "
                                  f"after step {progress['step']!r} (wedged)")
                err.key_touched = touched
                device.wedged = True  # its removal is watched on the node: a PING would hang as well
                raise with_action(err, "unplug") from None
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _item_failed(self, slot: int, item_id: int, generation: int, device: Device, exc: StationError,
                     touched: bool) -> str:
        """The outcome of a failed item; what to do with the key."""
        touched = touched or exc.key_touched
        action = exc.key_action or ("reset" if touched else "reuse")
        error = {"error_code": exc.code, "error_message": exc.message}
        if exc.code in REQUEST_ERROR_CODES and not touched:  # the request's own fault: it fails
            self.journal.record("failed", item_id, error=error, serial=device.identity.serial, generation=generation)
            if not self._submit(item_id, error=error, serial=device.identity.serial, generation=generation,
                                slot=slot, device=device):
                return "reuse"
            self.emit(kind="failed", slot=slot, item=item_id, error_code=exc.code, message=exc.message,
                      key_touched=False, device=device.label)
            return "reuse"
        released = self._release(item_id, touched=touched, generation=generation, error=error)
        if released is not None and released.item_state == "queued":
            self.draining.clear()  # the item is back in the queue: --until-empty is not done yet
        self.emit(kind="key_fault", slot=slot, item=item_id, error_code=exc.code, message=exc.message,
                  key_touched=touched, device=device.label, spec=device.spec, action=action,
                  item_state=getattr(released, "item_state", None), attempts=getattr(released, "attempts", None))
        if not self.pool.watches_insertions():
            self.stop.set()  # the one named key stays as it is: stop rather than fail item after item
        return "reset" if touched and action == "reuse" else action

    def _stale(self, slot: int, item_id: int, device: Device, why: str) -> str:
        self.journal.record("stale", item_id, serial=device.identity.serial, device=device.spec)
        self.emit(kind="stale", slot=slot, item=item_id, device=device.label, spec=device.spec,
                  message=f"{device.label}: {why}; DO NOT SHIP this key: reset it (station reset)")
        return "do_not_ship"

    def _heartbeat(self, item_id: int, generation: int, lost: threading.Event, stop: threading.Event) -> None:
        while not stop.wait(self.opts.heartbeat_seconds):
            try:
                self.client.heartbeat(item_id, self.opts.lease_seconds, generation=generation)
            except (Conflict, NotFound):
                lost.set()  # the lease is gone: the item may already be another station's
                return
            except ServiceError:
                continue  # the service is away for a moment; the lease has slack

    def _submit(self, item_id: int, *, product_data=None, error=None, serial=None, recovered=False,
                generation: int | None = None, slot: int | None = None, device: Device | None = None) -> bool:
        """Submit until the service acknowledges; a result is never dropped: if the station is
        stopped first, it stays in the journal and the next start resubmits it. False when the
        service refused it as stale: this claim was superseded (the key must not ship)."""
        _fault_point("submitting")
        delay = self.opts.poll_seconds
        while True:
            try:
                self.client.submit(item_id, product_data=product_data, error=error, serial_number=serial,
                                   generation=generation)
                _fault_point("acknowledged")
                break
            except Conflict as exc:
                if exc.code == STALE_LEASE and product_data is not None:
                    label = device.label if device is not None else (serial or f"the key of item {item_id}")
                    self.journal.record("stale", item_id, serial=serial)
                    self.emit(kind="stale", slot=slot, item=item_id, device=label,
                              message=f"{label}: the service gave item {item_id} to another claim; "
                                      "DO NOT SHIP this key: reset it (station reset)")
                    return False
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
        return True

    def _release(self, item_id: int, *, touched: bool, generation: int | None = None, error: dict | None = None):
        released = None
        try:
            released = self.client.release(item_id, generation=generation, error=error)
        except (Conflict, NotFound):
            pass  # the lease already ran out: the item is back in the queue
        self.journal.record("released", item_id, touched=touched)
        return released


def run_station(opts: RunOptions, *, on_event: Callable[[Event], None] | None = None) -> int:
    """`station run` with SIGTERM/SIGINT handling; the number of items finished. The slots are
    reported to the service for the operator's console as they change (status.py). Anything fatal
    raises a StationError (the CLI prints one line and exits 1, so systemd restarts the daemon)."""
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
        try:
            done = station.run()
        except StationError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug outside the slots: logged, then exit 1
            where = station._log_unexpected(0, exc)
            raise StationError(f"unexpected {type(exc).__name__}; details in {where}", code="internal_error") from None
        if station.fatal is not None:
            raise station.fatal
        return done
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        reporter.stop()
        station.client.close()

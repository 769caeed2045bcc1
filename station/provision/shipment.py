"""A whole shipment body (PROTOCOL.md §4) → product_data, one key per item, in order.

This is `station fulfill`: the one-shot form of what the station daemon does item by item. A
device source hands out the key for each item; every item ends either with its sealed responses
or with `{error_code, error_message}`, never with a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from station.device.discovery import Device, check_spec, new_virtual_key, open_device
from station.errors import DeviceError, StationError, UsageError
from station.protocol.keys import KeyStore
from station.protocol.messages import ShipmentRequest
from station.provision.genuine import TrustStore
from station.provision.item import provision_item

#: A device source: item index → a context manager yielding the open Device for that item.
DeviceSource = Callable[[int], AbstractContextManager[Device]]


@dataclass
class ItemReport:
    """What happened to one item, for the console (no secrets)."""

    index: int
    device: str | None
    ok: bool
    error_code: str | None = None
    error_message: str | None = None
    key_touched: bool = False
    serial: str | None = None


@dataclass
class ShipmentResult:
    output: dict  # {"shipment_items": [{"product_data": [...]}]}
    reports: list[ItemReport] = field(default_factory=list)
    cancelled: bool = False

    @property
    def all_fulfilled(self) -> bool:
        return all(r.ok for r in self.reports)


class _Opened(AbstractContextManager):
    def __init__(self, device: Device) -> None:
        self.device = device

    def __enter__(self) -> Device:
        return self.device

    def __exit__(self, *exc) -> None:
        self.device.close()


class _FromPool(AbstractContextManager):
    """One item's key from a KeyPool: waits for a usable key (saying so), and afterwards for the
    key to be removed, so that the next item gets the next key."""

    def __init__(self, pool, say: Callable[[str], None], pending: list) -> None:
        self.pool, self.say, self.pending = pool, say, pending
        self.stop = threading.Event()
        self.device: Device | None = None

    def __enter__(self) -> Device:
        from station.device.pool import Refusal

        while self.pending:  # the previous item's key must leave before the next one is taken
            previous = self.pending.pop()
            self.say(f"remove the key {previous.label}")
            self.pool.give_back(previous, self.stop, wait_removal=True)
        while True:
            got = self.pool.take(self.stop)
            if not isinstance(got, Refusal):
                self.device = got
                return got
            self.say(f"{got.error.code}: {got.error.message}; remove that key")
            self.pool.give_back(got.device, self.stop, wait_removal=True)
            self.say("insert a fresh key")

    def __exit__(self, *exc) -> None:
        if self.device is not None:  # held (locked) until the next item sees it removed
            self.pending.append(self.device)


def spec_source(spec: str, *, profile: str | None = None, virtual_transport: str = "direct",
                before_item: Callable[[int], None] | None = None,
                say: Callable[[str], None] | None = None, poll_seconds: float = 0.5) -> DeviceSource:
    """The device source of a --device SPEC. `virtual:FOLDER/` makes a fresh virtual key per item
    in FOLDER (of `profile`); `virtual:FILE` opens that key for each item, after `before_item`;
    a hardware spec (auto, hid[:PATH], pcsc[:READER]) waits for a key no one else holds before
    each item and for its removal after it, telling the technician through `say`."""
    from station.device.pool import KeyPool

    say = say or (lambda text: None)
    kind, arg = check_spec(spec)
    if kind == "virtual" and arg.endswith("/"):
        if not profile:
            raise UsageError("virtual:FOLDER/ makes a fresh key per item: name its --profile")
        folder = Path(arg)
        folder.mkdir(parents=True, exist_ok=True)

        def fresh(index: int) -> AbstractContextManager[Device]:
            spec = new_virtual_key(folder / f"item-{index + 1:03d}.json", profile)
            return _Opened(open_device(spec, virtual_transport=virtual_transport))

        return fresh

    if kind != "virtual":
        pool = KeyPool(spec, poll_seconds=poll_seconds)
        pending: list[Device] = []

        def inserted(index: int) -> AbstractContextManager[Device]:
            if before_item:
                before_item(index)
            say(f"item {index + 1}: insert a fresh key")
            return _FromPool(pool, say, pending)

        def finish() -> None:
            for device in pending:
                say(f"remove the key {device.label}")
                device.close()
            pending.clear()

        inserted.finish = finish  # type: ignore[attr-defined]
        return inserted

    def named(index: int) -> AbstractContextManager[Device]:
        if before_item:
            before_item(index)
        return _Opened(open_device(spec, virtual_transport=virtual_transport))

    return named


def fulfill_shipment(
    shipment: ShipmentRequest,
    *,
    devices: DeviceSource,
    keystore: KeyStore,
    trust: TrustStore,
    now: datetime | None = None,
    on_touch: Callable[[Device], None] | None = None,
    on_step: Callable[[int, str, dict], None] | None = None,
    event: threading.Event | None = None,
    on_item: Callable[[ShipmentResult], None] | None = None,
) -> ShipmentResult:
    """Program one key per shipment item; collect product_data or the item's error. An item
    reusing a requestId an earlier item of this run was fulfilled with is refused
    (`invalid_request`) before its key is touched. `on_item(result)` runs after every item (the
    CLI writes the output file there, so a crash keeps what was done)."""
    result = ShipmentResult(output={"shipment_items": []})
    fulfilled: set[str] = set()
    for index, customization in _customizations(shipment):
        report = ItemReport(index=index, device=None, ok=False)
        if result.cancelled:
            _fail(result, report, "not attempted: the run was cancelled")
            continue
        touched = {"maybe": False}

        def step(name: str, data: dict, i: int = index, touched=touched) -> None:
            if name == "preflight":  # the key is written to right after
                touched["maybe"] = True
            if on_step:
                on_step(i, name, data)

        try:
            try:
                opened = devices(index)
            except UsageError as exc:  # no key to program: this item fails, the others go on
                raise DeviceError(f"no key for this item: {exc.message}") from None
            with opened as device:
                report.device = device.label
                report.serial = device.identity.serial
                provisioned = provision_item(
                    device=device,
                    pin_request_jwe=customization.fido_pin_request,
                    credential_request_jwes=list(customization.fido_credential_requests),
                    keystore=keystore,
                    trust=trust,
                    now=now,
                    on_touch=(lambda d=device: on_touch(d)) if on_touch else None,
                    on_step=step,
                    event=event,
                    already_fulfilled=fulfilled.__contains__,
                )
            entry = provisioned.product_data
            fulfilled.update(provisioned.request_ids)
            report.ok = True
        except StationError as exc:
            entry = {"error_code": exc.code, "error_message": exc.message}
            report.error_code, report.error_message = exc.code, exc.message
            report.key_touched = exc.key_touched
        except KeyboardInterrupt:  # Ctrl-C: keep what is done, say what the key in hand needs
            result.cancelled = True
            report.key_touched = touched["maybe"]
            reset = "; the key may have been written to: reset it before reuse" if touched["maybe"] else ""
            _fail(result, report, f"cancelled by the technician{reset}")
            if on_item:
                on_item(result)
            continue
        result.output["shipment_items"].append({"product_data": [entry]})
        result.reports.append(report)
        if on_item:
            on_item(result)
    return result


def _fail(result: ShipmentResult, report: ItemReport, message: str) -> None:
    report.error_code, report.error_message = "device_error", message
    result.output["shipment_items"].append({"product_data": [{"error_code": "device_error", "error_message": message}]})
    result.reports.append(report)


def _customizations(shipment: ShipmentRequest) -> Iterator[tuple[int, object]]:
    """Each item's one product customization (product_quantity is 1, PROTOCOL.md §4)."""
    for index, item in enumerate(shipment.shipment_items):
        yield index, item.product_customizations[0]


def fulfill_files(
    *,
    shipment_file: Path,
    keys_dir: Path,
    spec: str,
    out_file: Path,
    profile: str | None = None,
    roots: Path | None = None,
    trust_test_ca: bool = False,
    trust_dir: Path | None = None,
    virtual_transport: str = "direct",
) -> bool:
    """`station fulfill`: read the shipment body, program the keys, write OUT atomically.
    True when every item was fulfilled."""
    import json

    from pydantic import ValidationError

    from station.console import item_line, touch_prompt
    from station.errors import InvalidRequest
    from station.fsutil import atomic_write
    from station.protocol.messages import describe_validation_error

    try:
        body = json.loads(Path(shipment_file).read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{shipment_file}: no such file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{shipment_file} is not JSON ({exc})") from None
    try:
        shipment = ShipmentRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(f"{shipment_file}: {describe_validation_error(exc)}") from None
    keystore = KeyStore.open(keys_dir)
    testing = trust_test_ca or spec.startswith("virtual:")
    trust = TrustStore.default(operator_roots=roots, trust_test_ca=testing, trust_dir=trust_dir)
    from station.console import err_console

    devices = spec_source(spec, profile=profile, virtual_transport=virtual_transport,
                          say=lambda text: err_console.print(f"[bold]{text}[/]"))
    shown = []

    def done(result: ShipmentResult) -> None:
        """After every item: its line on screen, and OUT rewritten atomically with the items so
        far (a crash or Ctrl-C keeps every sealed response made before it)."""
        for report in result.reports[len(shown):]:
            item_line(report)
            shown.append(report)
        atomic_write(Path(out_file), json.dumps(result.output, indent=2).encode() + b"\n", mode=0o644)

    try:
        result = fulfill_shipment(shipment, devices=devices, keystore=keystore, trust=trust,
                                  on_touch=touch_prompt, on_item=done)
    finally:
        getattr(devices, "finish", lambda: None)()
    done(result)
    if result.cancelled:
        raise StationError(f"the items done so far are in {out_file}; the others were not attempted", code="cancelled")
    return result.all_fulfilled

"""`station demo`: the whole pre-registration round trip on this machine, with virtual keys.

    Okta-like and Entra-like tenants order keys  ─►  the fulfillment service (SQLite, loopback)
    ─►  a station daemon programs a fresh virtual key per order  ─►  the tenants open, verify and
    register the responses  ─►  each user signs in with the key and the PIN (changing it first,
    because the key forces it).

Everything runs in this process on 127.0.0.1, in a temporary folder removed at the end; nothing
beyond loopback is reached. `--transport pcsc` puts every key through the real pcscd with
vsmartcard's virtual reader. No PIN is printed unless `--show-pins`.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from station.customer.entra import EntraConnector, EntraTenant, EntraUser
from station.customer.okta import OktaTenant, OktaUser
from station.customer.orders import post_shipment, shipment_body, wait_shipment
from station.customer.signin import sign_in
from station.device.discovery import Device, new_virtual_key, open_device
from station.errors import StationError, UsageError
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.embedded import EmbeddedService
from station.fulfillment.runner import KeyPool, RunOptions, Station
from station.fulfillment.store import Role, Store
from station.masked import Pin
from station.protocol.keys import KeyStore

OKTA_DOMAIN = "acme.okta.com"
FIRST_NAMES = ["Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Ken", "Radia", "Tim", "Margaret"]
TRANSPORTS = ("direct", "hid", "pcsc")


@dataclass
class DemoOptions:
    keys: int = 4
    transport: str = "direct"
    profile: str = "yubikey-5-nfc-5.7"
    slots: int = 1
    timeout: float = 120.0
    #: keep everything the run wrote (database, key store, journal, virtual keys) in this folder
    #: instead of a temporary one removed at the end (to look at it, or scan it for PINs)
    workdir: Path | None = None


@dataclass
class Row:
    """One ordered key, as the live view and the final table show it (never its PIN)."""

    number: int
    idp: str
    user: str
    shipment: str = ""
    state: str = "ordering"
    model: str = ""
    serial: str = ""
    verified: bool = False
    signed_in: bool = False
    error: str = ""
    statefile: str = field(default="", repr=False)
    pin: Pin | None = field(default=None, repr=False)


@dataclass
class DemoResult:
    rows: list[Row]
    seconds: float

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.verified and r.signed_in for r in self.rows)


# ------------------------------------------------------------------------------ PC/SC cards
class VpcdCardPool(KeyPool):
    """Keys for the daemon as cards in pcscd's virtual readers: each take() inserts a fresh
    virtual key through vsmartcard's vpcd; give_back() pulls it out again."""

    READERS = ((35963, "Virtual PCD 00 00"), (35964, "Virtual PCD 00 01"))

    def __init__(self, opts: RunOptions, folder: Path, profile: str, on_card: Callable[[str, str], None]) -> None:
        self.opts = opts
        self.kind, self.arg = "pcsc", ""
        self.folder, self.profile, self.on_card = folder, profile, on_card
        self._lock = threading.Lock()
        self._free = list(self.READERS[: opts.slots])
        self._cards: dict[str, tuple[threading.Event, threading.Thread, object, tuple]] = {}

    def watches_insertions(self) -> bool:
        return True

    def take(self, stop: threading.Event, idle=None) -> Device | None:
        from station.virtual import VirtualAuthenticator
        from station.virtual.vpcd import serve

        with self._lock:
            reader = self._free.pop(0)
        statefile = self.folder / f"card-{secrets.token_hex(6)}.json"
        new_virtual_key(statefile, self.profile)
        authenticator = VirtualAuthenticator.open(statefile)
        card_stop = threading.Event()
        thread = threading.Thread(target=serve, args=(authenticator, "127.0.0.1", reader[0], card_stop), daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not stop.is_set():
            try:
                device = open_device(f"pcsc:{reader[1]}")
                break
            except (UsageError, StationError):
                if time.monotonic() > deadline:
                    card_stop.set()
                    raise UsageError(f"pcscd shows no card in {reader[1]}: is vsmartcard-vpcd configured?") from None
                time.sleep(0.1)
        else:
            card_stop.set()
            return None
        self.on_card(device.identity.serial or "", str(statefile))
        with self._lock:
            self._cards[device.spec] = (card_stop, thread, authenticator, reader)
        return device

    def give_back(self, device: Device, stop: threading.Event, *, wait_removal: bool) -> None:
        device.close()
        with self._lock:
            card_stop, thread, authenticator, reader = self._cards.pop(device.spec)
        card_stop.set()  # the technician pulls the card off the reader
        thread.join(timeout=5)
        authenticator.close()
        with self._lock:
            self._free.append(reader)


class _Pcscd:
    """pcscd for the demo: the running one, or one started here (and stopped at the end)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> _Pcscd:
        binary = shutil.which("pcscd") or ("/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None)
        if binary is None or not Path("/etc/reader.conf.d/vpcd").exists():
            raise UsageError("--transport pcsc needs pcscd and vsmartcard-vpcd: "
                             "apt-get install pcscd vsmartcard-vpcd (scripts/setup installs them)")
        if subprocess.run(["pgrep", "-x", "pcscd"], capture_output=True).returncode != 0:
            self.proc = subprocess.Popen([binary, "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# ------------------------------------------------------------------------------ the round trip
def _users(count: int) -> tuple[list[OktaUser], list[EntraUser]]:
    okta, entra = [], []
    for n in range(count):
        name = FIRST_NAMES[n % len(FIRST_NAMES)] + (f"{n // len(FIRST_NAMES) + 1}" if n >= len(FIRST_NAMES) else "")
        if n % 2 == 0:
            okta.append(OktaUser(id=f"00u{secrets.token_hex(8)}", login=f"{name.lower()}@acme.com", display_name=name))
        else:
            entra.append(EntraUser(id=secrets.token_hex(16), upn=f"{name.lower()}@contoso.com", display_name=name))
    return okta, entra


def _signin_transport(transport: str, device_spec: str) -> str:
    return "pcsc" if transport == "pcsc" else ("hid" if transport == "hid" else "direct")


def run_demo(opts: DemoOptions, *, on_update: Callable[[list[Row]], None] | None = None) -> DemoResult:
    """Order, program, verify, register and sign in with `opts.keys` keys. Never raises for a key
    that fails: its row says why; raises StationError for a setup problem (no pcscd, ...)."""
    if opts.transport not in TRANSPORTS:
        raise UsageError(f"unknown transport {opts.transport!r}: one of {', '.join(TRANSPORTS)}")
    if opts.keys < 1:
        raise UsageError("--keys must be at least 1")
    update = on_update or (lambda rows: None)
    started = time.monotonic()
    with _workdir(opts.workdir) as folder, _maybe_pcscd(opts.transport):
        keystore = KeyStore.init(folder / "keys")
        store = Store.open(f"sqlite:///{folder}/station.db")
        try:
            with EmbeddedService(store, keystore) as service:
                rows = _round_trip(opts, folder, keystore, store, service, update)
        finally:
            store.close()
    return DemoResult(rows, time.monotonic() - started)


@contextmanager
def _workdir(keep: Path | None):
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="station-demo-") as tmp:
            yield Path(tmp)
        return
    keep = Path(keep)
    if keep.exists() and any(keep.iterdir()):
        raise UsageError(f"{keep} is not empty: give the demo an empty or new folder to keep")
    keep.mkdir(parents=True, exist_ok=True)
    yield keep


def _maybe_pcscd(transport: str):
    if transport == "pcsc":
        return _Pcscd()
    from contextlib import nullcontext

    return nullcontext()


def _round_trip(opts, folder, keystore, store, service, update) -> list[Row]:
    okta_client = FulfillmentClient(service.url, store.create_token(Role.CUSTOMER, "acme-okta"))
    entra_client = FulfillmentClient(service.url, store.create_token(Role.CUSTOMER, "contoso-entra"))
    okta_users, entra_users = _users(opts.keys)
    okta = OktaTenant(OKTA_DOMAIN, okta_client.jwks("transport"), okta_client.jwks("signing"), trust_test_ca=True)
    entra = EntraTenant(trust_test_ca=True)
    connector = EntraConnector(entra, entra_client, poll_interval=0.05)

    rows: list[Row] = []
    orders = []  # (row, kind, handle)
    for user in okta_users:
        enrollment = okta.enroll(user)
        row = Row(len(rows) + 1, "Okta", user.login)
        row.shipment = post_shipment(okta_client, shipment_body([enrollment.sealed], email=user.login))
        row.state = "ordered"
        rows.append(row)
        orders.append((row, "okta", (user, enrollment)))
    for user in entra_users:
        row = Row(len(rows) + 1, "Entra ID", user.upn)
        shipment = connector.ship([user])
        row.shipment = shipment.shipment_id
        row.state = "ordered"
        rows.append(row)
        orders.append((row, "entra", (user, shipment)))
    rows.sort(key=lambda r: r.number)
    update(rows)

    by_shipment = {r.shipment: r for r in rows}
    by_serial: dict[str, str] = {}

    def on_event(event: dict) -> None:
        row = by_shipment.get(event.get("shipment", ""))
        kind = event.get("kind")
        if kind == "claimed" and row is not None:
            row.state, row.model, row.serial = "programming", event.get("model") or "", event.get("serial") or ""
            if str(event.get("device", "")).startswith("virtual:"):
                by_serial[row.serial] = event["device"].split(":", 1)[1]
            _item_rows[event["item"]] = row
        elif kind == "fulfilled" and event.get("item") in _item_rows:
            _item_rows[event["item"]].state = "programmed"
        elif kind == "failed" and event.get("item") in _item_rows:
            target = _item_rows[event["item"]]
            target.state, target.error = "failed at the factory", f"{event.get('error_code')}: {event.get('message')}"
        update(rows)

    _item_rows: dict[int, Row] = {}
    run_opts = RunOptions(
        service=service.url, token=store.create_token(Role.STATION, "demo-station"),
        spec=f"virtual:{folder}/vkeys/", keys_dir=keystore.path, journal_dir=folder / "journal",
        slots=opts.slots, profile=opts.profile, virtual_transport="direct" if opts.transport == "pcsc" else opts.transport,
        trust_test_ca=True, poll_seconds=0.05, heartbeat_seconds=5.0,
    )
    pool = None
    if opts.transport == "pcsc":
        run_opts.slots = min(opts.slots, len(VpcdCardPool.READERS))
        (folder / "vkeys").mkdir()
        pool = VpcdCardPool(run_opts, folder / "vkeys", opts.profile, on_card=lambda serial, path: by_serial.__setitem__(serial, path))
    station = Station(run_opts, on_event=on_event, pool=pool)
    daemon = threading.Thread(target=station.run, name="station-daemon", daemon=True)
    daemon.start()
    try:
        for row, kind, handle in orders:
            client = okta_client if kind == "okta" else entra_client
            try:
                shipment = wait_shipment(client, row.shipment, timeout=opts.timeout, poll_interval=0.05)
            except StationError as exc:
                row.state, row.error = "not fulfilled", str(exc)
                continue
            if kind == "okta":
                _finish_okta(okta, row, handle, shipment)
            else:
                _finish_entra(row, handle)
            update(rows)
    finally:
        station.stop.set()
        daemon.join(timeout=30)
        okta_client.close()
        entra_client.close()
    if station.fatal is not None:
        raise station.fatal
    for row, kind, handle in orders:
        if row.verified:
            _sign_in(row, kind, handle, okta if kind == "okta" else entra, by_serial, opts.transport)
            update(rows)
    return rows


def _finish_okta(okta: OktaTenant, row: Row, handle, shipment: dict) -> None:
    user, enrollment = handle
    product = shipment["shipment_items"][0]["product_data"][0]
    if "error_code" in product:
        row.state, row.error = "failed at the factory", f"{product['error_code']}: {product['error_message']}"
        return
    cred_responses = [{"authenticatorEnrollmentId": enrollment.authenticator_enrollment_id, "credResponseJwe": jwe}
                      for jwe in product["fido_credential_responses"]]
    try:
        activation = okta.activate(enrollment, product["fido_pin_response"], cred_responses)
    except StationError as exc:
        row.state, row.error = "refused by Okta", str(exc)
        return
    row.pin, row.verified, row.state = activation.pin, True, "verified, registered"
    row.serial = activation.serial_number or row.serial


def _finish_entra(row: Row, handle) -> None:
    user, shipment = handle
    shipment.shipment = None
    try:
        shipment.wait_fulfilled(timeout=5)
        result = shipment.register()[0]
    except StationError as exc:
        row.state, row.error = "refused by Entra", str(exc)
        return
    if not result.ok:
        row.state, row.error = "refused by Entra", f"{result.error_code}: {result.error_message}"
        return
    row.pin, row.verified, row.state = result.pin, True, "verified, registered"
    row.serial = result.serial_number or row.serial


def _sign_in(row: Row, kind: str, handle, tenant, by_serial: dict[str, str], transport: str) -> None:
    """The user receives the key and, separately, the PIN; signs in, changing the PIN first."""
    from station.virtual import open_virtual

    user = handle[0]
    statefile = by_serial.get(row.serial)
    if not statefile:
        row.error = f"no key with serial {row.serial} came out of the factory"
        return
    if kind == "okta":
        rp_id, origin, creds = OKTA_DOMAIN, f"https://{OKTA_DOMAIN}", tenant.credentials(user)
    else:
        rp_id, origin, creds = "login.microsoft.com", "https://login.microsoft.com", tenant.credentials(user)
    new_pin = Pin("".join(secrets.choice("0123456789") for _ in range(8)))
    device = open_virtual(statefile, transport="hid" if transport == "hid" else "direct")
    try:
        result = sign_in(device, rp_id=rp_id, origin=origin, credentials=creds, pin=row.pin, new_pin=new_pin)
    except StationError as exc:
        row.error = f"sign-in: {exc}"
        return
    finally:
        device.close()
    row.signed_in = result.user_verified and result.pin_change_forced
    row.state = "signed in" if row.signed_in else "sign-in did not show a forced PIN change"

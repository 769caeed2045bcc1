"""`station demo`: the whole pre-registration round trip on this machine, with virtual keys.

    Okta, Entra ID (Microsoft Graph) and PingOne users get keys ordered by the customer side's
    flows, over HTTP, from stand-ins of the three providers  ─►  the fulfillment service
    (SQLite, loopback), one key per shipment  ─►  a station daemon programs a fresh virtual key
    per order  ─►  the flows activate/register the keys at the providers, which verify them
    ─►  each user signs in at their provider with the key and the PIN (changing it first,
    because the key forces it).

Everything runs in this process on 127.0.0.1, in a temporary folder removed at the end; nothing
beyond loopback is reached unless `--okta-url`, `--graph-url`/`--login-url`, `--pingone-url`/
`--pingone-auth-url` point the same clients at other servers. `--transport pcsc` puts every key through the real pcscd with
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

from station.customer.flows import EntraConnector, OktaWorkflow, Order, PingOneConnector, Recipient, collect
from station.customer.graph import GraphClient
from station.customer.okta import OktaClient
from station.customer.pingone import PingOneClient
from station.customer.settings import GraphSettings, OktaSettings, PingOneSettings, load_provider_settings
from station.customer.signin import ProviderSignIn, sign_in_with
from station.device.discovery import Device, new_virtual_key, open_device
from station.errors import StationError, UsageError
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.embedded import EmbeddedService
from station.fulfillment.runner import KeyPool, RunOptions, Station
from station.fulfillment.store import Role, Store
from station.masked import Pin
from station.protocol.keys import KeyStore, PublishedKeys

TRANSPORTS = ("direct", "hid", "pcsc")
PROVIDERS = ("okta", "graph", "pingone")
LABELS = {"okta": "Okta", "graph": "Entra ID", "pingone": "PingOne"}


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
    #: other servers instead of the in-process stand-ins (their credentials come from the
    #: customer configuration: STATION_OKTA_*, STATION_GRAPH_*, STATION_PINGONE_* or the TOML file)
    okta_url: str | None = None
    graph_url: str | None = None
    login_url: str | None = None
    pingone_url: str | None = None
    pingone_auth_url: str | None = None
    customer_config: Path | None = None
    #: "entra" or "pingone": the directory-connected model instead (issue 15): the service
    #: enrolls a group of the customer's directory itself (`run_directory_demo`)
    directory: str | None = None


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
    provider: str = field(default="", repr=False)
    user_id: str = field(default="", repr=False)
    order: Order | None = field(default=None, repr=False)
    #: why this key's sign-in could not be tried here (a real Okta mails the PIN itself)
    signin_skipped: str = ""
    #: --directory: where the key ships ("Austin, US"), the directory's address or the default's
    ship_to: str = field(default="", repr=False)


@dataclass
class DemoResult:
    rows: list[Row]
    seconds: float

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.verified and (r.signed_in or r.signin_skipped) for r in self.rows)


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
def run_demo(opts: DemoOptions, *, on_update: Callable[[list[Row]], None] | None = None) -> DemoResult:
    """Order, program, verify, register and sign in with `opts.keys` keys. Never raises for a key
    that fails: its row says why; raises StationError for a setup problem (no pcscd, ...)."""
    if opts.transport not in TRANSPORTS:
        raise UsageError(f"unknown transport {opts.transport!r}: one of {', '.join(TRANSPORTS)}")
    if opts.keys < 1:
        raise UsageError("--keys must be at least 1")
    if opts.directory is not None:
        return run_directory_demo(opts, on_update=on_update)
    update = on_update or (lambda rows: None)
    started = time.monotonic()
    with _workdir(opts.workdir) as folder, _maybe_pcscd(opts.transport):
        keystore = KeyStore.init(folder / "keys")
        store = Store.open(f"sqlite:///{folder}/station.db")
        try:
            with EmbeddedService(store, PublishedKeys.of_document(keystore.export_public())) as service:
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


def _attestation_roots() -> list[bytes]:
    """What the stand-ins trust: the vendors' published FIDO roots and, the demo's keys being
    virtual, the TEST CA."""
    from importlib import resources

    data = resources.files("station") / "data"
    pems = [p.read_bytes() for p in (data / "roots").iterdir() if p.name.endswith(".pem")]
    return [*pems, (data / "testca" / "ca.pem").read_bytes()]


class _Providers:
    """The three providers' clients: against stand-ins started here (with their demo users and
    credentials), or against the servers named by `--okta-url` ... with the customer
    configuration's credentials. `signin_url[kind]` is where each user signs in."""

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.servers: list = []
        self.standins: dict = {}
        self.clients: dict = {}
        self.signin_url: dict[str, str] = {}

    def __enter__(self) -> _Providers:
        from station.standins import LoopbackServer, make, seed

        opts, count, roots = self.opts, self.opts.keys, None
        try:
            external = {"okta": opts.okta_url, "graph": opts.graph_url or opts.login_url,
                        "pingone": opts.pingone_url or opts.pingone_auth_url}
            for kind in PROVIDERS:
                if external[kind]:
                    self.clients[kind] = self._external(kind)
                    continue
                roots = roots or _attestation_roots()
                standin, app = make(kind, attestation_roots=roots)
                seed(kind, standin, count)
                server = LoopbackServer(app)
                server.launch()
                self.servers.append(server)
                self.standins[kind] = standin
                self.signin_url[kind] = server.url
                self.clients[kind] = self._local(kind, standin, server.url)
            for server in self.servers:
                server.wait_started()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _local(self, kind: str, standin, url: str):
        from station.standins import DEMO_PINGONE_POLICY, OKTA_DOMAIN, PINGONE_RP_ID

        if kind == "okta":
            return OktaClient(OktaSettings(url=url, api_token=standin.new_api_token(), rp_ids=[OKTA_DOMAIN]))
        client_id, secret = standin.add_client()
        if kind == "graph":
            return GraphClient(GraphSettings(url=url, login_url=url, tenant_id=standin.tenant_id,
                                             client_id=client_id, client_secret=secret))
        return PingOneClient(PingOneSettings(url=url, auth_url=url, environment_id=standin.environment_id,
                                             client_id=client_id, client_secret=secret,
                                             policy_id=DEMO_PINGONE_POLICY, rp_id=PINGONE_RP_ID, rp_name="Example Org"))

    def _external(self, kind: str):
        opts = self.opts
        if kind == "okta":
            settings = load_provider_settings("okta", {"url": opts.okta_url}, opts.customer_config)
            self.signin_url[kind] = settings.url
            return OktaClient(settings)
        if kind == "graph":
            settings = load_provider_settings("graph", {"url": opts.graph_url, "login_url": opts.login_url},
                                              opts.customer_config)
            self.signin_url[kind] = settings.url
            return GraphClient(settings)
        settings = load_provider_settings("pingone", {"url": opts.pingone_url, "auth_url": opts.pingone_auth_url},
                                          opts.customer_config)
        self.signin_url[kind] = settings.api_base
        return PingOneClient(settings)

    def __exit__(self, *exc) -> None:
        for client in self.clients.values():
            client.close()
        for server in self.servers:
            server.ask_stop()
        for server in self.servers:
            server.join()
        self.servers = []


def _recipient(person: dict) -> Recipient:
    return Recipient(first_name=person["first_name"][:15], last_name=person["last_name"][:20], email=person["login"])


def _round_trip(opts, folder, keystore, store, service, update) -> list[Row]:
    with _Providers(opts) as providers:
        return _orders_through_signin(opts, folder, keystore, store, service, providers, update)


def _orders_through_signin(opts, folder, keystore, store, service, providers: _Providers, update) -> list[Row]:
    from station.standins import demo_users

    customer = FulfillmentClient(service.url, store.create_token(Role.CUSTOMER, "demo-customer"))
    rows: list[Row] = []
    pins: dict[str, Pin] = {}  # the PIN delivery hook of Entra and PingOne (the mailer)

    def deliver(order: Order, pin: Pin) -> None:
        pins[order.shipment_id] = pin

    flows = {
        "okta": OktaWorkflow(providers.clients["okta"], customer),
        "graph": EntraConnector(providers.clients["graph"], customer, deliver_pin=deliver),
        "pingone": PingOneConnector(providers.clients["pingone"], customer, deliver_pin=deliver),
    }
    people = {kind: iter(demo_users(kind, opts.keys)) for kind in PROVIDERS}
    for n in range(opts.keys):
        kind = PROVIDERS[n % len(PROVIDERS)]
        person = next(people[kind])
        row = Row(n + 1, LABELS[kind], person["login"], provider=kind, user_id=person["id"])
        rows.append(row)
        try:
            row.order = flows[kind].order(person["id"], _recipient(person))
        except StationError as exc:
            row.state, row.error = "not ordered", str(exc)
            continue
        row.shipment, row.state = row.order.shipment_id, "ordered"
    update(rows)

    by_shipment = {r.shipment: r for r in rows if r.shipment}
    by_serial: dict[str, str] = {}
    item_rows: dict[int, Row] = {}
    #: set when the station has submitted a shipment's item: its collector polls then, not on a timer
    finished = {shipment: threading.Event() for shipment in by_shipment}

    def on_event(event: dict) -> None:
        row = by_shipment.get(event.get("shipment", ""))
        kind = event.get("kind")
        done = kind in ("fulfilled", "failed") or (kind == "key_fault" and event.get("item_state") == "failed")
        if done and event.get("item") in item_rows:
            finished[item_rows[event["item"]].shipment].set()
        if kind == "claimed" and row is not None:
            row.state, row.model, row.serial = "programming", event.get("model") or "", event.get("serial") or ""
            if str(event.get("device", "")).startswith("virtual:"):
                by_serial[row.serial] = event["device"].split(":", 1)[1]
            item_rows[event["item"]] = row
        elif kind == "fulfilled" and event.get("item") in item_rows:
            item_rows[event["item"]].state = "programmed"
        elif kind == "failed" and event.get("item") in item_rows:
            target = item_rows[event["item"]]
            target.state, target.error = "failed at the factory", f"{event.get('error_code')}: {event.get('message')}"
        update(rows)

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
        for row in rows:
            if row.order is None:
                continue
            try:
                collect(flows[row.provider], customer, row.order, timeout=opts.timeout, poll_interval=0.25,
                        sleep=finished[row.shipment].wait)
            except StationError as exc:
                row.state, row.error = "not fulfilled", str(exc)
                continue
            _after_finish(row, providers, pins)
            update(rows)
    finally:
        station.stop.set()
        daemon.join(timeout=30)
        customer.close()
    if station.fatal is not None:
        raise station.fatal
    for row in rows:
        if row.verified:
            _sign_in(row, providers, by_serial, opts.transport)
            update(rows)
    return rows


def _after_finish(row: Row, providers: _Providers, pins: dict[str, Pin]) -> None:
    order = row.order
    if not order.ok:
        row.state = "failed at the factory" if order.error_code in _ITEM_CODES else f"refused by {row.idp}"
        row.error = f"{order.error_code}: {order.error_message}"
        return
    row.verified, row.state = True, "verified, registered"
    row.serial = order.serial_number or row.serial
    if row.provider == "okta":  # Okta mailed the PIN: the user reads it in their mailbox
        standin = providers.standins.get("okta")
        row.pin = standin.outbox.get(row.user_id) if standin is not None else None
        if row.pin is not None:
            row.pin = Pin(row.pin.reveal())
    else:
        row.pin = pins.get(order.shipment_id)


_ITEM_CODES = {"decrypt_failed", "invalid_request", "expired", "device_unsupported", "device_not_fresh",
               "device_error", "user_presence_timeout", "shipment_failed"}


def _sign_in(row: Row, providers: _Providers, by_serial: dict[str, str], transport: str) -> None:
    """The user receives the key and, separately, the PIN; signs in at their provider, changing
    the PIN first (the key forces it)."""
    from station.virtual import open_virtual

    statefile = by_serial.get(row.serial)
    if not statefile:
        row.error = f"no key with serial {row.serial} came out of the factory"
        return
    if row.pin is None:
        row.signin_skipped = "the provider mailed the PIN itself: the user signs in there"
        row.state = "registered, PIN mailed"
        return
    from station.standins import OKTA_DOMAIN

    origin = {"okta": f"https://{OKTA_DOMAIN}", "graph": "https://login.microsoft.com"}.get(
        row.provider, row.order.origin)
    new_pin = Pin("".join(secrets.choice("0123456789") for _ in range(8)))
    device = open_virtual(statefile, transport="hid" if transport == "hid" else "direct")
    try:
        result = sign_in_with(device, relying_party=ProviderSignIn(providers.signin_url[row.provider], row.user_id),
                              origin=origin, pin=row.pin, new_pin=new_pin)
    except StationError as exc:
        row.error = f"sign-in: {exc}"
        return
    finally:
        device.close()
    row.signed_in = result.user_verified and result.pin_change_forced
    row.state = "signed in" if row.signed_in else "sign-in did not show a forced PIN change"


# ------------------------------------------------------------------------------ directory-connected (issue 15)
DIRECTORY_KINDS = {"entra": "graph", "pingone": "pingone"}
DIRECTORY_ORIGIN = {"entra": "https://login.microsoft.com", "pingone": "https://example.org"}
DEMO_GROUP = "Passkey pilots"


def run_directory_demo(opts: DemoOptions, *, on_update: Callable[[list[Row]], None] | None = None) -> DemoResult:
    """HID's model end to end: the customer registers our application in its (stand-in) Entra ID
    or PingOne with the permissions it needs and puts `opts.keys` users in a group; it adds the
    directory configuration through the service's API (verified there), runs the pre-flight
    and enrolls the group; the station programs virtual keys; the service registers each
    credential in the directory; the customer's PIN delivery opens each PIN response with its
    PIN-delivery private key; each user signs in at the directory with the key and the PIN."""
    import httpx
    from jwcrypto.jwk import JWK

    from station.fulfillment.directories.sealing import open_box
    from station.fulfillment.directories.service import Directories, RegistrationLoop
    from station.protocol.jose import open_response
    from station.standins import LoopbackServer, PINGONE_RP_ID, demo_users, make

    kind = opts.directory
    if kind not in DIRECTORY_KINDS:
        raise UsageError(f"unknown directory {kind!r}: entra or pingone")
    if opts.transport != "direct":
        raise UsageError("--directory runs its keys over the direct transport only")
    update = on_update or (lambda rows: None)
    started = time.monotonic()
    provider = DIRECTORY_KINDS[kind]
    with _workdir(opts.workdir) as folder:
        keystore = KeyStore.init(folder / "keys")
        published = PublishedKeys.of_document(keystore.export_public())
        store = Store.open(f"sqlite:///{folder}/station.db")
        standin, app = make(provider, attestation_roots=_attestation_roots())
        server = LoopbackServer(app).start()
        pin_key = JWK.generate(kty="EC", crv="P-384", use="enc", kid="customer-pin-delivery")
        key_file = folder / "service-state" / "directory-secrets.key"
        try:
            people = demo_users(provider, opts.keys)
            if kind == "entra":
                users = [standin.add_user(p["login"], f"{p['first_name']} {p['last_name']}", user_id=p["id"],
                                          **_demo_graph_address(n)) for n, p in enumerate(people)]
                standin.add_group(DEMO_GROUP, [u.id for u in users])
                directory = {"kind": "entra", "tenant_id": standin.tenant_id,
                             "endpoints": {"graph_url": server.url, "login_url": server.url}}
            else:
                users = [standin.add_user(p["login"], user_id=p["id"], given=p["first_name"] or None,
                                          family=p["last_name"] or None, **_demo_ping_address(n))
                         for n, p in enumerate(people)]
                standin.add_group(DEMO_GROUP, [u.id for u in users])
                policy = standin.add_policy(PINGONE_RP_ID)
                directory = {"kind": "pingone", "environment_id": standin.environment_id,
                             "endpoints": {"api_url": server.url, "auth_url": server.url},
                             "rp_id": PINGONE_RP_ID, "policy_id": policy.id}
            client_id, secret = standin.add_client()  # the customer's app registration, with consent
            rows = [Row(n + 1, LABELS[provider], p["login"], provider=provider, user_id=p["id"])
                    for n, p in enumerate(people)]
            update(rows)
            tenant = store.create_tenant("Contoso")
            token = store.create_token(Role.CUSTOMER, "contoso-admin", tenant_id=tenant.id)
            with EmbeddedService(store, published, directory_key=str(key_file)) as service, \
                    httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60) as api:
                body = {**directory, "name": "Contoso directory", "client_id": client_id, "client_secret": secret,
                        "pin_delivery_key": pin_key.export_public(as_dict=True),
                        "default_address": {"recipient_company": "Contoso", "recipient_telephone": "+1 555 0100",
                                            "street_line1": "1 Example Way", "city": "Springfield", "region": "IL",
                                            "postal_code": "62701", "country_code_2": "US"}}
                name = body["name"]
                _api(api, "POST", "/v1/directories", json=body)
                preflight = _api(api, "POST", f"/v1/directories/{name}/preflight", json={"group": DEMO_GROUP})
                if not preflight["ok"]:
                    raise StationError("pre-flight blocked: " + " ".join(f["message"] for f in preflight["findings"]),
                                       code="preflight_blocked")
                enrolled = _api(api, "POST", f"/v1/directories/{name}/enrollments", json={"group": DEMO_GROUP})
                by_login = {r.user: r for r in rows}
                for outcome in enrolled["users"]:
                    row = by_login.get(outcome["user"])
                    if row is None:
                        continue
                    if outcome["outcome"] == "enrolled":
                        row.shipment, row.state = outcome["shipment_id"], "enrolled"
                    else:
                        row.state, row.error = "not enrolled", outcome.get("message") or outcome["outcome"]
                update(rows)
                by_serial = _program(opts, folder, keystore, store, service, rows, update)
                loop = RegistrationLoop(store, lambda: Directories(store, open_box(key_file), published),
                                        interval=0.1).start()
                try:
                    _wait_registered(api, name, rows, opts.timeout, update)
                finally:
                    loop.stop()
                enrollments = {e["shipment_id"]: e for e in
                               _api(api, "GET", f"/v1/directories/{name}/enrollments")["enrollments"]}
                for row in rows:
                    enrollment = enrollments.get(row.shipment)
                    if enrollment is None or enrollment["state"] != "registered":
                        continue
                    shipment = _api(api, "GET", f"/v1/fpr/shipments/{row.shipment}")
                    where = shipment.get("mailing_address") or {}
                    row.ship_to = f"{where.get('city', '')}, {where.get('country_code_2', '')}"
                    product = shipment["shipment_items"][0]["product_data"][0]
                    row.serial = product.get("serial_number") or row.serial
                    try:  # the customer's PIN delivery: only the PIN-delivery private key opens it
                        opened = open_response(product["fido_pin_response"], response_private_key=pin_key,
                                               signing_jwks=published.jwks("signing"),
                                               request_jwe=enrollment["pin_request"])
                    except StationError as exc:
                        row.error = f"PIN delivery: {exc}"
                        continue
                    row.pin, row.verified = Pin(opened.pin), True
                    row.state = f"registered ({enrollment['method_id'][:8]}...)"
            for row in rows:
                if row.verified:
                    row.order = Order(LABELS[provider], row.user_id, _recipient(
                        {"first_name": row.user, "last_name": "", "login": row.user}), shipment_id=row.shipment,
                        origin=DIRECTORY_ORIGIN[kind])
                    _sign_in(row, _SignInAt(server.url), by_serial, "direct")
                    update(rows)
        finally:
            server.stop()
            store.close()
    return DemoResult(rows, time.monotonic() - started)


#: The demo directory's postal addresses: some users have one (Graph's `country` as free text,
#: as Entra stores it; PingOne's alpha-2 countryCode), others none and ship to the default.
_DEMO_ADDRESSES = [
    {"street": "500 Congress Ave", "city": "Austin", "region": "TX", "postal": "78701", "country": "United States",
     "code": "US", "phone": "+1 512 555 0101"},
    None,
    {"street": "Friedrichstrasse 43", "city": "Berlin", "region": "", "postal": "10117", "country": "Germany",
     "code": "DE", "phone": "+49 30 5550102"},
    None,
]


def _demo_graph_address(n: int) -> dict:
    a = _DEMO_ADDRESSES[n % len(_DEMO_ADDRESSES)]
    return {} if a is None else {"streetAddress": a["street"], "city": a["city"], "state": a["region"] or None,
                                 "postalCode": a["postal"], "country": a["country"], "mobilePhone": a["phone"]}


def _demo_ping_address(n: int) -> dict:
    a = _DEMO_ADDRESSES[n % len(_DEMO_ADDRESSES)]
    return {} if a is None else {"mobile_phone": a["phone"], "address": {
        "streetAddress": a["street"], "locality": a["city"], "region": a["region"], "postalCode": a["postal"],
        "countryCode": a["code"]}}


class _SignInAt:
    """What `_sign_in` reads of the providers: where each user signs in."""

    def __init__(self, url: str) -> None:
        self.signin_url = {"graph": url, "pingone": url}


def _api(api, method: str, path: str, **kw) -> dict:
    answer = api.request(method, path, **kw)
    if answer.status_code >= 400:
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        raise StationError(f"{method} {path}: {body.get('error_message') or answer.status_code}",
                           code=body.get("error_code") or "service")
    return answer.json()


def _program(opts, folder, keystore, store, service, rows, update) -> dict[str, str]:
    """The station daemon programs a fresh virtual key per enrolled user's shipment."""
    by_shipment = {r.shipment: r for r in rows if r.shipment}
    by_serial: dict[str, str] = {}
    finished: set[str] = set()

    def on_event(event: dict) -> None:
        row = by_shipment.get(event.get("shipment", ""))
        if row is None:
            return
        if event.get("kind") == "claimed":
            row.state, row.model, row.serial = "programming", event.get("model") or "", event.get("serial") or ""
            if str(event.get("device", "")).startswith("virtual:"):
                by_serial[row.serial] = event["device"].split(":", 1)[1]
        elif event.get("kind") in ("fulfilled", "failed"):
            row.state = "programmed" if event["kind"] == "fulfilled" else "failed at the factory"
            if event["kind"] == "failed":
                row.error = f"{event.get('error_code')}: {event.get('message')}"
            finished.add(row.shipment)
        update(rows)

    run_opts = RunOptions(
        service=service.url, token=store.create_token(Role.STATION, "demo-station"),
        spec=f"virtual:{folder}/vkeys/", keys_dir=keystore.path, journal_dir=folder / "journal",
        slots=opts.slots, profile=opts.profile, virtual_transport="direct",
        trust_test_ca=True, poll_seconds=0.05, heartbeat_seconds=5.0,
    )
    station = Station(run_opts, on_event=on_event)
    daemon = threading.Thread(target=station.run, name="station-daemon", daemon=True)
    daemon.start()
    deadline = time.monotonic() + opts.timeout
    try:
        while len(finished) < len(by_shipment) and time.monotonic() < deadline and station.fatal is None:
            time.sleep(0.05)
    finally:
        station.stop.set()
        daemon.join(timeout=30)
    if station.fatal is not None:
        raise station.fatal
    return by_serial


def _wait_registered(api, name: str, rows: list[Row], timeout: float, update) -> None:
    """Until the service has registered (or seen refused) every programmed key."""
    wanted = {r.shipment for r in rows if r.state == "programmed"}
    deadline = time.monotonic() + timeout
    while True:
        states = {e["shipment_id"]: e for e in _api(api, "GET", f"/v1/directories/{name}/enrollments")["enrollments"]}
        for row in rows:
            e = states.get(row.shipment)
            if e and e["state"] == "refused":
                row.state, row.error = "refused by the directory", e.get("message") or ""
        if all(states.get(s, {}).get("state") in ("registered", "refused") for s in wanted) \
                or time.monotonic() > deadline:
            update(rows)
            return
        time.sleep(0.1)

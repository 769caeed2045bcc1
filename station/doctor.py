"""`station doctor`: is this machine ready to be a station, and if not, what exactly to run.

Each check is a small function returning a `Check(name, ok, detail, fix)`; a failed check's `fix`
is the command (or the step) that mends it. The checks look at the machine under `root` (`/` in
production, a fake tree in tests): `etc/udev/rules.d`, `etc/passwd`, `etc/group`, `dev/hidraw*`,
`sys/class/hidraw/*/device/uevent`, `run/pcscd`, `proc/*/comm`.

What is checked (issue 7):
- USB keys: the udev rule `70-fido-station.rules` installed; the user (or the service account)
  in the group the rule names; every `/dev/hidraw*` of Yubico (1050) and HID Global (09c3) keys
  openable by that user;
- PC/SC: pcscd running (its socket or its process) and at least one reader (pyscard);
- python-fido2 installed and in the 2.2 line, pyscard installed;
- the key store: present, an active transport and signing key, folder 0700 and files 0600;
- the service: its transport JWKS reachable (and every published key held by this station), and
  the station token accepted.

A check that the configured device SPEC does not need (hidraw for `pcsc:`, PC/SC for `hid:`,
both for `virtual:`) is still shown, but not `required`: it does not fail the doctor.
"""

from __future__ import annotations

import importlib.metadata
import os
import pwd
import re
import stat
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from jwcrypto.common import JWException
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from station.checks import Check
from station.config import ConfigError, config_path, load_run_settings
from station.errors import KeyStoreError
from station.fulfillment.client import FulfillmentClient
from station.fulfillment.errors import Conflict, Forbidden, NotFound, ServiceError, Unauthorized
from station.fulfillment.models import MAX_ITEM_ID
from station.protocol.keys import METADATA_FILE, KeyStore

#: USB vendor ids of the keys a station programs over USB-HID
FIDO_VENDORS = {"1050": "Yubico", "09c3": "HID Global"}
RULE_FILE = "70-fido-station.rules"
RULES_DIR = Path("etc/udev/rules.d")
DEFAULT_GROUP = "fido-station"
PCSCD_SOCKET = Path("run/pcscd/pcscd.comm")
FIDO2_LINE = "2.2"
SERVICE_TIMEOUT = 5.0
#: where the rule sits in a clone of this repository (for the fix commands)
SHIPPED_RULE = Path(__file__).resolve().parent.parent / "udev" / RULE_FILE

_FIX_SETUP = "scripts/setup   # from the clone of this repository, as root"


# ------------------------------------------------------------------------------- accounts
@dataclass(frozen=True)
class Accounts:
    """Users and groups as `etc/passwd` and `etc/group` under a root describe them."""

    users: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (uid, primary gid)
    groups: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)  # name → (gid, members)

    @classmethod
    def read(cls, root: Path) -> Accounts:
        users = {f[0]: (int(f[2]), int(f[3])) for f in _colon_rows(root / "etc/passwd", 4) if f[3].isdigit()}
        groups = {f[0]: (int(f[2]), frozenset(m for m in f[3].split(",") if m))
                  for f in _colon_rows(root / "etc/group", 4)}
        return cls(users, groups)

    def gids(self, user: str) -> set[int]:
        """The primary and supplementary groups of `user`."""
        primary = {self.users[user][1]} if user in self.users else set()
        return primary | {gid for gid, members in self.groups.values() if user in members}

    def user_name(self, uid: int) -> str:
        return next((n for n, (u, _g) in self.users.items() if u == uid), str(uid))

    def group_name(self, gid: int) -> str:
        return next((n for n, (g, _m) in self.groups.items() if g == gid), str(gid))


def _colon_rows(path: Path, width: int) -> list[list[str]]:
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    rows = [line.split(":") for line in lines if line and not line.startswith("#")]
    return [row for row in rows if len(row) >= width and row[2].isdigit()]


# ------------------------------------------------------------------------------- udev
_UDEV_PAIR = re.compile(r'\s*([A-Z_]+(?:\{[^}]*\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(,|$)')


def parse_udev_rule(line: str) -> list[tuple[str, str, str]]:
    """The (key, operator, value) triples of one udev rule line; ValueError if it is not one."""
    triples, position = [], 0
    while position < len(line.rstrip()):
        match = _UDEV_PAIR.match(line, position)
        if match is None:
            raise ValueError(f"not a udev key=value pair at column {position + 1}: {line[position:]!r}")
        triples.append(match.group(1, 2, 3))
        position = match.end()
    return triples


def read_udev_rules(path: Path) -> list[list[tuple[str, str, str]]]:
    """Every rule of a rules file (comments and blank lines skipped); OSError/ValueError as raised."""
    lines = path.read_text("utf-8").splitlines()
    return [parse_udev_rule(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _rule_values(rules: Iterable[list[tuple[str, str, str]]], key: str) -> set[str]:
    return {value for rule in rules for k, _op, value in rule if k == key}


def rule_group(root: Path) -> str:
    """The GROUP the installed rule gives hidraw nodes (the default when none is installed)."""
    try:
        groups = _rule_values(read_udev_rules(root / RULES_DIR / RULE_FILE), "GROUP")
    except (OSError, ValueError):
        return DEFAULT_GROUP
    return min(groups) if groups else DEFAULT_GROUP


def _install_rule_fix() -> str:
    return (f"sudo install -m 0644 {SHIPPED_RULE} /etc/udev/rules.d/ && "
            "sudo udevadm control --reload-rules && "
            "sudo udevadm trigger --subsystem-match=hidraw --action=change")


def check_udev_rule(root: Path) -> Check:
    """The rule file is installed under /etc/udev/rules.d and names both vendors."""
    path = root / RULES_DIR / RULE_FILE
    shown = "/" / RULES_DIR / RULE_FILE
    try:
        rules = read_udev_rules(path)
    except FileNotFoundError:
        return Check("udev rule", False, f"{shown} is not installed", _install_rule_fix())
    except (OSError, ValueError) as exc:
        return Check("udev rule", False, f"{shown} is unreadable: {exc}", _install_rule_fix())
    missing = sorted(set(FIDO_VENDORS) - _rule_values(rules, "ATTRS{idVendor}"))
    if missing:
        names = ", ".join(f"{FIDO_VENDORS[v]} ({v})" for v in missing)
        return Check("udev rule", False, f"{shown} does not name {names}", _install_rule_fix())
    return Check("udev rule", True, f"{shown}: Yubico (1050), HID Global (09c3), group {rule_group(root)}")


def check_group(root: Path, user: str) -> Check:
    """`user` is root or in the group the rule names (primary or supplementary)."""
    group = rule_group(root)
    accounts = Accounts.read(root)
    if group not in accounts.groups:
        return Check("group", False, f"the group {group} does not exist", f"sudo groupadd --system {group}")
    if user not in accounts.users:
        return Check("group", False, f"no user {user} in /etc/passwd",
                     f"sudo useradd --system --gid {group} --home-dir /var/lib/{group} "
                     f"--shell /usr/sbin/nologin {user}")
    if accounts.users[user][0] == 0:
        return Check("group", True, f"{user} is root: every hidraw node opens")
    if accounts.groups[group][0] in accounts.gids(user):
        return Check("group", True, f"{user} is in {group}")
    return Check("group", False, f"{user} is not in {group} (a local desktop session has uaccess instead)",
                 f"sudo usermod -aG {group} {user}   # then log out and in again")


# ------------------------------------------------------------------------------- hidraw
@dataclass(frozen=True)
class HidrawNode:
    """One /dev/hidraw* node: its USB vendor, owner, group, mode and whether the user opens it."""

    path: Path
    vendor: str | None
    owner: str
    group: str
    mode: int
    openable: bool

    @property
    def line(self) -> str:
        vendor = FIDO_VENDORS.get(self.vendor or "", f"vendor {self.vendor or '?'}")
        state = "opens" if self.openable else "NOT openable"
        return f"/dev/{self.path.name} {vendor} {self.owner}:{self.group} {stat.filemode(self.mode)} {state}"


def hidraw_vendor(root: Path, name: str) -> str | None:
    """The USB vendor id (4 hex digits) in sys/class/hidraw/NAME/device/uevent's HID_ID."""
    try:
        uevent = (root / "sys/class/hidraw" / name / "device/uevent").read_text("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(r"^HID_ID=[0-9A-Fa-f]+:([0-9A-Fa-f]{8}):", uevent, re.MULTILINE)
    return match.group(1)[-4:].lower() if match else None


def may_open(mode: int, owner: int, group: int, uid: int, gids: set[int]) -> bool:
    """Read and write permission by the mode bits alone (ACLs, as uaccess sets, are not seen)."""
    if uid == 0:
        return True
    if uid == owner:
        return mode & 0o600 == 0o600
    if group in gids:
        return mode & 0o060 == 0o060
    return mode & 0o006 == 0o006


def list_hidraw(root: Path, user: str, access: Callable[[Path], bool] | None = None) -> list[HidrawNode]:
    """Every dev/hidraw* under root; `access` decides openable (default: mode bits for `user`)."""
    accounts = Accounts.read(root)
    uid = accounts.users.get(user, (-1, -1))[0]
    nodes = []
    for path in sorted((root / "dev").glob("hidraw*")):
        st = path.stat()
        openable = access(path) if access else may_open(st.st_mode, st.st_uid, st.st_gid, uid, accounts.gids(user))
        nodes.append(HidrawNode(path, hidraw_vendor(root, path.name), accounts.user_name(st.st_uid),
                                accounts.group_name(st.st_gid), st.st_mode, openable))
    return nodes


def check_hidraw(root: Path, user: str, access: Callable[[Path], bool] | None = None) -> Check:
    """Each hidraw node of a Yubico or HID Global key opens for `user`."""
    nodes = list_hidraw(root, user, access)
    if not nodes:
        return Check("hidraw", False,
                     "no /dev/hidraw* on this machine: no USB key is plugged in, or the kernel's hidraw driver is not loaded",
                     "plug a key in; if still none: sudo modprobe hidraw && ls -l /dev/hidraw*")
    keys = [n for n in nodes if n.vendor in FIDO_VENDORS]
    if not keys:
        return Check("hidraw", False,
                     f"{len(nodes)} hidraw node(s), none of Yubico (1050) or HID Global (09c3)",
                     "plug a key in (then: station devices)")
    blocked = [n for n in keys if not n.openable]
    detail = "; ".join(n.line for n in keys)
    if blocked:
        return Check("hidraw", False, f"{user} cannot open: {detail}",
                     f"{_install_rule_fix()}; sudo usermod -aG {rule_group(root)} {user}")
    return Check("hidraw", True, detail)


# ------------------------------------------------------------------------------- PC/SC
_FIX_PCSCD = "sudo apt-get install pcscd && sudo systemctl enable --now pcscd.socket"


def check_pcscd(root: Path) -> Check:
    """pcscd listens: its socket run/pcscd/pcscd.comm exists, or a pcscd process runs."""
    socket_path = root / PCSCD_SOCKET
    if socket_path.is_socket():
        return Check("pcscd", True, f"socket /{PCSCD_SOCKET}")
    pids = [p.parent.name for p in (root / "proc").glob("[0-9]*/comm") if _read(p) == "pcscd"]
    if pids:
        return Check("pcscd", True, f"process {', '.join(sorted(pids))} (socket-activated on first use)")
    return Check("pcscd", False, f"neither the socket /{PCSCD_SOCKET} nor a pcscd process", _FIX_PCSCD)


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def pyscard_readers() -> list[str]:
    """The PC/SC reader names pcscd reports (pyscard); OSError when pcscd does not answer."""
    from smartcard.Exceptions import SmartcardException
    from smartcard.pcsc.PCSCExceptions import BaseSCardException
    from smartcard.System import readers

    try:
        return [str(r) for r in readers()]
    except (SmartcardException, BaseSCardException) as exc:
        raise OSError(str(exc)) from exc


def check_readers(list_readers: Callable[[], list[str]] = pyscard_readers) -> Check:
    """At least one PC/SC reader (for a Crescendo card or an NFC YubiKey on a reader)."""
    try:
        names = list_readers()
    except (OSError, ImportError) as exc:
        return Check("PC/SC readers", False, f"pcscd did not answer: {exc}", _FIX_PCSCD)
    if not names:
        return Check("PC/SC readers", False, "pcscd reports no reader",
                     "plug a CCID reader in; watch it with: sudo apt-get install pcsc-tools && pcsc_scan")
    return Check("PC/SC readers", True, "; ".join(names))


# ------------------------------------------------------------------------------- libraries
def check_fido2(version_of: Callable[[str], str] = importlib.metadata.version) -> Check:
    """python-fido2 is installed and in the 2.2 line the station is written against."""
    fix = f".venv/bin/pip install 'fido2[pcsc]>={FIDO2_LINE},<2.3'   # or: {_FIX_SETUP}"
    try:
        version = version_of("fido2")
    except importlib.metadata.PackageNotFoundError:
        return Check("python-fido2", False, "not installed", fix)
    if version.split(".")[:2] != FIDO2_LINE.split("."):
        return Check("python-fido2", False, f"{version} is installed; the station needs {FIDO2_LINE}.x", fix)
    return Check("python-fido2", True, version)


def check_pyscard(version_of: Callable[[str], str] = importlib.metadata.version) -> Check:
    """pyscard (PC/SC for python-fido2's CtapPcscDevice) is installed."""
    try:
        return Check("pyscard", True, version_of("pyscard"))
    except importlib.metadata.PackageNotFoundError:
        return Check("pyscard", False, "not installed",
                     f"sudo apt-get install libpcsclite-dev swig && .venv/bin/pip install pyscard   # or: {_FIX_SETUP}")


# ------------------------------------------------------------------------------- key store
def check_key_store(keys_dir: Path | None) -> Check:
    """The key store opens, holds an active transport and signing key, folder 0700, files 0600."""
    if keys_dir is None:
        return Check("key store", False, "no key store given",
                     "give --keys DIR, or set keys_dir in [run] of the configuration file")
    try:
        store = KeyStore.open(keys_dir)
        store.jwks("transport"), store.jwks("signing")  # every key file readable
    except (KeyStoreError, JWException) as exc:  # JWException: a key file that is no JWK
        fix = (f"station keys init --dir {keys_dir}" if not (Path(keys_dir) / METADATA_FILE).exists()
               else f"restore {keys_dir} from its backup (or copy the service's key store)")
        detail = exc.message if isinstance(exc, KeyStoreError) else f"a key file in {keys_dir} is no valid JWK"
        return Check("key store", False, detail, fix)
    for kind in KeyStore.KIND:
        if not any(e.kind == kind.value and e.status == KeyStore.STATUS.ACTIVE.value for e in store.entries):
            return Check("key store", False, f"no active {kind.value} key in {keys_dir}",
                         f"station keys rotate --dir {keys_dir} --kind {kind.value}")
    loose = _loose_modes(Path(keys_dir))
    if loose:
        return Check("key store", False, f"readable by others: {', '.join(loose)}",
                     f"chmod 0700 {keys_dir} && chmod 0600 {keys_dir}/{METADATA_FILE} {keys_dir}/*.jwk")
    active = [e.kid for e in store.entries if e.status == KeyStore.STATUS.ACTIVE.value]
    return Check("key store", True, f"{keys_dir}: active {', '.join(active)}")


def _loose_modes(folder: Path) -> list[str]:
    """The folder and files of the store that group or others may use (mode & 0o077)."""
    paths = [folder, folder / METADATA_FILE, *sorted(folder.glob("*.jwk"))]
    return [f"{p} {stat.S_IMODE(p.stat().st_mode):04o}" for p in paths if p.stat().st_mode & 0o077]


# ------------------------------------------------------------------------------- service
def check_service_keys(service: str | None, keys_dir: Path | None,
                       transport: httpx.BaseTransport | None = None) -> Check:
    """GET /.well-known/transport-keys.jwks answers, and this station holds every key it lists."""
    if not service:
        return Check("service keys", False, "no service URL given",
                     "give --service URL, STATION_RUN_SERVICE, or service in [run] of the configuration file")
    try:
        with FulfillmentClient(service, timeout=SERVICE_TIMEOUT, transport=transport) as client:
            published = [k["kid"] for k in client.jwks("transport")["keys"]]
    except (ServiceError, ValidationError, ValueError) as exc:  # an answer that is no JWKS too
        return Check("service keys", False, f"{service}/.well-known/transport-keys.jwks: {_brief(exc)}",
                     f"is `station serve` running there? curl -sS {service}/.well-known/transport-keys.jwks")
    if not published:
        return Check("service keys", False, f"{service} publishes no transport key",
                     "on the service host: station keys rotate --dir KEYS --kind transport")
    unknown = sorted(set(published) - _held_transport_kids(keys_dir))
    if keys_dir is not None and unknown:
        return Check("service keys", False,
                     f"{service} publishes {', '.join(unknown)}, which {keys_dir} does not hold active: "
                     "requests sealed to it cannot be opened here",
                     f"copy the service's key store (keys.json and *.jwk) into {keys_dir}")
    return Check("service keys", True, f"{service} publishes {', '.join(published)}")


def _held_transport_kids(keys_dir: Path | None) -> set[str]:
    if keys_dir is None:
        return set()
    try:
        store = KeyStore.open(keys_dir)
    except KeyStoreError:
        return set()
    return {e.kid for e in store.entries
            if e.kind == KeyStore.KIND.TRANSPORT.value and e.status == KeyStore.STATUS.ACTIVE.value}


def check_service_token(service: str | None, token: str | None,
                        transport: httpx.BaseTransport | None = None) -> Check:
    """The station token is accepted by the station API.

    The station API has no read-only route, so the probe is a heartbeat on an item id no
    station holds: the service checks the token first (401 unknown, 403 a customer's), then
    refuses the item (404 or 409) without touching the queue.
    """
    fix_token = "on the service host: station tokens create --role station --name THIS-STATION; give it as STATION_RUN_TOKEN"
    if not service or not token:
        return Check("service token", False, "no service URL or no token given", fix_token)
    try:
        with FulfillmentClient(service, token, timeout=SERVICE_TIMEOUT, transport=transport) as client:
            client.heartbeat(MAX_ITEM_ID, lease_seconds=1)
    except Unauthorized:
        return Check("service token", False, "the service does not know this token", fix_token)
    except Forbidden:
        return Check("service token", False, "this is a customer token, not a station token", fix_token)
    except (NotFound, Conflict):
        pass  # the token passed; only the item was refused
    except (ServiceError, ValidationError, ValueError) as exc:
        return Check("service token", False, _brief(exc), f"curl -sS {service}/.well-known/transport-keys.jwks")
    return Check("service token", True, "accepted as a station token")


def _brief(exc: Exception) -> str:
    """A ServiceError's `code: message`, or what kind of unexpected answer came back."""
    return str(exc) if isinstance(exc, ServiceError) else f"not the service's answer ({exc.__class__.__name__})"


# ------------------------------------------------------------------------------- all together
@dataclass(frozen=True)
class Target:
    """What to check: the machine, the user who will run the station, and its settings."""

    root: Path = Path("/")
    user: str | None = None  # None: the current user, whose access os.access() tells (ACLs included)
    device: str = "auto"
    keys_dir: Path | None = None
    service: str | None = None
    token: str | None = None
    trust_dir: Path | None = None  # None: the default trust store (station.trust.store)
    trust_test_ca: bool = False


def run_checks(target: Target, *, transport: httpx.BaseTransport | None = None,
               list_readers: Callable[[], list[str]] = pyscard_readers,
               list_keys: Callable[[str], list[tuple[str, uuid.UUID]] | None] | None = None) -> list[Check]:
    """Every check, in the order a technician mends them."""
    user = target.user or _current_user()
    access = (lambda p: os.access(p, os.R_OK | os.W_OK)) if target.user is None else None
    kind = target.device.partition(":")[0]
    usb, pcsc = kind in ("auto", "hid"), kind in ("auto", "pcsc")
    return [
        _needed(check_udev_rule(target.root), usb),
        _needed(check_group(target.root, user), usb),
        _needed(check_hidraw(target.root, user, access), usb),
        _needed(check_pcscd(target.root), pcsc),
        _needed(check_readers(list_readers), pcsc),
        check_fido2(),
        _needed(check_pyscard(), pcsc),
        check_key_store(target.keys_dir),
        check_service_keys(target.service, target.keys_dir, transport),
        check_service_token(target.service, target.token, transport),
        *trust_checks(target, list_keys),
    ]


def check_service_private_keys(config_file: Path | None = None) -> Check:
    """A warning (never required): the [serve] settings point `station serve` at a key store that
    holds private keys, which the service never needs (it runs on `--jwks`, public keys only)."""
    from station.config import load_serve_settings
    from station.protocol.keys import holds_private_keys

    try:
        settings = load_serve_settings({}, config_file)
    except ConfigError:
        return Check("service private keys", True, "no usable [serve] settings to check")
    if settings.keys_dir is None or not holds_private_keys(settings.keys_dir):
        source = settings.jwks_file or "no keys configured"
        return Check("service private keys", True, f"the service's keys: {source}")
    allowed = " (allowed by allow_private_keys)" if settings.allow_private_keys else ""
    return Check(
        "service private keys", False,
        f"[serve] keys_dir {settings.keys_dir} holds private keys{allowed}: whoever takes the service "
        "host can open every queued request and sign responses",
        f"station keys export-public --dir {settings.keys_dir} --out /etc/fido-station/published.jwks, "
        "then set jwks_file to it in [serve], drop keys_dir and allow_private_keys, and keep the key store "
        "on the stations only",
        required=False,
    )


# ------------------------------------------------------------------------------- trust (station.trust.health)
def trust_checks(target: Target, list_keys=None) -> list[Check]:
    """The trust store, the MDS BLOB's age, TEST CA trust, attached keys without an anchor."""
    from station.trust.health import trust_rows
    from station.trust.store import default_trust_dir

    rows = trust_rows(target.trust_dir or default_trust_dir(), trust_test_ca=target.trust_test_ca,
                      device=target.device, list_keys=list_keys)
    return rows


def list_attached_keys(device: str) -> list[tuple[str, uuid.UUID]] | None:
    """(label, AAGUID) of each attached key the device SPEC covers; None for virtual: keys."""
    from station.device.discovery import TRANSPORT_HID, TRANSPORT_PCSC, list_devices

    kind = device.partition(":")[0]
    wanted = {"auto": (TRANSPORT_HID, TRANSPORT_PCSC), "hid": (TRANSPORT_HID,), "pcsc": (TRANSPORT_PCSC,)}.get(kind)
    if wanted is None:  # not a device spec: the configuration row already says so
        return None
    found = list_devices(include_pcsc=TRANSPORT_PCSC in wanted)
    try:
        return [(d.label, d.aaguid) for d in found if d.transport in wanted]
    finally:
        for d in found:
            d.close()


def diagnose(cli_values: dict, config_file: Path | None = None, *, user: str | None = None,
             root: Path = Path("/"), transport: httpx.BaseTransport | None = None,
             list_readers: Callable[[], list[str]] = pyscard_readers,
             list_keys: Callable[[str], list[tuple[str, uuid.UUID]] | None] | None = None) -> list[Check]:
    """`station doctor`: the configuration `station run` would use, then every check with it.

    `cli_values` are the `station run` settings given as doctor options (keys_dir, service,
    token, device); the environment and the TOML file fill in the rest (station.config).
    A broken configuration is itself a failed check; the others then use `cli_values` alone.
    """
    try:
        settings = load_run_settings(cli_values, config_file)
    except ConfigError as exc:
        shown = config_path(config_file) or "the environment"
        config = Check("configuration", False, exc.message,
                       f"fix {shown} (every setting is in deploy/station.example.toml)")
        values = dict(cli_values)
    else:
        config = Check("configuration", True, str(config_path(config_file) or "no file: options and environment only"))
        values = settings.model_dump()
        values["token"] = settings.token.get_secret_value() if settings.token else None
    target = Target(root=root, user=user, device=values.get("device") or "auto",
                    keys_dir=values.get("keys_dir"), service=values.get("service"), token=values.get("token"),
                    trust_dir=values.get("trust_dir"), trust_test_ca=bool(values.get("trust_test_ca")))
    return [config, *run_checks(target, transport=transport, list_readers=list_readers, list_keys=list_keys),
            check_service_private_keys(config_file)]


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (a container)
        return str(os.geteuid())


def _needed(check: Check, required: bool) -> Check:
    return check if required else Check(check.name, check.ok, check.detail, check.fix, required=False)


def healthy(checks: list[Check]) -> bool:
    """True when every required check passed (the doctor's exit status 0)."""
    return all(c.ok for c in checks if c.required and not c.warn)


def as_json(checks: list[Check]) -> dict:
    """The report as one JSON document: {"ok": ..., "checks": [...]}."""
    return {"ok": healthy(checks), "checks": [c.as_json() for c in checks]}


def print_table(checks: list[Check], console: Console) -> None:
    """The rich table, then each failed check's fix on its own unwrapped line (to copy and paste)."""
    table = Table(title="station doctor")
    for column in ("check", "", "detail"):
        table.add_column(column, overflow="fold")
    for c in checks:
        mark = ("[green]ok[/]" if c.ok else "[yellow]WARN[/]" if c.warn
                else "[bold red]FAIL[/]" if c.required else "[yellow]not needed[/]")
        table.add_row(c.name, mark, escape(c.detail))
    console.print(table)
    failed = [c for c in checks if not c.ok]
    for c in failed:
        console.print(f"[bold red]fix {escape(c.name)}:[/]" if c.required and not c.warn
                      else f"[yellow]fix {escape(c.name)} ({'a warning' if c.warn else 'not needed here'}):[/]")
        console.print("  " + c.fix, markup=False, highlight=False, soft_wrap=True)
    if not failed:
        console.print("[green]Every check passed: this machine is ready to be a station.[/]")

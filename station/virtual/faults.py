"""Fault plans: the hardware faults of a real key, on a virtual one, for tests and demos.

A PLAN is a comma-separated list of faults (`station virtual serve --fault PLAN`,
`station virtual new --fault PLAN`, the one-line file STATEFILE.fault, or from Python
`set_plan(key, "pull-during:makeCredential")`):

    pull-after:N        the key answers N commands, then is pulled: the next command finds it gone
    pull-during:CMD     the key is pulled while CMD runs: CMD's effects are written (a PIN set, a
                        credential stored), its answer never comes
    wedge-after:N       the key answers N commands, then answers nothing (until it loses power)
    wedge-during:CMD    CMD runs and is never answered; the key answers nothing after it
    slow:SECONDS        every command takes SECONDS longer (keepalive PROCESSING meanwhile)
    no-touch[:SECONDS]  the user never touches the key: CTAP2_ERR_USER_ACTION_TIMEOUT after
                        SECONDS (30, as a YubiKey gives up)

e.g. `slow:0.5,pull-during:setPIN`. A "command" is one CTAP request (CTAPHID_CBOR, NFCCTAP_MSG)
or one U2F message (CTAPHID_MSG, a U2F APDU); counting starts when the key is opened. CMD is a
CTAP command (makeCredential, getAssertion, getInfo, clientPIN, reset, getNextAssertion,
credentialManagement, selection, largeBlobs, config), a clientPIN subcommand (getPINRetries,
getKeyAgreement, setPIN, changePIN, getPinToken, getPinUvAuthTokenUsingPinWithPermissions, ...) or
u2fRegister / u2fAuthenticate. A pull or wedge fires once: when it fires it is struck from the
plan kept for the key, so the key works again once re-inserted.

A plan set with `set_plan(..., persist=True)` (the CLI's `new --fault`) is kept in
STATEFILE.fault beside the state file and applies whenever the key is opened, whichever entry
point opens it (`virtual:STATEFILE` device specs of the station, `open_virtual`, `serve`).

How each fault looks to the client, as on the hardware:
- USB-HID (python-fido2's CtapHidDevice over station.virtual.hid): pulled, the hidraw node goes
  away: reports already sent are still read, then a read raises OSError(EIO) and a write
  OSError(ENODEV), as Linux's hidraw driver answers for a removed device, and opening the path
  again raises FileNotFoundError. Wedged, no report comes at all (not even for CTAPHID_INIT):
  python-fido2's hidraw read has no timeout, so the caller blocks until its own deadline closes
  the device (then OSError).
- PC/SC in process (python-fido2's CtapPcscDevice over station.virtual.apdu): pulled, transmit
  raises pyscard's CardConnectionException with SCARD_W_REMOVED_CARD and connecting again
  NoCardException. Wedged, transmit waits WEDGE_TIMEOUT (a reader's response timeout), then
  raises CardConnectionException with SCARD_E_NOT_TRANSACTED; a power cycle (disconnect with
  SCARD_UNPOWER_CARD or SCARD_RESET_CARD) recovers the card.
- PC/SC through the real pcscd (`station virtual serve`): pulled, the card leaves vpcd's reader
  (the link closes) and serve exits; pyscard raises CardConnectionException. Wedged, the card
  takes APDUs and never answers, so pcscd's transmit blocks; a power cycle from pcscd recovers it.
- direct (VirtualCtapDevice): pulled raises OSError(EIO); wedged blocks until the device is closed.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fido2 import cbor
from fido2.ctap import STATUS

from .errors import VirtualError
from .presence import Keepalive, PresencePolicy, wait_with_keepalive

if TYPE_CHECKING:
    from .authenticator import VirtualAuthenticator

#: How long an in-process PC/SC transmit waits on a wedged card before the "reader" gives up.
WEDGE_TIMEOUT = 3.0
#: A YubiKey gives up waiting for a touch after about 30 s.
NO_TOUCH_DEFAULT = 30.0

#: CTAP 2.1 command bytes by name (§6).
CTAP_COMMANDS = {
    "makeCredential": 0x01,
    "getAssertion": 0x02,
    "getInfo": 0x04,
    "clientPIN": 0x06,
    "reset": 0x07,
    "getNextAssertion": 0x08,
    "bioEnrollment": 0x09,
    "credentialManagement": 0x0A,
    "selection": 0x0B,
    "largeBlobs": 0x0C,
    "config": 0x0D,
}
#: authenticatorClientPIN subcommands by name (§6.5.5).
PIN_SUBCOMMANDS = {
    "getPINRetries": 0x01,
    "getKeyAgreement": 0x02,
    "setPIN": 0x03,
    "changePIN": 0x04,
    "getPinToken": 0x05,
    "getPinUvAuthTokenUsingUvWithPermissions": 0x06,
    "getUVRetries": 0x07,
    "getPinUvAuthTokenUsingPinWithPermissions": 0x09,
}
#: U2F instructions by name (FIDO U2F raw message formats).
U2F_INSTRUCTIONS = {"u2fRegister": 0x01, "u2fAuthenticate": 0x02}
COMMAND_NAMES = (*CTAP_COMMANDS, *PIN_SUBCOMMANDS, *U2F_INSTRUCTIONS)
_CLIENT_PIN_SUBCOMMAND = 0x02


class KeyPulled(Exception):
    """The key left the host (a fault plan pulled it); the transport shows it as removed."""


class KeyWedged(Exception):
    """The key stopped answering (a fault plan wedged it); the transport sends nothing."""


@dataclass(frozen=True)
class FaultPlan:
    """What goes wrong with a key, and when (see the module docstring for the PLAN syntax)."""

    pull_after: int | None = None
    pull_during: str | None = None
    wedge_after: int | None = None
    wedge_during: str | None = None
    slow: float = 0.0
    no_touch: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> FaultPlan:
        """A PLAN such as `slow:0.2,pull-during:setPIN`; VirtualError names a bad part."""
        fields: dict[str, object] = {}
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            name, _, arg = part.partition(":")
            key = name.replace("-", "_")
            if key in fields:
                raise VirtualError(f"fault {name!r} given twice in {text!r}")
            fields[key] = _parse_argument(name, arg, part)
        return cls(**fields)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = []
        for name in ("pull_after", "pull_during", "wedge_after", "wedge_during"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name.replace('_', '-')}:{value}")
        if self.slow:
            parts.append(f"slow:{self.slow:g}")
        if self.no_touch is not None:
            parts.append(f"no-touch:{self.no_touch:g}")
        return ",".join(parts)

    def __bool__(self) -> bool:
        return bool(str(self))

    def presence(self, policy: PresencePolicy) -> PresencePolicy:
        """The presence policy under this plan: `never` with no-touch, else `policy`."""
        return PresencePolicy.never(self.no_touch) if self.no_touch is not None else policy


def _parse_argument(name: str, arg: str, part: str) -> object:
    if name in ("pull-after", "wedge-after"):
        if not arg.isdigit():
            raise VirtualError(f"fault {part!r}: {name} needs a command count, e.g. {name}:3")
        return int(arg)
    if name in ("pull-during", "wedge-during"):
        if arg not in COMMAND_NAMES:
            raise VirtualError(f"fault {part!r}: unknown command; one of {', '.join(COMMAND_NAMES)}")
        return arg
    if name in ("slow", "no-touch"):
        if not arg and name == "no-touch":
            return NO_TOUCH_DEFAULT
        try:
            seconds = float(arg)
        except ValueError:
            raise VirtualError(f"fault {part!r}: {name} needs seconds, e.g. {name}:0.5") from None
        if not 0 <= seconds <= 3600:
            raise VirtualError(f"fault {part!r}: seconds must be between 0 and 3600")
        return seconds
    raise VirtualError(
        f"unknown fault {name!r}; use pull-after:N, pull-during:CMD, wedge-after:N, "
        "wedge-during:CMD, slow:SECONDS, no-touch[:SECONDS]"
    )


def command_names(request: bytes, *, u2f: bool = False) -> set[str]:
    """The names a request answers to: its CTAP command and, for clientPIN, its subcommand."""
    if not request:
        return set()
    if u2f:
        ins = request[1] if len(request) > 1 else -1
        return {name for name, value in U2F_INSTRUCTIONS.items() if value == ins}
    names = {name for name, value in CTAP_COMMANDS.items() if value == request[0]}
    if request[0] == CTAP_COMMANDS["clientPIN"]:
        try:
            params = cbor.decode(request[1:])
        except Exception:  # malformed CBOR: the authenticator answers it; no subcommand name
            params = None
        if isinstance(params, dict):
            sub = params.get(_CLIENT_PIN_SUBCOMMAND)
            names |= {name for name, value in PIN_SUBCOMMANDS.items() if value == sub}
    return names


class FaultInjector:
    """The fault plan of one open key: counts commands and fires the plan's faults."""

    def __init__(
        self,
        key: VirtualAuthenticator,
        plan: FaultPlan,
        on_fired: Callable[[FaultPlan], None] | None = None,
    ) -> None:
        self.plan = plan
        self.commands = 0
        self.fault: type[Exception] | None = None  # KeyPulled / KeyWedged once fired
        self._on_fired = on_fired
        self._lock = threading.Lock()
        untouched = key.__dict__.setdefault("_presence_without_faults", key.presence)
        key.presence = plan.presence(untouched)

    def run(
        self,
        process: Callable[..., bytes],
        request: bytes,
        *,
        u2f: bool = False,
        keepalive: Keepalive | None = None,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """`process(request, keepalive=, cancel=)` under the plan; raises KeyPulled / KeyWedged."""
        if not self.plan and self.fault is None:  # no faults: nothing to count or decode
            return process(request, keepalive=keepalive, cancel=cancel)
        self._before()
        if self.plan.slow:
            wait_with_keepalive(self.plan.slow, STATUS.PROCESSING, keepalive, cancel)
        response = process(request, keepalive=keepalive, cancel=cancel)
        self._after(command_names(request, u2f=u2f))
        return response

    def _before(self) -> None:
        with self._lock:
            if self.fault is not None:
                raise self.fault("the key already failed")
            if self.plan.pull_after is not None and self.commands >= self.plan.pull_after:
                self._fire(KeyPulled, pull_after=None)
            if self.plan.wedge_after is not None and self.commands >= self.plan.wedge_after:
                self._fire(KeyWedged, wedge_after=None)

    def _after(self, names: set[str]) -> None:
        with self._lock:
            self.commands += 1
            if self.plan.pull_during in names:
                self._fire(KeyPulled, pull_during=None)
            if self.plan.wedge_during in names:
                self._fire(KeyWedged, wedge_during=None)

    def _fire(self, fault: type[Exception], **struck: None) -> None:
        self.fault = fault
        self.plan = replace(self.plan, **struck)
        if self._on_fired is not None:
            self._on_fired(self.plan)
        raise fault(f"fault plan: the key is {'pulled' if fault is KeyPulled else 'wedged'}")

    def power_cycle(self) -> None:
        """Power loss: a wedged key answers again (a pulled key stays gone)."""
        with self._lock:
            if self.fault is KeyWedged:
                self.fault = None


# ---------------------------------------------------------------- the plan of a key
def plan_path(statefile: Path) -> Path:
    """Where the plan of the key at `statefile` is kept: STATEFILE.fault."""
    statefile = Path(statefile)
    return statefile.with_name(statefile.name + ".fault")


def load_plan(statefile: Path) -> FaultPlan:
    """The plan kept for the key at `statefile` (no file: no faults)."""
    try:
        text = plan_path(statefile).read_text(encoding="utf-8")
    except FileNotFoundError:
        return FaultPlan()
    return FaultPlan.parse(text.strip())


def save_plan(statefile: Path, plan: FaultPlan) -> None:
    """Keep `plan` for the key at `statefile` (an empty plan removes the file)."""
    path = plan_path(statefile)
    if plan:
        path.write_text(f"{plan}\n", encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


def _statefile(key: VirtualAuthenticator) -> Path:
    return key._file.path  # noqa: SLF001 — the key's own state file, known to this package only


def injector(key: VirtualAuthenticator) -> FaultInjector:
    """The fault injector of an open key: made on first use from STATEFILE.fault."""
    found = key.__dict__.get("_fault_injector")
    if found is None:
        found = _attach(key, load_plan(_statefile(key)), persist=True)
    return found


def set_plan(key: VirtualAuthenticator, plan: FaultPlan | str, *, persist: bool = False) -> FaultInjector:
    """Put `plan` on the open key from now on (counting commands from zero). With `persist`
    the plan is also kept in STATEFILE.fault, so it applies whenever the key is opened."""
    plan = plan if isinstance(plan, FaultPlan) else FaultPlan.parse(plan)
    if persist:
        save_plan(_statefile(key), plan)
    return _attach(key, plan, persist=persist)


def _attach(key: VirtualAuthenticator, plan: FaultPlan, *, persist: bool) -> FaultInjector:
    statefile = _statefile(key)
    on_fired = (lambda remaining: save_plan(statefile, remaining)) if persist else None
    found = FaultInjector(key, plan, on_fired)
    key.__dict__["_fault_injector"] = found
    return found


def removed_error(operation: str) -> OSError:
    """The OSError Linux's hidraw gives for a removed device: EIO on read, ENODEV on write."""
    code = errno.EIO if operation == "read" else errno.ENODEV
    return OSError(code, f"{'Input/output error' if code == errno.EIO else 'No such device'} "
                         "(the virtual key was pulled)")

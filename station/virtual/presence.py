"""User presence as a policy, and the optional per-command latency model.

A real key blinks and waits for a touch; the virtual one follows a `PresencePolicy`:
approve at once, approve after a delay (sending keepalive UPNEEDED meanwhile), or never
(CTAP2_ERR_USER_ACTION_TIMEOUT once the timeout passes). A set `cancel` event ends the wait
with CTAP2_ERR_KEEPALIVE_CANCEL, as CTAPHID_CANCEL does on a real key.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from fido2.ctap import STATUS, CtapError

from .errors import VirtualError

#: How often keepalive(status) is called while the authenticator waits (CTAPHID: every 100 ms).
KEEPALIVE_INTERVAL = 0.1

Keepalive = Callable[[int], None]


def wait_with_keepalive(
    seconds: float, status: STATUS, keepalive: Keepalive | None, cancel: threading.Event | None
) -> None:
    """Wait `seconds`, calling keepalive(status) about every 100 ms; a set `cancel` aborts."""
    deadline = time.monotonic() + seconds
    while True:
        if cancel is not None and cancel.is_set():
            raise CtapError(CtapError.ERR.KEEPALIVE_CANCEL)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if keepalive is not None:
            keepalive(status)
        if cancel is not None:
            cancel.wait(min(KEEPALIVE_INTERVAL, remaining))
        else:
            time.sleep(min(KEEPALIVE_INTERVAL, remaining))


@dataclass(frozen=True)
class PresencePolicy:
    """How the simulated user answers a test of user presence.

    mode "approve": at once; "delay": after `seconds`; "never": CTAP2_ERR_USER_ACTION_TIMEOUT
    after `seconds` (a real YubiKey gives up after about 30 s).
    """

    mode: str = "approve"
    seconds: float = 0.0

    MODES = ("approve", "delay", "never")

    def __post_init__(self) -> None:
        if self.mode not in self.MODES:
            raise VirtualError(f"unknown presence mode {self.mode!r}; use one of {self.MODES}")
        if self.seconds < 0:
            raise VirtualError("presence seconds must not be negative")

    @classmethod
    def approve(cls) -> PresencePolicy:
        return cls("approve", 0.0)

    @classmethod
    def delay(cls, seconds: float) -> PresencePolicy:
        return cls("delay", seconds)

    @classmethod
    def never(cls, timeout: float = 30.0) -> PresencePolicy:
        return cls("never", timeout)

    @classmethod
    def parse(cls, text: str) -> PresencePolicy:
        """`approve`, `delay:SECONDS`, `never` or `never:TIMEOUT` (the CLI's --presence)."""
        mode, _, arg = text.partition(":")
        try:
            seconds = float(arg) if arg else (30.0 if mode == "never" else 0.0)
        except ValueError:
            raise VirtualError(f"bad presence seconds in {text!r}") from None
        return cls(mode, seconds)

    def test_user_presence(
        self, keepalive: Keepalive | None = None, cancel: threading.Event | None = None
    ) -> None:
        """Collect user presence, or raise the CtapError a real key would answer."""
        wait_with_keepalive(self.seconds, STATUS.UPNEEDED, keepalive, cancel)
        if self.mode == "never":
            raise CtapError(CtapError.ERR.USER_ACTION_TIMEOUT)


@dataclass(frozen=True)
class LatencyModel:
    """Extra processing time per CTAP command byte, in seconds (keepalive PROCESSING meanwhile).

    This is OUR OWN ASSUMPTION: no public figures exist for the latency of CTAP operations on
    real YubiKeys or Crescendos. Zero by default.
    """

    per_command: dict[int, float] = field(default_factory=dict)
    default: float = 0.0

    def delay(self, command: int, keepalive: Keepalive | None, cancel: threading.Event | None) -> None:
        """Sleep the modelled time for `command`."""
        seconds = self.per_command.get(command, self.default)
        if seconds > 0:
            wait_with_keepalive(seconds, STATUS.PROCESSING, keepalive, cancel)

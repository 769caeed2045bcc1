"""The link from the virtual card to pcscd's virtual reader (vsmartcard's vpcd driver).

vpcd, loaded by pcscd (/etc/reader.conf.d/vpcd), listens on TCP 35963 for "Virtual PCD 00 00";
the card side (this module) connects to it. Every frame in both directions is a 2-byte
big-endian length and a payload. A 1-byte payload from vpcd is a control code (0 power off,
1 power on, 2 reset, 4 ATR request — only the last is answered, with the ATR); anything else
is a command APDU, answered with the response APDU.

pcscd powers the card down when a client disconnects with SCARD_UNPOWER_CARD (pyscard's
default) and polls presence with ATR requests. Power off and reset are power loss for the
authenticator (`FidoApplet.power_cycle`: PIN tokens and key agreement keys, the selected applet,
pending replies and getNextAssertion series are lost, the reset window starts again at the power-up
that follows), and so is the link closing (the card left the reader).

Fault plans (station.virtual.faults): a pulled card closes the link (the card leaves the reader)
and `serve` returns; a wedged card takes APDUs and answers none (ATR requests still get the ATR,
which the reader holds), until pcscd powers it off or resets it.

vpcd hands the ATR to pcscd unchanged and checks nothing in it; the profiles give PC/SC part 3
contactless ATRs (3B 8n 80 01 <historical bytes> TCK), which pcscd parses as offering T=0 and
T=1 and which yubikit reads as the NFC transport.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from enum import IntEnum, unique
from pathlib import Path
from typing import TYPE_CHECKING

from . import faults
from .apdu import FidoApplet

if TYPE_CHECKING:
    from .authenticator import VirtualAuthenticator

logger = logging.getLogger(__name__)

VPCD_HOST = "127.0.0.1"
VPCD_PORT = 35963
#: How often a waiting link checks its stop event and retries a refused connection.
POLL_INTERVAL = 0.2
#: Linux's TCP_QUICKACK (re-armed after every read; without it each APDU waits ~40 ms).
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


@unique
class CTRL(IntEnum):
    """vpcd control codes (1-byte frames)."""

    POWER_OFF = 0
    POWER_ON = 1
    RESET = 2
    ATR = 4


def serve(
    authenticator: VirtualAuthenticator,
    host: str = VPCD_HOST,
    port: int = VPCD_PORT,
    stop_event: threading.Event | None = None,
    *,
    on_inserted: Callable[[], None] | None = None,
    on_waiting: Callable[[], None] | None = None,
    on_pulled: Callable[[], None] | None = None,
) -> None:
    """Insert the authenticator as a card into vpcd's reader until `stop_event` is set.

    Connects (retrying while vpcd is not listening, after calling `on_waiting` once), calls
    `on_inserted` once linked, answers frames, and reconnects when pcscd drops the link.
    Returns when stopped, or after `on_pulled` when a fault plan pulled the card.
    """
    stop = stop_event or threading.Event()
    applet = FidoApplet(authenticator)
    while not stop.is_set():
        link = _connect(host, port, stop, on_waiting)
        if link is None:
            return
        if on_inserted is not None:
            on_inserted()
        try:
            pulled = _serve_link(link, applet, stop)
        finally:
            link.close()
        if pulled:
            if on_pulled is not None:
                on_pulled()
            return
        applet.power_cycle()  # the card left the reader


def _connect(
    host: str, port: int, stop: threading.Event, on_waiting: Callable[[], None] | None
) -> socket.socket | None:
    while not stop.is_set():
        try:
            link = socket.create_connection((host, port), timeout=POLL_INTERVAL)
        except OSError:
            if on_waiting is not None:
                on_waiting()
                on_waiting = None
            stop.wait(POLL_INTERVAL)
            continue
        link.settimeout(POLL_INTERVAL)
        link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return link
    return None


def _serve_link(link: socket.socket, applet: FidoApplet, stop: threading.Event) -> bool:
    """Answer frames until the link ends; True if a fault plan pulled the card."""
    frames = _FrameReader(link, stop)
    while True:
        frame = frames.next()
        if frame is None:
            return False
        try:
            reply = answer(applet, frame)
        except faults.KeyPulled:
            return True
        except faults.KeyWedged:
            continue  # a wedged card never answers the APDU
        if reply is None:
            continue
        try:
            link.sendall(len(reply).to_bytes(2, "big") + reply)
        except (ConnectionError, TimeoutError):  # vpcd went away mid-reply: the card is out
            return False


def answer(applet: FidoApplet, frame: bytes) -> bytes | None:
    """The card's answer to one vpcd frame (None for the control codes that want none)."""
    if len(frame) != 1:
        return applet.apdu(frame)
    code = frame[0]
    if code == CTRL.ATR:
        return applet.atr
    if code in (CTRL.POWER_OFF, CTRL.RESET):
        applet.power_cycle()
    elif code != CTRL.POWER_ON:
        logger.warning("vpcd sent unknown control code %d; ignored", code)
    return None


class _FrameReader:
    """Reads length-prefixed frames, checking the stop event while the link is quiet."""

    def __init__(self, link: socket.socket, stop: threading.Event) -> None:
        self._link = link
        self._stop = stop
        self._buffer = bytearray()

    def next(self) -> bytes | None:
        """The next frame, or None once stopped or when vpcd closed the link."""
        if not self._fill(2):
            return None
        length = int.from_bytes(self._buffer[:2], "big")
        if not self._fill(2 + length):
            return None
        frame = bytes(self._buffer[2 : 2 + length])
        del self._buffer[: 2 + length]
        return frame

    def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            if self._stop.is_set():
                return False
            try:
                chunk = self._link.recv(4096)
            except TimeoutError:
                continue
            except ConnectionError:
                return False
            if not chunk:
                return False
            if _QUICKACK is not None:  # ACK vpcd's frame at once: delayed ACKs cost 40 ms per APDU
                self._link.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            self._buffer += chunk
        return True


def serve_until_signalled(
    statefile: Path,
    *,
    host: str = VPCD_HOST,
    port: int = VPCD_PORT,
    presence: str = "approve",
    fault: str | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """`station virtual serve`: open the key at STATEFILE and keep it inserted into vpcd's
    reader until SIGINT or SIGTERM (or until a fault plan pulls it); `announce` gets one line
    each time the card is inserted or pulled. `fault` (a PLAN, see station.virtual.faults)
    replaces the plan kept in STATEFILE.fault for this run."""
    from .authenticator import VirtualAuthenticator
    from .presence import PresencePolicy

    policy = PresencePolicy.parse(presence)
    plan = faults.FaultPlan.parse(fault) if fault is not None else None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        authenticator = VirtualAuthenticator.open(statefile, presence=policy)
        try:
            name = authenticator.profile.name
            if plan is not None:
                faults.set_plan(authenticator, plan)
            serve(
                authenticator,
                host,
                port,
                stop,
                on_inserted=lambda: announce(f"inserted {statefile} ({name}) into vpcd at {host}:{port}"),
                on_waiting=lambda: announce(
                    f"waiting for vpcd at {host}:{port} (is pcscd running with vsmartcard-vpcd?)"
                ),
                on_pulled=lambda: announce(f"pulled {statefile} out of vpcd's reader (fault plan)"),
            )
        finally:
            authenticator.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

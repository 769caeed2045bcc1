"""Device-side CTAPHID (CTAP 2.1 §11.2 "USB Human Interface Device (USB HID)").

`VirtualHidDevice` is the authenticator's HID interface: it takes 64-byte output reports from
the host, reassembles messages (initialization packet + continuation packets), allocates
channels, answers CTAPHID_INIT, PING, WINK, CBOR, MSG (CTAP1/U2F, on a profile with U2F; else
ERR_INVALID_CMD and capability NMSG), CANCEL and the YubiKey vendor command READ_CONFIG, sends
KEEPALIVE while a CBOR or MSG request waits, and reports framing faults with
CTAPHID_ERROR. Every opener of the device receives every input report, as with a real hidraw
node; a client ignores (or, like python-fido2, rejects) reports for channels other than its own.

`open_hid(authenticator)` returns python-fido2's real `fido2.hid.CtapHidDevice` running over a
`VirtualHidConnection`, so the client side is exactly what talks to a real key.
`open_another(device)` opens the same virtual node again, as a second process opening the same
/dev/hidraw path does: its CTAPHID_INIT answer lands in the first opener's reports too, and
python-fido2 (which rejects a report for another channel with ConnectionFailure "Wrong channel")
breaks on it, as on Linux. `VirtualHidBus` is a USB hub of virtual hidraw nodes behind
python-fido2's own enumeration (fido2.hid.list_descriptors / get_descriptor / open_connection),
so `CtapHidDevice.list_devices()` and `fido2.hid.open_device(path)` open new handles on them.

Fault plans (station.virtual.faults) act here: a pulled key's node disappears (queued reports
are still read, then OSError EIO on read and ENODEV on write, FileNotFoundError on open); a
wedged key sends no report at all.

CTAPHID_INIT during a transaction (CTAP 2.1 §11.2.9.1.3): on the busy channel it aborts the
transaction (its answer is discarded) and resynchronises the channel; any other request on
another channel meanwhile is answered ERR_CHANNEL_BUSY (§11.2.5).

Assumptions (not fixed by the spec): the message timeout (ERR_MSG_TIMEOUT) is 0.5 s from the
initialization packet; a CTAPHID_INIT from another channel (or the broadcast one) is served even
while a channel is busy: it starts no transaction, as OpenSK's CTAPHID (src/ctap/hid/mod.rs)
answers INIT before any busy check.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, unique
from typing import TYPE_CHECKING

from fido2.ctap import CtapError
from fido2.hid import CAPABILITY, CTAPHID, TYPE_INIT, CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor

from . import faults
from .errors import VirtualError

if TYPE_CHECKING:
    from .authenticator import VirtualAuthenticator

logger = logging.getLogger(__name__)

PACKET_SIZE = 64
INIT_DATA_SIZE = PACKET_SIZE - 7  # CID(4) CMD(1) BCNTH(1) BCNTL(1)
CONT_DATA_SIZE = PACKET_SIZE - 5  # CID(4) SEQ(1)
BROADCAST_CID = 0xFFFFFFFF
#: The largest message the framing can carry: one init packet and 128 continuation packets.
MAX_MESSAGE_SIZE = INIT_DATA_SIZE + 128 * CONT_DATA_SIZE
#: CTAPHID protocol version reported by CTAPHID_INIT.
CTAPHID_PROTOCOL_VERSION = 2
#: Not a report: tells a blocked reader that a message timeout is now pending.
_WAKE = b"wake"
#: Not a report: the device node went away (the key was pulled).
_GONE = b"gone"


@dataclass
class _Assembly:
    """A request message being reassembled from its packets."""

    cid: int
    cmd: int
    length: int
    data: bytearray
    deadline: float
    seq: int = 0


@dataclass
class _Job:
    """A CTAPHID_CBOR or CTAPHID_MSG request running on the worker thread."""

    cid: int
    cmd: int
    cancel: threading.Event = field(default_factory=threading.Event)


class VirtualHidDevice:
    """The CTAPHID interface of one virtual authenticator (the device side of §11.2)."""

    #: ERR_MSG_TIMEOUT is sent when a message's continuation packets stop for this long.
    MESSAGE_TIMEOUT = 0.5

    @unique
    class VENDOR(IntEnum):
        """Vendor CTAPHID commands (CTAPHID_VENDOR_FIRST + n) a YubiKey answers."""

        READ_CONFIG = CTAPHID.VENDOR_FIRST + 2  # yubikit's CTAP_READ_CONFIG

    def __init__(self, authenticator: VirtualAuthenticator) -> None:
        self._authenticator = authenticator
        self._lock = threading.RLock()
        self._process_lock = threading.Lock()  # one process() at a time, even after an abort
        self._connections: list[VirtualHidConnection] = []
        self._channels: set[int] = set()
        self._assembly: _Assembly | None = None
        self._job: _Job | None = None
        self.path = f"virtual-hid:{id(self):x}"
        self.unplugged = False
        self.wedged = False
        self._on_unplug: list[Callable[[], None]] = []

    @property
    def descriptor(self) -> HidDescriptor:
        """The HID descriptor of the profile's USB identity (vid, pid, product name)."""
        usb = self._authenticator.profile.usb
        if usb is None:
            raise VirtualError(f"{self._authenticator.profile.name} has no USB interface")
        return HidDescriptor(
            path=self.path,
            vid=usb.vid,
            pid=usb.pid,
            report_size_in=PACKET_SIZE,
            report_size_out=PACKET_SIZE,
            product_name=usb.product,
            serial_number=None,
        )

    def connect(self, on_close: Callable[[], None] | None = None) -> VirtualHidConnection:
        """Open the device, as opening its hidraw node does; `on_close` runs when it is closed."""
        with self._lock:
            if self.unplugged:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", self.path)
            connection = VirtualHidConnection(self, on_close)
            self._connections.append(connection)
        return connection

    def open(self, on_close: Callable[[], None] | None = None) -> CtapHidDevice:
        """python-fido2's CtapHidDevice on a new connection (it sends CTAPHID_INIT)."""
        descriptor = self.descriptor
        return CtapHidDevice(descriptor, self.connect(on_close))

    @property
    def capabilities(self) -> CAPABILITY:
        """WINK; CBOR unless the profile is CTAP1-only; NMSG unless it speaks CTAP1/U2F."""
        nmsg = CAPABILITY(0) if self._authenticator.profile.u2f else CAPABILITY.NMSG
        cbor = CAPABILITY.CBOR if self._authenticator.profile.ctap2 else CAPABILITY(0)
        return CAPABILITY.WINK | cbor | nmsg

    # -- host → device -----------------------------------------------------------------------
    def receive(self, packet: bytes) -> None:
        """Handle one output report (a 64-byte CTAPHID packet) from the host."""
        if len(packet) != PACKET_SIZE:
            raise OSError(f"a CTAPHID output report is {PACKET_SIZE} bytes, not {len(packet)}")
        cid, command = struct.unpack_from(">IB", packet)
        with self._lock:
            if self.unplugged:
                raise faults.removed_error("write")
            if self.wedged:
                return  # a wedged key takes the report and never answers
            if command & TYPE_INIT:
                (length,) = struct.unpack_from(">H", packet, 5)
                self._on_init_packet(cid, command & ~TYPE_INIT, length, packet[7:])
            else:
                self._on_continuation_packet(cid, command, packet[5:])

    def _on_init_packet(self, cid: int, cmd: int, length: int, data: bytes) -> None:
        if cid == 0:
            return self._error(cid, CtapError.ERR.INVALID_CHANNEL)
        if cmd == CTAPHID.INIT:
            return self._init(cid, length, data)
        if cid == BROADCAST_CID or cid not in self._channels:
            return self._error(cid, CtapError.ERR.INVALID_CHANNEL)
        if cmd == CTAPHID.CANCEL:
            return self._cancel(cid)
        if self._assembly is not None and self._assembly.cid == cid:
            self._assembly = None
            return self._error(cid, CtapError.ERR.INVALID_SEQ)
        if self._assembly is not None or self._job is not None:
            return self._error(cid, CtapError.ERR.CHANNEL_BUSY)
        if length > MAX_MESSAGE_SIZE:
            return self._error(cid, CtapError.ERR.INVALID_LENGTH)
        if length <= len(data):
            return self._dispatch(cid, cmd, data[:length])
        deadline = time.monotonic() + self.MESSAGE_TIMEOUT
        self._assembly = _Assembly(cid, cmd, length, bytearray(data), deadline)
        for connection in self._connections:  # blocked readers start watching the clock
            connection.deliver(_WAKE)

    def _on_continuation_packet(self, cid: int, seq: int, data: bytes) -> None:
        assembly = self._assembly
        if assembly is None or assembly.cid != cid:
            return  # a spurious continuation packet is ignored
        if seq != assembly.seq:
            self._assembly = None
            return self._error(cid, CtapError.ERR.INVALID_SEQ)
        assembly.seq += 1
        assembly.data += data
        if len(assembly.data) >= assembly.length:
            self._assembly = None
            self._dispatch(cid, assembly.cmd, bytes(assembly.data[: assembly.length]))

    def expire_messages(self) -> float | None:
        """ERR_MSG_TIMEOUT for a message whose continuation packets stopped coming; returns the
        seconds until the pending message would time out (None: none pending).

        Readers call this while they wait (a new pending message wakes them), so no timer
        thread is needed: a host learns of the timeout only by reading.
        """
        with self._lock:
            assembly = self._assembly
            if assembly is None:
                return None
            remaining = assembly.deadline - time.monotonic()
            if remaining > 0:
                return remaining
            self._assembly = None
            self._error(assembly.cid, CtapError.ERR.TIMEOUT)
            return None

    # -- commands ----------------------------------------------------------------------------
    def _init(self, cid: int, length: int, nonce: bytes) -> None:
        """CTAPHID_INIT: allocate a channel (on the broadcast CID) or resynchronise one."""
        if length != 8:
            return self._error(cid, CtapError.ERR.INVALID_LENGTH)
        if cid == BROADCAST_CID:
            new_cid = self._allocate_channel()
        elif cid in self._channels:
            new_cid = cid
            if self._assembly is not None and self._assembly.cid == cid:
                self._assembly = None
            if self._job is not None and self._job.cid == cid:
                self._job.cancel.set()
                self._job = None  # its response is discarded
        else:
            return self._error(cid, CtapError.ERR.INVALID_CHANNEL)
        major, minor, patch = self._authenticator.profile.firmware
        reply = nonce[:8] + struct.pack(
            ">IBBBBB", new_cid, CTAPHID_PROTOCOL_VERSION, major, minor, patch, self.capabilities
        )
        self._send(cid, CTAPHID.INIT, reply)

    def _allocate_channel(self) -> int:
        while True:
            cid = int.from_bytes(os.urandom(4), "big")
            if cid not in (0, BROADCAST_CID) and cid not in self._channels:
                self._channels.add(cid)
                return cid

    def _cancel(self, cid: int) -> None:
        """CTAPHID_CANCEL: ends a pending CBOR or MSG request on this channel; otherwise ignored."""
        if self._job is not None and self._job.cid == cid:
            self._job.cancel.set()

    def _dispatch(self, cid: int, cmd: int, payload: bytes) -> None:
        if cmd == CTAPHID.PING:
            self._send(cid, CTAPHID.PING, payload)
        elif cmd == CTAPHID.WINK:
            self._wink(cid, payload)
        elif cmd == CTAPHID.CBOR and self._authenticator.profile.ctap2:
            self._cbor(cid, payload)
        elif cmd == CTAPHID.MSG and self._authenticator.profile.u2f:
            self._start(cid, cmd, payload)
        elif cmd == self.VENDOR.READ_CONFIG and self._speaks_yubikit:
            self._read_config(cid, payload)
        else:  # MSG without U2F, CBOR on a CTAP1-only key, LOCK (not offered), anything unknown
            self._error(cid, CtapError.ERR.INVALID_COMMAND)

    def _wink(self, cid: int, payload: bytes) -> None:
        if payload:
            return self._error(cid, CtapError.ERR.INVALID_LENGTH)
        self._authenticator.wink()
        self._send(cid, CTAPHID.WINK, b"")

    @property
    def _speaks_yubikit(self) -> bool:
        return self._authenticator.profile.serial_source == "yubikit"

    def _read_config(self, cid: int, payload: bytes) -> None:
        """YubiKey READ_CONFIG: payload = page number; reply = the management config page."""
        if len(payload) != 1:
            return self._error(cid, CtapError.ERR.INVALID_LENGTH)
        self._send(cid, self.VENDOR.READ_CONFIG, self._authenticator.management_config(payload[0]))

    def _cbor(self, cid: int, payload: bytes) -> None:
        """CTAPHID_CBOR: run the CTAP command on a worker so CANCEL and KEEPALIVE can flow."""
        if not payload:
            return self._error(cid, CtapError.ERR.INVALID_LENGTH)
        self._start(cid, CTAPHID.CBOR, payload)

    def _start(self, cid: int, cmd: int, payload: bytes) -> None:
        """Run a CBOR or MSG request on a worker so CANCEL and KEEPALIVE can flow."""
        job = _Job(cid, cmd)
        self._job = job
        worker = threading.Thread(
            target=self._run, args=(job, payload), name=f"ctaphid-{cmd:02x}", daemon=True
        )
        worker.start()

    def _run(self, job: _Job, request: bytes) -> None:
        def keepalive(status: int) -> None:
            with self._lock:
                if self._job is job:
                    self._send(job.cid, CTAPHID.KEEPALIVE, bytes([status]))

        u2f = job.cmd != CTAPHID.CBOR
        process = self._authenticator.process_u2f if u2f else self._authenticator.process
        injector = faults.injector(self._authenticator)
        with self._process_lock:
            try:
                response = injector.run(process, request, u2f=u2f, keepalive=keepalive, cancel=job.cancel)
            except faults.KeyPulled:
                return self.unplug()
            except faults.KeyWedged:
                return self.wedge()
            except Exception:  # the firmware boundary: a crash must still answer the host
                logger.exception("the virtual authenticator failed on a CTAPHID request")
                response = None
        with self._lock:
            if self._job is not job:
                return
            self._job = None
            if response is None:
                self._error(job.cid, CtapError.ERR.OTHER)
            else:
                self._send(job.cid, job.cmd, response)

    # -- device → host -----------------------------------------------------------------------
    def _error(self, cid: int, code: CtapError.ERR) -> None:
        self._send(cid, CTAPHID.ERROR, bytes([code]))

    def _send(self, cid: int, cmd: int, data: bytes) -> None:
        """Split a response into input reports and hand them to every opener."""
        packets = [
            struct.pack(">IBH", cid, TYPE_INIT | cmd, len(data)) + data[:INIT_DATA_SIZE]
        ]
        rest = data[INIT_DATA_SIZE:]
        seq = 0
        while rest:
            packets.append(struct.pack(">IB", cid, seq) + rest[:CONT_DATA_SIZE])
            rest = rest[CONT_DATA_SIZE:]
            seq += 1
        if self.wedged or self.unplugged:
            return
        for connection in self._connections:
            for packet in packets:
                connection.deliver(packet.ljust(PACKET_SIZE, b"\0"))

    def unplug(self) -> None:
        """The key leaves the bus: every opener reads what was sent, then EIO; the node is gone."""
        with self._lock:
            if self.unplugged:
                return
            self.unplugged = True
            self._job = None
            self._assembly = None
            callbacks, self._on_unplug = self._on_unplug, []
        for callback in callbacks:  # the key is released before any opener learns it is gone
            callback()
        with self._lock:
            for connection in self._connections:
                connection.deliver(_GONE)

    def on_unplug(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when the key leaves the bus (e.g. release its state file)."""
        self._on_unplug.append(callback)

    def wedge(self) -> None:
        """The key stops answering: no report is sent any more, whatever the host writes."""
        with self._lock:
            self.wedged = True
            self._job = None
            self._assembly = None

    def detach(self, connection: VirtualHidConnection) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)


class VirtualHidConnection(CtapHidConnection):
    """One opener of the virtual HID device: write output reports, read input reports."""

    def __init__(self, device: VirtualHidDevice, on_close: Callable[[], None] | None = None) -> None:
        self.device = device
        self._on_close = on_close
        self._reports: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()  # None: closed
        self._closed = False

    def write_packet(self, data: bytes) -> None:
        if self._closed:
            raise OSError("the virtual HID connection is closed")
        self.device.receive(bytes(data))

    def read_packet(self, timeout: float | None = None) -> bytes:
        """The next input report; blocks like a read on hidraw (TimeoutError after `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self.device.expire_messages()
            if deadline is not None:
                left = deadline - time.monotonic()
                wait = left if wait is None else min(wait, left)
            try:
                packet = self._reports.get(timeout=None if wait is None else max(wait, 0))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("no CTAPHID input report") from None
                continue
            if packet is not _WAKE:
                break
        if packet is None:
            raise OSError("the virtual HID connection is closed")
        if packet is _GONE:
            self._reports.put(_GONE)  # every later read fails the same way
            raise faults.removed_error("read")
        return packet

    def deliver(self, packet: bytes) -> None:
        self._reports.put(packet)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.device.detach(self)
            self._reports.put(None)
            if self._on_close is not None:
                self._on_close()


def open_hid(authenticator: VirtualAuthenticator) -> CtapHidDevice:
    """python-fido2's CtapHidDevice over the authenticator's virtual CTAPHID interface.

    The device owns the authenticator: closing it unplugs the key (releases its state file),
    and so does a fault plan pulling the key. `open_another` opens further handles.
    """
    device = VirtualHidDevice(authenticator)
    release = _once(authenticator.close)  # the pull (worker thread) and close() may race
    device.on_unplug(release)
    return device.open(on_close=release)


def _once(func: Callable[[], None]) -> Callable[[], None]:
    lock, done = threading.Lock(), []

    def call() -> None:
        with lock:
            if not done:
                done.append(True)
                func()

    return call


def virtual_node(device: CtapHidDevice) -> VirtualHidDevice:
    """The virtual hidraw node under a CtapHidDevice opened on one."""
    connection = getattr(device, "_connection", None)
    if not isinstance(connection, VirtualHidConnection):
        raise VirtualError(f"{device!r} is not open on a virtual HID device")
    return connection.device


def open_another(device: CtapHidDevice) -> CtapHidDevice:
    """A second opener of the same virtual hidraw node (a new CtapHidDevice: it sends
    CTAPHID_INIT on the broadcast channel, which every opener receives). Closing it leaves the
    key plugged in."""
    return virtual_node(device).open()


class VirtualHidBus:
    """Virtual hidraw nodes behind python-fido2's enumeration, like keys on a USB hub.

        bus = VirtualHidBus(); path = bus.plug(VirtualAuthenticator.open(statefile))
        with bus.installed():   # fido2.hid.list_descriptors / get_descriptor / open_connection
            device = fido2.hid.open_device(path)   # a new opener each time
        bus.unplug(path)        # the key is pulled: openers see EIO, opening is FileNotFoundError

    Each node owns its authenticator (closed when unplugged or when the bus closes).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, VirtualHidDevice] = {}
        self._count = 0

    def plug(self, authenticator: VirtualAuthenticator) -> str:
        """Put the key on the bus; returns its path (/dev/hidraw-virtual-N)."""
        node = VirtualHidDevice(authenticator)
        node.path = f"/dev/hidraw-virtual-{self._count}"
        self._count += 1
        node.descriptor  # noqa: B018 — a card without USB cannot be plugged: VirtualError
        node.on_unplug(_once(authenticator.close))
        self._nodes[node.path] = node
        return node.path

    def node(self, path: str) -> VirtualHidDevice:
        return self._nodes[path]

    def unplug(self, path: str) -> None:
        node = self._nodes.pop(path, None)
        if node is not None:
            node.unplug()

    def list_descriptors(self) -> list[HidDescriptor]:
        return [node.descriptor for node in list(self._nodes.values()) if not node.unplugged]

    def get_descriptor(self, path: str) -> HidDescriptor:
        node = self._nodes.get(path)
        if node is None or node.unplugged:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return node.descriptor

    def open_connection(self, descriptor: HidDescriptor) -> VirtualHidConnection:
        node = self._nodes.get(descriptor.path)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", descriptor.path)
        return node.connect()

    @contextlib.contextmanager
    def installed(self):
        """python-fido2's hid enumeration sees this bus (and only it) inside the block."""
        import fido2.hid as fido2_hid

        names = ("list_descriptors", "get_descriptor", "open_connection")
        saved = {name: getattr(fido2_hid, name) for name in names}
        for name in names:
            setattr(fido2_hid, name, getattr(self, name))
        try:
            yield self
        finally:
            for name, value in saved.items():
                setattr(fido2_hid, name, value)

    def close(self) -> None:
        """Unplug every key."""
        for path in list(self._nodes):
            self.unplug(path)

"""Device-side ISO 7816-4 FIDO applet (CTAP 2.1 §11.3 "ISO7816, ISO14443 and NFC").

`FidoApplet` is the card as a reader sees it: APDUs in, response APDUs out. It answers
- SELECT of the FIDO AID A0000006472F0001 with "U2F_V2" on a profile with CTAP1/U2F, else
  "FIDO_2_0" (CTAP 2.1 §11.3.3);
- U2F_REGISTER / U2F_AUTHENTICATE / U2F_VERSION (CLA 00, INS 01-03, short or extended, with
  command chaining and 61xx like any command) on a profile with U2F, by `process_u2f`;
- NFCCTAP_MSG (CLA 80, INS 10) carrying a CTAP command byte + CBOR, with short-APDU command
  chaining (CLA bit 0x10) at any block size and extended APDUs; replies longer than Ne come in
  pieces with SW 61xx, fetched by GET RESPONSE (INS C0) with CLA 00 or 80 (libfido2 >= 1.16
  sends `80 C0 00 00 xx` after a CTAP command and `00 C0 00 00 xx` after SELECT or U2F;
  python-fido2 always `00 C0`; Java Card FIDO applets accept both, e.g. FIDO2Applet's process());
- NFCCTAP_GETRESPONSE (INS 11): when the client set P1 bit 0x80 on NFCCTAP_MSG, a request that
  is still running after 100 ms is answered with its keepalive status byte and SW 9100, and the
  client polls; P1 0x11 cancels (CTAP2_ERR_KEEPALIVE_CANCEL);
- for YubiKey profiles, the management applet (SELECT A000000527471117 answers the firmware
  version string; INS 1D READ_CONFIG answers the page yubikit reads the serial from);
- for Crescendo profiles (Java Cards), the GlobalPlatform card manager: SELECT of the issuer
  security domain (A000000151000000, or the older A000000003000000, also by its 7-byte prefix
  A0000000030000 as GPShell sends it) answers its FCI, and then GET DATA CPLC (80 CA 9F 7F, CLA 00
  too) answers the CPLC data. With the FIDO applet selected GET DATA is an instruction the applet
  does not know: 6D00, as a Java Card FIDO applet answers any CLA-80 INS but 10/11/C0
  (FIDO2Applet's process()); the serial is read by selecting the card manager, then the FIDO
  applet again;
- ISO errors: 6700 wrong length, 6883 last command of a chain expected, 6985 conditions not
  satisfied, 6A82 application not found, 6A86 incorrect P1/P2, 6A88 data not found, 6D00 INS not
  supported (U2F INS 01–03 too without U2F), 6E00 CLA not supported, 6F00 the authenticator
  failed; U2F's own status words (u2f.py) otherwise.

The clients' framing, which the card must take as is (tests/virtual/test_apdu_replay.py replays it):
- libfido2 (src/nfc.c, src/iso7816.c, src/pcsc.c; PC/SC since 1.13): builds every command as
  an extended-format APDU internally (CLA INS P1 00 | 00 Lc1 Lc2 | data | Le1 Le2), then strips the
  3-byte Lc and the Le and sends SHORT APDUs only: blocks of 240 bytes with CLA | 0x10, each
  `CLA|10 INS P1 P2 F0 <240 bytes> 00` and answered by exactly 9000, then the last block
  `CLA INS P1 P2 Lc <data> 00`; SELECT is `00 A4 04 00 08 <AID> 00`, NFCCTAP_MSG is CLA 80 INS 10
  P1 00 (libfido2 never polls with NFCCTAP_GETRESPONSE). It follows 61xx with GET RESPONSE, Le =
  SW2, CLA 80 after NFCCTAP_MSG from 1.16 on (00 before), and takes at most 264 bytes per reply
  (pcsc.c's APDULEN), so a reply must come in pieces of at most 256 bytes + SW;
- python-fido2 (fido2/pcsc.py): short APDUs chained at 250 bytes (CLA | 0x10, no Le on the
  chained blocks), the last with Le 00, GET RESPONSE `00 C0 00 00 SW2`; or, with use_ext_apdu,
  one extended APDU `CLA INS P1 P2 00 Lc1 Lc2 <data>` without Le; NFCCTAP_MSG with P1 80 and
  NFCCTAP_GETRESPONSE `80 11 P1 00 00` polls.

Assumptions: a command without Le is answered as if Le were 256 (short) or 65536 (extended),
as contactless cards do in practice; chained data is capped at 7609 bytes (the CTAPHID limit);
after power-up no applet is selected (a client selects the one it wants; a card whose default
applet is the card manager would be kinder); the card manager's FCI is the one a JCOP card
answers (6F 10 84 08 <AID> A5 04 9F 65 01 FF, from a GPShell trace of a JCOP 31).

`VirtualCardConnection` is a pyscard `CardConnection` on the applet, in process, so python-fido2's
real `CtapPcscDevice` (and yubikit) run over it; `open_pcsc(authenticator)` builds that device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum, unique
from typing import TYPE_CHECKING

from fido2.ctap import STATUS
from fido2.pcsc import CtapPcscDevice
from smartcard.CardConnection import CardConnection
from smartcard.Exceptions import CardConnectionException, NoCardException
from smartcard.scard import (
    SCARD_E_NOT_TRANSACTED,
    SCARD_LEAVE_CARD,
    SCARD_UNPOWER_CARD,
    SCARD_W_REMOVED_CARD,
)

from . import faults
from .errors import VirtualError

if TYPE_CHECKING:
    from .authenticator import VirtualAuthenticator

logger = logging.getLogger(__name__)

#: The name python-fido2 gets for the in-process reader.
READER_NAME = "Virtual FIDO Reader (in-process) 00 00"


class _StatusWord(Exception):
    """Ends an APDU with a bare status word."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


@dataclass(frozen=True)
class CommandApdu:
    """An ISO 7816-4 command APDU (cases 1–4, short or extended)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int = 256  # expected response length; absent Le → the format's maximum
    extended: bool = False

    @classmethod
    def parse(cls, apdu: bytes) -> CommandApdu:
        """Decode the header, Lc/data and Le; a length that fits no case is SW 6700."""
        if len(apdu) < 4:
            raise _StatusWord(FidoApplet.SW.WRONG_LENGTH)
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if not body:  # case 1
            return cls(cla, ins, p1, p2)
        if len(body) == 1:  # case 2 short
            return cls(cla, ins, p1, p2, ne=body[0] or 256)
        if body[0]:  # short Lc
            lc = body[0]
            if len(body) == 1 + lc:
                return cls(cla, ins, p1, p2, body[1:])
            if len(body) == 2 + lc:
                return cls(cla, ins, p1, p2, body[1:-1], ne=body[-1] or 256)
            raise _StatusWord(FidoApplet.SW.WRONG_LENGTH)
        return cls._parse_extended(cla, ins, p1, p2, body)

    @classmethod
    def _parse_extended(cls, cla: int, ins: int, p1: int, p2: int, body: bytes) -> CommandApdu:
        if len(body) == 3:  # case 2 extended
            return cls(cla, ins, p1, p2, ne=int.from_bytes(body[1:], "big") or 65536, extended=True)
        lc = int.from_bytes(body[1:3], "big")
        data = body[3 : 3 + lc]
        if lc and len(body) == 3 + lc:
            return cls(cla, ins, p1, p2, data, ne=65536, extended=True)
        if lc and len(body) == 5 + lc:
            le = int.from_bytes(body[-2:], "big") or 65536
            return cls(cla, ins, p1, p2, data, ne=le, extended=True)
        raise _StatusWord(FidoApplet.SW.WRONG_LENGTH)


@dataclass
class _Job:
    """An NFCCTAP_MSG request running on the worker thread."""

    status: int = STATUS.PROCESSING
    response: bytes | None = None
    fault: Exception | None = None  # KeyPulled / KeyWedged from the fault plan
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class FidoApplet:
    """The card: the FIDO applet plus the vendor interfaces a real card of the profile has."""

    AID_FIDO = bytes.fromhex("A0000006472F0001")
    AID_MANAGEMENT = bytes.fromhex("A000000527471117")
    #: GlobalPlatform issuer security domain (card manager) AIDs: GP 2.x, and Open Platform's.
    AIDS_CARD_MANAGER = (bytes.fromhex("A000000151000000"), bytes.fromhex("A000000003000000"))
    #: The shortest AID prefix a partial SELECT by DF name may give (ISO 7816-5 RID length).
    MIN_PARTIAL_AID = 5
    SELECT_REPLY = b"FIDO_2_0"
    SELECT_REPLY_U2F = b"U2F_V2"
    #: How long NFCCTAP_MSG / NFCCTAP_GETRESPONSE wait before answering 9100 (keepalive).
    KEEPALIVE_INTERVAL = 0.1
    MAX_CHAINED_DATA = 7609
    CPLC_P1P2 = (0x9F, 0x7F)

    @unique
    class CLA(IntEnum):
        ISO = 0x00
        PROPRIETARY = 0x80
        CHAINING = 0x10  # bit: more command blocks follow

    @unique
    class INS(IntEnum):
        NFCCTAP_MSG = 0x10
        NFCCTAP_GETRESPONSE = 0x11
        READ_CONFIG = 0x1D  # YubiKey management applet
        SELECT = 0xA4
        GET_RESPONSE = 0xC0
        GET_DATA = 0xCA

    @unique
    class P1(IntEnum):
        SELECT_BY_NAME = 0x04
        GETRESPONSE_SUPPORTED = 0x80  # NFCCTAP_MSG: the client polls with NFCCTAP_GETRESPONSE
        CANCEL = 0x11  # NFCCTAP_GETRESPONSE: cancel the running request

    @unique
    class SW(IntEnum):
        OK = 0x9000
        UPDATE = 0x9100  # NFCCTAP keepalive: status byte in the data
        MORE_DATA = 0x6100  # | bytes remaining (00 = 256 or more)
        WRONG_LENGTH = 0x6700
        LAST_COMMAND_EXPECTED = 0x6883
        CONDITIONS_NOT_SATISFIED = 0x6985
        FILE_NOT_FOUND = 0x6A82
        INCORRECT_P1P2 = 0x6A86
        DATA_NOT_FOUND = 0x6A88
        INS_NOT_SUPPORTED = 0x6D00
        CLA_NOT_SUPPORTED = 0x6E00
        NO_PRECISE_DIAGNOSIS = 0x6F00

    def __init__(self, authenticator: VirtualAuthenticator) -> None:
        if not authenticator.profile.pcsc:
            raise VirtualError(f"{authenticator.profile.name} has no smart card interface")
        self._authenticator = authenticator
        self._lock = threading.RLock()
        self._process_lock = threading.Lock()
        self._fault: type[Exception] | None = None
        self._reset_card_state()

    def _reset_card_state(self) -> None:
        self._selected: bytes | None = None
        self._chained: tuple[tuple[int, int, int, int], bytes] | None = None
        self._remaining: bytes | None = None
        self._job: _Job | None = None
        if self._fault is faults.KeyWedged:
            self._fault = None  # power loss un-wedges a card; a pulled one stays out

    @property
    def atr(self) -> bytes:
        """The profile's ATR (a PC/SC part 3 contactless ATR)."""
        return self._authenticator.profile.atr

    def power_cycle(self) -> None:
        """The card left the field (or lost power): applet state and volatile CTAP state go."""
        with self._lock:
            self._abandon_job()
            self._reset_card_state()
            faults.injector(self._authenticator).power_cycle()
            self._authenticator.power_cycle()

    def apdu(self, command: bytes) -> bytes:
        """Process one command APDU; returns response data + SW1 SW2. Under a fault plan it
        raises faults.KeyPulled (the card left the field) or faults.KeyWedged (no answer)."""
        with self._lock:
            if self._fault is not None:
                raise self._fault("the card already failed")
            try:
                data, sw = self._handle(CommandApdu.parse(bytes(command)))
            except _StatusWord as status:
                data, sw = b"", status.sw
            return data + sw.to_bytes(2, "big")

    # -- transport layer: class, response chaining, command chaining ------------------------------
    def _handle(self, cmd: CommandApdu) -> tuple[bytes, int]:
        if cmd.cla & ~self.CLA.CHAINING not in (self.CLA.ISO, self.CLA.PROPRIETARY):
            raise _StatusWord(self.SW.CLA_NOT_SUPPORTED)
        if cmd.ins == self.INS.GET_RESPONSE and cmd.cla in (self.CLA.ISO, self.CLA.PROPRIETARY):
            return self._get_response(cmd)
        self._remaining = None
        if self._job is not None and cmd.ins != self.INS.NFCCTAP_GETRESPONSE:
            self._abandon_job()
        whole = self._chain(cmd)
        if whole is None:
            return b"", self.SW.OK
        data, sw = self._execute(whole)
        return self._respond(data, sw, whole.ne)

    def _chain(self, cmd: CommandApdu) -> CommandApdu | None:
        """Collect command chaining blocks; returns the whole command after the last block."""
        key = (cmd.cla & ~self.CLA.CHAINING, cmd.ins, cmd.p1, cmd.p2)
        earlier = b""
        if self._chained is not None:
            chained_key, earlier = self._chained
            self._chained = None
            if chained_key != key:
                raise _StatusWord(self.SW.LAST_COMMAND_EXPECTED)
        data = earlier + cmd.data
        if len(data) > self.MAX_CHAINED_DATA:
            raise _StatusWord(self.SW.WRONG_LENGTH)
        if cmd.cla & self.CLA.CHAINING:
            self._chained = (key, data)
            return None
        return replace(cmd, cla=key[0], data=data)

    def _respond(self, data: bytes, sw: int, ne: int) -> tuple[bytes, int]:
        """Send at most Ne bytes; keep the rest for GET RESPONSE and say so with 61xx."""
        if sw != self.SW.OK or len(data) <= ne:
            return data, sw
        self._remaining = data[ne:]
        return data[:ne], self.SW.MORE_DATA | min(len(self._remaining), 256) % 256

    def _get_response(self, cmd: CommandApdu) -> tuple[bytes, int]:
        """GET RESPONSE (00 or 80, C0 00 00 Le): the next piece of a long reply."""
        if (cmd.p1, cmd.p2) != (0, 0):
            raise _StatusWord(self.SW.INCORRECT_P1P2)
        if self._remaining is None:
            raise _StatusWord(self.SW.CONDITIONS_NOT_SATISFIED)
        data, self._remaining = self._remaining, None
        return self._respond(data, self.SW.OK, cmd.ne)

    # -- card layer: which applet answers ---------------------------------------------------------
    def _execute(self, cmd: CommandApdu) -> tuple[bytes, int]:
        if (cmd.cla, cmd.ins) == (self.CLA.ISO, self.INS.SELECT):
            return self._select(cmd)
        if self._selected == self.AID_FIDO:
            return self._fido(cmd)
        if self._selected == self.AID_MANAGEMENT:
            return self._management(cmd)
        if self._selected in self.AIDS_CARD_MANAGER:
            return self._card_manager(cmd)
        raise _StatusWord(self.SW.INS_NOT_SUPPORTED)

    def _select(self, cmd: CommandApdu) -> tuple[bytes, int]:
        """SELECT by DF name: the FIDO applet, or the YubiKey management applet."""
        if (cmd.p1, cmd.p2) != (self.P1.SELECT_BY_NAME, 0x00):
            raise _StatusWord(self.SW.INCORRECT_P1P2)
        if cmd.data == self.AID_FIDO:
            self._selected = self.AID_FIDO
            u2f = self._authenticator.profile.u2f
            return (self.SELECT_REPLY_U2F if u2f else self.SELECT_REPLY), self.SW.OK
        if cmd.data == self.AID_MANAGEMENT and self._has_management:
            self._selected = self.AID_MANAGEMENT
            version = ".".join(str(part) for part in self._authenticator.profile.firmware)
            return version.encode(), self.SW.OK
        card_manager = self._card_manager_aid(cmd.data)
        if card_manager is not None:
            self._selected = card_manager
            fci = b"\x84" + bytes([len(card_manager)]) + card_manager + bytes.fromhex("A5049F6501FF")
            return b"\x6f" + bytes([len(fci)]) + fci, self.SW.OK
        raise _StatusWord(self.SW.FILE_NOT_FOUND)

    def _card_manager_aid(self, name: bytes) -> bytes | None:
        """The card manager a SELECT names (whole AID or a partial one), on a Java Card profile."""
        if self._authenticator.cplc() is None:
            return None
        for aid in self.AIDS_CARD_MANAGER:
            if name == aid or (len(name) >= self.MIN_PARTIAL_AID and aid.startswith(name)):
                return aid
        return None

    @property
    def _has_management(self) -> bool:
        return self._authenticator.profile.serial_source == "yubikit"

    def _card_manager(self, cmd: CommandApdu) -> tuple[bytes, int]:
        """The card manager (GlobalPlatform ISD): GET DATA of the CPLC object (9F7F) only."""
        if cmd.ins != self.INS.GET_DATA:
            raise _StatusWord(self.SW.INS_NOT_SUPPORTED)
        cplc = self._authenticator.cplc()
        if (cmd.p1, cmd.p2) != self.CPLC_P1P2 or cplc is None:
            raise _StatusWord(self.SW.DATA_NOT_FOUND)
        return cplc, self.SW.OK

    def _management(self, cmd: CommandApdu) -> tuple[bytes, int]:
        """YubiKey management applet: READ_CONFIG with the page in P1."""
        if (cmd.cla, cmd.ins) != (self.CLA.ISO, self.INS.READ_CONFIG):
            raise _StatusWord(self.SW.INS_NOT_SUPPORTED)
        return self._authenticator.management_config(cmd.p1), self.SW.OK

    # -- FIDO applet ------------------------------------------------------------------------------
    def _fido(self, cmd: CommandApdu) -> tuple[bytes, int]:
        if cmd.cla == self.CLA.PROPRIETARY and cmd.ins == self.INS.NFCCTAP_MSG:
            return self._nfcctap_msg(cmd)
        if cmd.cla == self.CLA.PROPRIETARY and cmd.ins == self.INS.NFCCTAP_GETRESPONSE:
            return self._nfcctap_getresponse(cmd)
        if cmd.cla == self.CLA.ISO and self._authenticator.profile.u2f:
            return self._u2f(cmd)
        raise _StatusWord(self.SW.INS_NOT_SUPPORTED)

    def _u2f(self, cmd: CommandApdu) -> tuple[bytes, int]:
        """A U2F command (after chaining), passed on as an extended-length request message."""
        lc = len(cmd.data).to_bytes(2, "big") if cmd.data else b""
        message = bytes([cmd.cla, cmd.ins, cmd.p1, cmd.p2, 0]) + lc + cmd.data + b"\x00\x00"
        try:
            response = faults.injector(self._authenticator).run(
                self._authenticator.process_u2f, message, u2f=True
            )
        except (faults.KeyPulled, faults.KeyWedged) as fault:
            self._fault = type(fault)
            raise
        return response[:-2], int.from_bytes(response[-2:], "big")

    def _nfcctap_msg(self, cmd: CommandApdu) -> tuple[bytes, int]:
        """NFCCTAP_MSG: run the CTAP request; poll-able when P1 bit 0x80 is set."""
        if not cmd.data:
            raise _StatusWord(self.SW.WRONG_LENGTH)
        job = _Job()
        self._job = job
        threading.Thread(
            target=self._run, args=(job, cmd.data), name="nfcctap", daemon=True
        ).start()
        if cmd.p1 & self.P1.GETRESPONSE_SUPPORTED:
            return self._poll(job)
        job.done.wait()
        return self._finish(job)

    def _nfcctap_getresponse(self, cmd: CommandApdu) -> tuple[bytes, int]:
        """NFCCTAP_GETRESPONSE: the result, or another keepalive; P1 0x11 cancels."""
        job = self._job
        if job is None:
            raise _StatusWord(self.SW.CONDITIONS_NOT_SATISFIED)
        if cmd.p1 == self.P1.CANCEL:
            job.cancel.set()
        return self._poll(job)

    def _poll(self, job: _Job) -> tuple[bytes, int]:
        if job.done.wait(self.KEEPALIVE_INTERVAL):
            return self._finish(job)
        return bytes([job.status]), self.SW.UPDATE

    def _finish(self, job: _Job) -> tuple[bytes, int]:
        self._job = None
        if job.fault is not None:
            self._fault = type(job.fault)
            raise job.fault
        if job.response is None:
            return b"", self.SW.NO_PRECISE_DIAGNOSIS
        return job.response, self.SW.OK

    def _run(self, job: _Job, request: bytes) -> None:
        def keepalive(status: int) -> None:
            job.status = status

        with self._process_lock:
            try:
                job.response = faults.injector(self._authenticator).run(
                    self._authenticator.process, request, keepalive=keepalive, cancel=job.cancel
                )
            except (faults.KeyPulled, faults.KeyWedged) as fault:
                job.fault = fault
            except Exception:  # the firmware boundary: a crash must still answer the reader
                logger.exception("the virtual authenticator failed on an NFCCTAP request")
            finally:
                job.done.set()

    def _abandon_job(self) -> None:
        """A new command (or power loss) ends a request nobody polls any more."""
        job, self._job = self._job, None
        if job is not None:
            job.cancel.set()
            job.done.wait()


class VirtualCardConnection(CardConnection):
    """A pyscard CardConnection to the virtual card in an in-process reader.

    Like pyscard's PC/SC connection, `connect` defaults to disposition SCARD_UNPOWER_CARD, so
    `disconnect` powers the card down (a power cycle for the authenticator); SCARD_LEAVE_CARD
    keeps it powered. With `on_eject`, disconnecting also takes the card out of the reader
    (`on_eject` runs; connecting again raises NoCardException).
    """

    def __init__(
        self,
        applet: FidoApplet,
        reader: str = READER_NAME,
        *,
        on_eject: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(reader)
        self.applet = applet
        self._on_eject = on_eject
        self._ejected = False
        self._disposition: int | None = None

    def connect(self, protocol=None, mode=None, disposition=None) -> None:
        if self._ejected:
            raise NoCardException("the virtual card was taken out of the reader", SCARD_W_REMOVED_CARD)
        super().connect(protocol, mode, disposition)
        self._disposition = SCARD_UNPOWER_CARD if disposition is None else disposition

    def disconnect(self) -> None:
        super().disconnect()
        disposition, self._disposition = self._disposition, None
        if disposition is None:
            return
        if disposition != SCARD_LEAVE_CARD or self._on_eject is not None:
            self.applet.power_cycle()
        if self._on_eject is not None:
            self._ejected = True
            self._on_eject()

    def getATR(self) -> list[int]:
        return list(self.applet.atr)

    def doTransmit(self, command, protocol=None) -> tuple[list[int], int, int]:
        if self._disposition is None:
            raise CardConnectionException("the card is not connected")
        try:
            response = self.applet.apdu(bytes(command))
        except faults.KeyPulled:
            self._pulled()
            raise CardConnectionException(
                "Failed to transmit with protocol T1. Card was removed.", SCARD_W_REMOVED_CARD
            ) from None
        except faults.KeyWedged:
            time.sleep(faults.WEDGE_TIMEOUT)  # the reader waits for an answer that never comes
            raise CardConnectionException(
                "Failed to transmit with protocol T1. Transaction failed.", SCARD_E_NOT_TRANSACTED
            ) from None
        return list(response[:-2]), response[-2], response[-1]

    def _pulled(self) -> None:
        """The card left the reader: the handle is dead, the key's state file released."""
        self._ejected = True
        self._disposition = None
        if self._on_eject is not None:
            on_eject, self._on_eject = self._on_eject, None
            on_eject()

    def doControl(self, controlCode, command) -> list[int]:
        raise CardConnectionException("the virtual reader supports no control codes")


def open_pcsc(authenticator: VirtualAuthenticator) -> CtapPcscDevice:
    """python-fido2's CtapPcscDevice over the virtual card in an in-process reader.

    The device owns the authenticator: closing it takes the card out of the reader (power
    loss) and releases the key's state file.
    """
    connection = VirtualCardConnection(FidoApplet(authenticator), on_eject=authenticator.close)
    return CtapPcscDevice(connection, READER_NAME)

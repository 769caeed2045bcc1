"""One python-fido2 `Ctap2` per opened key, whose authenticatorGetInfo is read once and reused
until a command could have changed it.

python-fido2's `Fido2Client` reads getInfo afresh three times per makeCredential ("use fresh
info"), and each `Info.from_dict` costs the station about half a millisecond: an item read it
8 times. `SessionCtap2.get_info()` answers from the last reading while nothing that changes a
getInfo member (CTAP 2.1 §6.4) has been sent since; any other command forgets it first, before it
is sent, so a command that fails half-way (a key pulled mid-command) leaves nothing stale:

- kept: getInfo itself; getAssertion/getNextAssertion (signature counters are no getInfo member);
  selection; clientPIN getPINRetries, getKeyAgreement, getUVRetries and the pinUvAuthToken
  requests; credentialManagement's reading subcommands (metadata, enumerations);
- forgotten: makeCredential (remainingDiscoverableCredentials), setPIN/changePIN (options
  clientPin, forcePINChange), authenticatorConfig (minPINLength, forcePINChange, alwaysUv, ep),
  reset, credentialManagement delete/update, bio enrollment, large blobs, vendor commands, any
  command this list does not name;
- and, on a key that reports CTAP 2.2's uvCountSinceLastPinEntry, every token request and
  assertion too (a PIN entry or a UV changes that count).

The parsed answers are also kept by their exact bytes (`_parsed_info`, bounded): keys of one
model answer alike at the same point of their programming, so most readings cost no parse.

The cache belongs to one opened key: a key reopened (pulled and put back, another key in the same
slot) is a new `Device` with a new session, which reads getInfo again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from fido2 import cbor
from fido2.ctap import CtapDevice
from fido2.ctap2 import Ctap2, Info
from fido2.hid import CTAPHID
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin

_PIN_READS = frozenset({ClientPin.CMD.GET_PIN_RETRIES, ClientPin.CMD.GET_KEY_AGREEMENT, ClientPin.CMD.GET_UV_RETRIES})
_PIN_TOKENS = frozenset({ClientPin.CMD.GET_TOKEN_USING_PIN_LEGACY, ClientPin.CMD.GET_TOKEN_USING_UV,
                         ClientPin.CMD.GET_TOKEN_USING_PIN})
_CREDMAN_READS = frozenset({CredentialManagement.CMD.GET_CREDS_METADATA, CredentialManagement.CMD.ENUMERATE_RPS_BEGIN,
                            CredentialManagement.CMD.ENUMERATE_RPS_NEXT, CredentialManagement.CMD.ENUMERATE_CREDS_BEGIN,
                            CredentialManagement.CMD.ENUMERATE_CREDS_NEXT})
#: clientPIN's subCommand (0x02) and credentialManagement's subCommand (0x01) parameter keys
_PIN_SUBCOMMAND, _CREDMAN_SUBCOMMAND = 0x02, 0x01


#: Parsed getInfo answers by their exact bytes: keys of one model fresh from the box, or at the
#: same point of their programming, answer byte for byte alike, and `Info.from_dict` costs about
#: half a millisecond. Bounded; the Info objects are read-only to everyone (as python-fido2 treats
#: them).
_PARSED: OrderedDict[bytes, Info] = OrderedDict()
_PARSED_MAX = 64
_PARSED_LOCK = threading.Lock()


def _parsed_info(answer: bytes, decoded: Mapping[int, Any]) -> Info:
    with _PARSED_LOCK:
        info = _PARSED.get(answer)
        if info is not None:
            _PARSED.move_to_end(answer)
            return info
    info = Info.from_dict(decoded)
    with _PARSED_LOCK:
        _PARSED[answer] = info
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return info


class SessionCtap2(Ctap2):
    """python-fido2's Ctap2 whose `get_info()` reuses its last answer while it still holds."""

    def __init__(self, device, strict_cbor: bool = True) -> None:
        self._current: Info | None = None
        self._answer = b""
        super().__init__(device, strict_cbor)  # reads getInfo once

    def get_info(self) -> Info:
        if self._current is None:
            # the key's answer as it sent it: python-fido2 checked it is canonical CBOR, which
            # re-encodes to the same bytes
            decoded = super().send_cbor(Ctap2.CMD.GET_INFO)
            answer = cbor.encode(decoded)
            self._current, self._answer = _parsed_info(answer, decoded), answer
        return self._current

    def info_answer(self) -> bytes:
        """The key's getInfo answer (status byte + CBOR), read again first if it no longer holds."""
        self.get_info()
        return b"\x00" + self._answer

    def forget_info(self) -> None:
        """The next get_info() reads the key again."""
        self._current = None

    def send_cbor(self, cmd: int, data: Mapping[int, Any] | None = None, **kw) -> Mapping[int, Any]:
        if cmd != Ctap2.CMD.GET_INFO and self._changes_info(cmd, data or {}):
            self._current = None
        return super().send_cbor(cmd, data, **kw)

    def _changes_info(self, cmd: int, data: Mapping[int, Any]) -> bool:
        counts_uv = self._current is not None and self._current.uv_count_since_pin is not None
        if cmd in (Ctap2.CMD.GET_ASSERTION, Ctap2.CMD.GET_NEXT_ASSERTION):
            return counts_uv
        if cmd == Ctap2.CMD.SELECTION:
            return False
        if cmd == Ctap2.CMD.CLIENT_PIN:
            sub = data.get(_PIN_SUBCOMMAND)
            return not (sub in _PIN_READS or (sub in _PIN_TOKENS and not counts_uv))
        if cmd in (Ctap2.CMD.CREDENTIAL_MGMT, Ctap2.CMD.CREDENTIAL_MGMT_PRE):
            return data.get(_CREDMAN_SUBCOMMAND) not in _CREDMAN_READS
        return True


class SessionDevice(CtapDevice):
    """The key as seen by a python-fido2 client built on a session (`Fido2Client(SessionDevice(s))`):
    the getInfo its own Ctap2 sends when it is built is answered with the session's answer
    (read again first if it no longer holds); everything else goes to the key unchanged."""

    def __init__(self, session: SessionCtap2) -> None:
        self.session = session
        self.device = session.device

    @property
    def capabilities(self) -> int:
        return self.device.capabilities

    def call(self, cmd: int, data: bytes = b"", event=None, on_keepalive=None) -> bytes:
        if cmd == CTAPHID.CBOR and data == bytes([Ctap2.CMD.GET_INFO]):
            return self.session.info_answer()
        return self.device.call(cmd, data, event, on_keepalive)

    def close(self) -> None:  # the key is the session's, closed with its Device
        pass

    @classmethod
    def list_devices(cls):  # a view of one open key, never discovered
        return iter(())

    def __getattr__(self, name: str) -> Any:  # transport extras (connect, descriptor, ...)
        return getattr(self.device, name)


def client_on_session(session: SessionCtap2, *args, **kw):
    """python-fido2's `Fido2Client` sending through `session`, so that its reads of getInfo (one
    when it is built, three per makeCredential) reuse the session's answer.

    python-fido2 2.2 keeps its CTAP2 session in the client's backend (`ctap2`), which is pointed
    at `session`; should a later version not, the client keeps its own Ctap2 over the same key
    (correct, only slower)."""
    from fido2.client import Fido2Client

    client = Fido2Client(SessionDevice(session), *args, **kw)
    backend = getattr(client, "_backend", None)
    if isinstance(getattr(backend, "ctap2", None), Ctap2):
        backend.ctap2 = session
    return client

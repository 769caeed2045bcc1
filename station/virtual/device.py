"""Transport (a), "direct": the virtual authenticator as a python-fido2 `CtapDevice`."""

from __future__ import annotations

from threading import Event
from typing import Callable, Iterator

from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.hid import CAPABILITY, CTAPHID

from . import faults
from .authenticator import VirtualAuthenticator


#: YubiKey vendor CTAPHID command READ_CONFIG (0xC2 on the wire; python-fido2 command numbers
#: omit the 0x80 bit), how yubikit reads the management config over FIDO.
CTAP_READ_CONFIG = CTAPHID.VENDOR_FIRST + 2


class VirtualCtapDevice(CtapDevice):
    """Calls `VirtualAuthenticator.process` in-process, as CTAPHID_CBOR would, and
    `process_u2f` for CTAPHID_MSG on a profile with CTAP1/U2F (so fido2.ctap1.Ctap1 works).

    Like python-fido2's CtapHidDevice it has `device_version`, and a YubiKey profile answers
    the vendor command READ_CONFIG, so yubikit's ManagementSession reads its serial over it.
    """

    def __init__(self, authenticator: VirtualAuthenticator) -> None:
        self.authenticator = authenticator
        self._closed = Event()

    @property
    def device_version(self) -> tuple[int, int, int]:
        """The firmware version, as CTAPHID_INIT reports it."""
        return self.authenticator.profile.firmware

    @property
    def capabilities(self) -> int:
        nmsg = CAPABILITY(0) if self.authenticator.profile.u2f else CAPABILITY.NMSG
        cbor = CAPABILITY.CBOR if self.authenticator.profile.ctap2 else CAPABILITY(0)  # CTAP1-only key
        return cbor | CAPABILITY.WINK | nmsg

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        """CTAPHID_CBOR → process(); MSG (U2F profiles) → process_u2f(); WINK → wink();
        READ_CONFIG (YubiKey) → management_config(); anything else CtapError INVALID_COMMAND
        (CBOR too on a CTAP1-only key). Under a fault plan (station.virtual.faults) a pulled key
        raises OSError(EIO) and a wedged one blocks until the device is closed."""
        if cmd == CTAPHID.CBOR and self.authenticator.profile.ctap2:
            return self._run(self.authenticator.process, data, False, event, on_keepalive)
        if cmd == CTAPHID.MSG and self.authenticator.profile.u2f:
            return self._run(self.authenticator.process_u2f, data, True, event, on_keepalive)
        if cmd == CTAPHID.WINK:
            self.authenticator.wink()
            return b""
        if cmd == CTAP_READ_CONFIG and self.authenticator.profile.serial_source == "yubikit":
            return self.authenticator.management_config(data[0] if data else 0)
        raise CtapError(CtapError.ERR.INVALID_COMMAND)

    def _run(self, process, data: bytes, u2f: bool, event, on_keepalive) -> bytes:
        if self._closed.is_set():
            raise OSError("the virtual key is closed")
        try:
            return faults.injector(self.authenticator).run(
                process, data, u2f=u2f, keepalive=_once_per_status(on_keepalive), cancel=event
            )
        except faults.KeyPulled:
            self.authenticator.close()
            raise faults.removed_error("read") from None
        except faults.KeyWedged:
            self._closed.wait()
            raise OSError("the virtual key was closed while wedged") from None

    def close(self) -> None:
        self._closed.set()
        self.authenticator.close()

    def __repr__(self) -> str:
        return f"VirtualCtapDevice({self.authenticator!r})"

    @classmethod
    def list_devices(cls) -> Iterator[CtapDevice]:
        """Virtual keys are opened by state file, never discovered."""
        return iter(())


def _once_per_status(on_keepalive: Callable[[STATUS], None] | None) -> Callable[[int], None] | None:
    """python-fido2 calls on_keepalive once per run of the same status; so do we."""
    if on_keepalive is None:
        return None
    last: list[int] = []

    def keepalive(status: int) -> None:
        if not last or last[0] != status:
            last[:] = [status]
            on_keepalive(STATUS(status))

    return keepalive

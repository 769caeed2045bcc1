"""authenticatorReset (CTAP 2.1 §6.6): only just after power-up (10 s by CTAP 2.1, 5 s on
YubiKeys), and only with a touch."""

from __future__ import annotations

from collections.abc import Callable

from fido2.ctap import CtapError

from station.device.discovery import Device, open_device
from station.errors import DeviceError, UserPresenceTimeout


def reset_device(spec: str, *, virtual_transport: str = "direct",
                 on_touch: Callable[[Device], None] | None = None) -> str:
    """Factory-reset the key SPEC names; its label. The key must have been plugged in (or the card
    placed on the reader) moments ago: 5 s for a YubiKey, 10 s by CTAP 2.1."""
    device = open_device(spec, virtual_transport=virtual_transport)
    try:
        prompted = False

        def keepalive(status: int) -> None:
            nonlocal prompted
            if status == 2 and not prompted and on_touch:  # STATUS.UPNEEDED
                prompted = True
                on_touch(device)

        try:
            device.ctap2().reset(on_keepalive=keepalive)
        except CtapError as exc:
            if exc.code == CtapError.ERR.NOT_ALLOWED:
                raise DeviceError("reset is only allowed just after plugging the key in (YubiKeys: 5 s; "
                                  "CTAP 2.1: 10 s): "
                                  "remove it, insert it again and repeat at once") from None
            if exc.code == CtapError.ERR.USER_ACTION_TIMEOUT:
                raise UserPresenceTimeout("the key was not touched in time: nothing was erased") from None
            raise DeviceError(f"reset failed: {exc.code.name}") from None
        return device.label
    finally:
        device.close()

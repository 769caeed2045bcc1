"""Every way a key can fail under the station, named: a transport's exception in, a StationError
out (`device_error`, `user_presence_timeout`, `device_unsupported`) that names the key and says
what the technician does with it.

What each transport raises when a key is pulled, wedged, or not what it claims:
- python-fido2 over USB-HID: `OSError` (hidraw gone: ENODEV), `ConnectionFailure` (a packet of
  another channel: a second opener), `TimeoutError`, `CtapError` (the key's own refusal);
- pyscard over PC/SC: `CardConnectionException` ("Card was reset", "Card was removed"),
  `NoCardException`, the `BaseSCardException` family (pcscd gone);
- python-fido2's Ctap2 on a key without CBOR (a U2F-only key): `ValueError("Device does not
  support CTAP2.")`; a truncated or garbled CBOR answer also surfaces as `ValueError`.
"""

from __future__ import annotations

from fido2.ctap import CtapError
from fido2.hid import ConnectionFailure

from station.errors import DeviceError, DeviceUnsupported, StationError, UserPresenceTimeout

#: What the technician does with a key, by the outcome's `key_action`.
ACTIONS = {
    "reuse": "nothing was written to it: it can be used again",
    "reset": "it was written to: reset it (station reset) before reuse",
    "set_aside": "set it aside (do not use it for orders)",
    "unplug": "unplug it and plug it in again",
}


def _pcsc_errors() -> tuple[type[BaseException], ...]:
    try:
        from smartcard.Exceptions import SmartcardException
        from smartcard.pcsc.PCSCExceptions import BaseSCardException
    except ImportError:  # pyscard missing: PC/SC is not used at all
        return ()
    return (SmartcardException, BaseSCardException)


#: The exceptions a key (or its transport) raises; anything else is the station's own bug.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (CtapError, OSError, ConnectionFailure, ValueError,
                                                      *_pcsc_errors())

_TIMEOUTS = {CtapError.ERR.USER_ACTION_TIMEOUT, CtapError.ERR.ACTION_TIMEOUT, CtapError.ERR.TIMEOUT}


def describe_exception(exc: BaseException) -> str:
    """A short reason, without a PIN or a traceback: 'CTAP error PIN_INVALID', 'the card was
    removed or reset (CardConnectionException)'."""
    if isinstance(exc, CtapError):
        return f"CTAP error {exc.code.name if hasattr(exc.code, 'name') else exc.code}"
    name = type(exc).__name__
    if isinstance(exc, ConnectionFailure):
        return f"the USB channel was taken over or lost ({name})"
    if isinstance(exc, ValueError) and "CTAP2" in str(exc):
        return "the key speaks FIDO U2F only, not FIDO2 (CTAP2)"
    if isinstance(exc, (TimeoutError,)):
        return f"the key stopped answering ({name})"
    if isinstance(exc, _pcsc_errors()):
        return f"the card was removed, reset or lost its reader ({name})"
    if isinstance(exc, OSError):
        return f"the key was removed or stopped answering ({name})"
    return f"the key answered something the station cannot read ({name})"


def key_fault(exc: BaseException, *, label: str, written: bool, doing: str = "") -> StationError:
    """The StationError a key's exception stands for, naming the key and its next step."""
    doing = f" while {doing}" if doing else ""
    if isinstance(exc, ValueError) and "CTAP2" in str(exc):
        err: StationError = DeviceUnsupported(f"{label}: {describe_exception(exc)}{doing}")
        err.key_touched = written
        return with_action(err, "reset" if written else "set_aside")
    if isinstance(exc, CtapError) and exc.code in _TIMEOUTS:
        err = UserPresenceTimeout(f"{label}: the key was not touched in time{doing}")
    else:
        err = DeviceError(f"{label}: {describe_exception(exc)}{doing}")
    err.key_touched = written
    return with_action(err, "reset" if written else "reuse")


def with_action(err: StationError, action: str) -> StationError:
    """`err` with its `key_action` set and the instruction appended to its message once."""
    err.key_action = action
    text = ACTIONS[action]
    if text not in err.message and not (action == "reset" and "reset it" in err.message):
        err.args = (f"{err.message}; {text}",)
    return err

"""The item's PIN: drawn from a CSPRNG, set on the key, and its change forced (CTAP 2.1 §6.5, §6.11).

A PIN exists in the clear only in memory, between `draw_pin` and the sealing of the PIN response.
It travels inside a `Pin`, whose `repr` and `str` are masked, so that a stray log line, exception
message or f-string shows `Pin(******)`; only `reveal()` gives the digits, and only the CTAP calls
and the PIN response payload call it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.config import Config
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2

from station.errors import StationError
from station.masked import Pin

DIGITS = "0123456789"
#: How many PINs are drawn when the key refuses them for its PIN policy (CTAP 2.1 §6.5.5.5
#: CTAP2_ERR_PIN_POLICY_VIOLATION: nothing is stored). A YubiKey 5.7 with PIN complexity refuses
#: a few published PINs beyond the weak shapes draw_pin already avoids, so a handful is plenty.
PIN_DRAWS = 5


class PinPolicyRefused(StationError):
    """Every PIN drawn was refused by the key's PIN policy; the key holds no PIN."""

    code = "device_unsupported"


def is_weak(digits: str) -> bool:
    """All one digit, or a straight ascending or descending run (0123…, 9876…, wrapping not
    counted as a run)."""
    steps = {int(b) - int(a) for a, b in zip(digits, digits[1:])}
    return steps <= {0} or steps == {1} or steps == {-1}


def draw_pin(length: int) -> Pin:
    """Draw a digits-only PIN of `length` from `secrets`, refusing the weak shapes of PROTOCOL.md
    §2.1. Rejection sampling keeps the remaining PINs uniformly likely."""
    if not 4 <= length <= 63:
        raise ValueError("PIN length must be 4 to 63")
    while True:
        digits = "".join(secrets.choice(DIGITS) for _ in range(length))
        if not is_weak(digits):
            return Pin(digits)


def pin_protocol_for(info) -> PinProtocolV1 | PinProtocolV2:
    """PIN/UV auth protocol 2 where the key offers it, else 1 (CTAP 2.1 §6.5.4)."""
    offered = list(info.pin_uv_protocols or [])
    return PinProtocolV2() if PinProtocolV2.VERSION in offered else PinProtocolV1()


def set_pin(ctap: Ctap2, pin: Pin) -> None:
    """authenticatorClientPIN setPIN on a key that has none."""
    ClientPin(ctap, pin_protocol_for(ctap.info)).set_pin(pin.reveal())


def set_new_pin(ctap: Ctap2, length: int, *, draws: int = PIN_DRAWS,
                on_attempt: Callable[[], None] | None = None) -> Pin:
    """Draw a PIN of `length` and set it; a PIN the key refuses for its policy
    (PIN_POLICY_VIOLATION, nothing written) is replaced by a new draw of the same length, up to
    `draws` times. `on_attempt` runs before each setPIN is sent. Returns the PIN set."""
    for _ in range(draws):
        pin = draw_pin(length)
        if on_attempt:
            on_attempt()
        try:
            set_pin(ctap, pin)
            return pin
        except CtapError as exc:
            if exc.code != CtapError.ERR.PIN_POLICY_VIOLATION:
                raise
    raise PinPolicyRefused(f"the key's PIN policy refused {draws} PINs of {length} digits drawn at random")


def force_pin_change(ctap: Ctap2, pin: Pin, *, min_pin_length: int | None, force: bool) -> None:
    """authenticatorConfig setMinPINLength with a fresh acfg token (CTAP 2.1 §6.11.4).

    `min_pin_length` is only sent when it raises the key's current minimum (a key refuses to lower
    it); `forceChangePin` is sent when `force`. Nothing is sent when neither applies.
    """
    current = ctap.info.min_pin_length or 4
    new_min = min_pin_length if min_pin_length and min_pin_length > current else None
    if new_min is None and not force:
        return
    client_pin = ClientPin(ctap, pin_protocol_for(ctap.info))
    token = client_pin.get_pin_token(pin.reveal(), ClientPin.PERMISSION.AUTHENTICATOR_CFG)
    Config(ctap, client_pin.protocol, token).set_min_pin_length(
        min_pin_length=new_min, force_change_pin=force
    )

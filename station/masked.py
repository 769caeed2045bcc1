"""A PIN held in memory: the one type both sides use for it (the station between drawing the PIN and
sealing the PIN response; the customer between opening the response and mailing the PIN).

Its `str()`, `repr()` and f-string forms are masked, so a stray log line, exception message or
format shows `Pin(******)`; only `reveal()` gives the digits. It refuses to be pickled. A leaf
module: it imports nothing of ours.
"""

from __future__ import annotations


class Pin:
    """A PIN held in memory. `str()`/`repr()` never show it."""

    __slots__ = ("_digits",)

    def __init__(self, digits: str) -> None:
        if not digits.isdigit() or not digits.isascii():
            raise ValueError("a PIN is made of ASCII digits")  # the value is not echoed
        self._digits = digits

    def reveal(self) -> str:
        """The digits, for the CTAP call or the sealed response and nothing else."""
        return self._digits

    def __len__(self) -> int:
        return len(self._digits)

    def __repr__(self) -> str:
        return "Pin(******)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self):  # no pickling a PIN to disk by accident
        raise TypeError("a Pin cannot be pickled")

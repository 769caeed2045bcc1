"""One line of a health report: `station doctor` shows these, and the trust rows are made of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: False when the configured device does not need this (shown, but never fails the doctor)
    required: bool = True
    #: a warning: shown in yellow when not ok, but never fails the doctor (an old MDS BLOB)
    warn: bool = False

    def as_json(self) -> dict:
        return asdict(self)

"""Errors of the trust store and of trust input (operator errors, not item codes)."""

from __future__ import annotations

from station.errors import StationError


class TrustError(StationError):
    """Trust input that cannot be used (a malformed PEM, a non-CA root, a BLOB that does not
    verify), or a trust store that cannot be read or written. Nothing was changed."""

    code = "trust"

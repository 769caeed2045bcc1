"""One exception hierarchy, rooted in StationError.

Every error carries a code. Item failures use the error codes of PROTOCOL.md §4
(`decrypt_failed`, `invalid_request`, `expired`, `device_unsupported`, `device_not_fresh`,
`device_error`, `user_presence_timeout`); local operator errors (a key store that already
exists, a missing file) carry their own codes. Messages never hold a PIN or key material.
"""

from __future__ import annotations


class StationError(Exception):
    """Base of every error the station raises on purpose."""

    code: str = "station_error"
    #: set when the failure came after the key was written to: it must be reset before reuse
    key_touched: bool = False
    #: what the technician does with the key in hand (station.device.faults.ACTIONS): "reuse",
    #: "reset", "set_aside" or "unplug"; None when the failure is not the key's
    key_action: str | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:  # "code: message", the CLI's one line
        return f"{self.code}: {self.message}"


# -- PROTOCOL.md §4 item error codes -------------------------------------------------------
class DecryptFailed(StationError):
    code = "decrypt_failed"


class InvalidRequest(StationError):
    code = "invalid_request"


class Expired(StationError):
    code = "expired"


class DeviceUnsupported(StationError):
    code = "device_unsupported"


class DeviceNotFresh(StationError):
    code = "device_not_fresh"


class DeviceError(StationError):
    code = "device_error"


class UserPresenceTimeout(StationError):
    code = "user_presence_timeout"


#: Errors that are the request's own: they fail the item at once (PROTOCOL.md §4). Every other
#: item error is one key's, and sends the item back to the queue for another key.
REQUEST_ERROR_CODES = ("decrypt_failed", "invalid_request", "expired")

ITEM_ERROR_CODES = (
    "decrypt_failed",
    "invalid_request",
    "expired",
    "device_unsupported",
    "device_not_fresh",
    "device_error",
    "user_presence_timeout",
    # set by the service only (issue 15): the customer's directory refused to register the
    # credential of a programmed key; the key is reset, not shipped
    "directory_refused",
)


# -- operator errors (not item codes) --------------------------------------------------------
class KeyStoreError(StationError):
    """The key store folder is missing, unreadable, or would be overwritten."""

    code = "key_store"


class UsageError(StationError):
    """A command was called with something it cannot use (a missing file, a bad spec)."""

    code = "usage"

"""The errors of the fulfillment service, each with the HTTP status the API answers with.

The item codes of PROTOCOL.md §4 stay in `station.errors`; these are the service's own codes,
shared by the store (which raises them), the API (which turns them into a status and an
`ErrorBody`) and the client (which turns an answer back into the same exception).
"""

from __future__ import annotations

from station.errors import StationError


class ServiceError(StationError):
    """An answer of the fulfillment service other than success; `status` is its HTTP status."""

    code = "service_error"
    status = 500

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None,
        error_data: object = None,
    ) -> None:
        super().__init__(message, code=code)
        if status is not None:
            self.status = status
        self.error_data = error_data


class BadRequest(ServiceError):
    """The request was refused at the door: a field limit, a JWE header, a replayed JWE.
    `code` is `invalid_request` or `decrypt_failed`; `error_data` says where."""

    code = "invalid_request"
    status = 400


class Unauthorized(ServiceError):
    """The bearer token is missing or unknown."""

    code = "unauthorized"
    status = 401


class Forbidden(ServiceError):
    """The bearer token is valid but of the wrong role (a customer on a station route)."""

    code = "forbidden"
    status = 403


class NotFound(ServiceError):
    """No such shipment or item for this token (another customer's shipment is not found)."""

    code = "not_found"
    status = 404


#: The Conflict code of a heartbeat, confirm, submit or release for a claim that was superseded.
STALE_LEASE = "stale_lease"


class Conflict(ServiceError):
    """The lease is not held by this station, or the item already finished differently
    (`code` is `stale_lease` when the station's claim was superseded by a newer one)."""

    code = "conflict"
    status = 409


class PayloadTooLarge(ServiceError):
    """The request body exceeds the service's limit."""

    code = "payload_too_large"
    status = 413


class RequestTimeout(ServiceError):
    """408: the body did not arrive within the service's body timeout."""

    code = "request_timeout"
    status = 408


class RateLimited(ServiceError):
    """429: this client address presented too many unknown bearer tokens lately (`rate_limited`),
    or the tenant used up its shipment quota (`quota_exceeded`); `retry_after` (in `error_data`,
    and the Retry-After header) is the whole seconds until it may try again."""

    code = "rate_limited"
    status = 429

    @property
    def retry_after(self) -> int:
        data = self.error_data if isinstance(self.error_data, dict) else {}
        return int(data.get("retry_after", 60))


class ServiceUnavailable(ServiceError):
    """The database or the service cannot be reached."""

    code = "service_unavailable"
    status = 503


BY_STATUS: dict[int, type[ServiceError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, RequestTimeout, PayloadTooLarge,
                RateLimited, ServiceUnavailable)
}

"""authenticatorLargeBlobs (CTAP 2.1 §6.10): the serialized large-blob array, read in fragments
and written in fragments under a pinUvAuthToken with the lbw permission.

The stored value is the serialized array: CBOR array || LEFT(SHA-256(array), 16). A fresh or
reset key holds the empty array (h'80' and its checksum, §6.10.2). A write is buffered until
its last fragment; then the checksum is verified (CTAP2_ERR_INTEGRITY_FAILURE) and the whole
array replaces the old one at once, so a torn write never reaches the stored state.
"""

from __future__ import annotations

import struct
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from fido2.ctap import CtapError
from fido2.ctap2.pin import ClientPin

from .client_pin import check_protocol

if TYPE_CHECKING:
    from .authenticator import Request, VirtualAuthenticator

ERR = CtapError.ERR
#: The smallest serialized array a set may announce (one CBOR byte + the 16-byte checksum).
MIN_LENGTH = 17


class P:
    """authenticatorLargeBlobs parameter keys."""

    GET = 0x01
    SET = 0x02
    OFFSET = 0x03
    LENGTH = 0x04
    PIN_UV_AUTH_PARAM = 0x05
    PIN_UV_AUTH_PROTOCOL = 0x06


def _uint(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
    if value < 0:
        raise CtapError(ERR.INVALID_PARAMETER)
    return value


class LargeBlobsCommand:
    """authenticatorLargeBlobs: get (read a fragment) or set (write a fragment)."""

    def __init__(self, key: VirtualAuthenticator) -> None:
        self.key = key
        self.forget_write()

    def forget_write(self) -> None:
        """Drop a write in progress (power loss, reset)."""
        self.expected_length = 0
        self.expected_offset = 0
        self.pending = b""

    @property
    def max_fragment(self) -> int:
        """maxFragmentLength = maxMsgSize - 64 (§6.10.2)."""
        return self.key.profile.max_msg_size - 64

    def __call__(self, request: Request) -> dict[int, Any] | None:
        p = request.params
        get, data = _uint(p.get(P.GET)), p.get(P.SET)
        offset, length = _uint(p.get(P.OFFSET)), _uint(p.get(P.LENGTH))
        if data is not None and not isinstance(data, bytes):
            raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
        if (get is None) == (data is None) or offset is None:
            raise CtapError(ERR.INVALID_PARAMETER)
        if get is not None:
            return self._get(get, offset, length)
        return self._set(p, data, offset, length)

    def _get(self, get: int, offset: int, length: int | None) -> dict[int, Any]:
        if length is not None:
            raise CtapError(ERR.INVALID_PARAMETER)
        if get > self.max_fragment:
            raise CtapError(ERR.INVALID_LENGTH)
        stored = self.key.state.large_blob_array()
        if offset > len(stored):
            raise CtapError(ERR.INVALID_PARAMETER)
        return {1: stored[offset : offset + get]}

    def _set(self, p: dict, data: bytes, offset: int, length: int | None) -> None:
        if len(data) > self.max_fragment:
            raise CtapError(ERR.INVALID_LENGTH)
        if offset == 0:
            if length is None:
                raise CtapError(ERR.INVALID_PARAMETER)
            if length > self.key.profile.max_large_blob:
                raise CtapError(ERR.LARGE_BLOB_STORAGE_FULL)
            if length < MIN_LENGTH:
                raise CtapError(ERR.INVALID_PARAMETER)
            self.expected_length, self.expected_offset, self.pending = length, 0, b""
        elif length is not None:
            raise CtapError(ERR.INVALID_PARAMETER)
        if offset != self.expected_offset:
            raise CtapError(ERR.INVALID_SEQ)
        state = self.key.state
        if state.pin_set or state.always_uv:
            param = p.get(P.PIN_UV_AUTH_PARAM)
            if param is None:
                raise CtapError(ERR.PUAT_REQUIRED)
            protocol = check_protocol(self.key, p, P.PIN_UV_AUTH_PROTOCOL)
            message = b"\xff" * 32 + b"\x0c\x00" + struct.pack("<I", offset) + sha256(data).digest()
            self.key.pin_uv.check_token(
                protocol, message, param, ClientPin.PERMISSION.LARGE_BLOB_WRITE, None, bind_rp=False
            )
        if offset + len(data) > self.expected_length:
            raise CtapError(ERR.INVALID_PARAMETER)
        self.pending += data
        self.expected_offset += len(data)
        if self.expected_offset == self.expected_length:
            array, checksum = self.pending[:-16], self.pending[-16:]
            self.forget_write()
            if sha256(array).digest()[:16] != checksum:
                raise CtapError(ERR.INTEGRITY_FAILURE)
            state.set_large_blob_array(array + checksum)
            self.key.save()
        return None

"""The persistent state of one virtual key: a JSON file, saved atomically after every change.

What a real key keeps in flash is kept here: the PIN only as a keyed hash of its pinHash
(LEFT(SHA-256(PIN), 16), the value CTAP itself compares), the PIN retries counter, the
authenticatorConfig settings, the credential wrapping key and the discoverable credentials,
the signature counter, the serial number and the per-key attestation key and certificate.
The file is mode 0600. While a process holds the key open it holds an exclusive fcntl lock on
STATEFILE + ".lock"; a second opener gets `KeyBusy`.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from fido2.utils import websafe_decode, websafe_encode

from .errors import KeyBusy, VirtualError

STATE_VERSION = 1
PIN_RETRIES_MAX = 8
#: The serialized empty large-blob array (CTAP 2.1 §6.10.2): CBOR [] and LEFT(SHA-256(h'80'), 16).
EMPTY_LARGE_BLOB_ARRAY = b"\x80" + sha256(b"\x80").digest()[:16]


@dataclass
class StoredCredential:
    """A discoverable credential as the authenticator stores it."""

    credential_id: str  # b64u of the wrapped credential ID
    rp_id: str
    rp_name: str | None
    user: dict[str, Any]  # {"id": b64u, "name"?: str, "displayName"?: str}
    created: int  # creation order, for "most recently created first"

    @property
    def id_bytes(self) -> bytes:
        return websafe_decode(self.credential_id)

    def user_entity(self) -> dict[str, Any]:
        """The PublicKeyCredentialUserEntity as CTAP returns it (id as bytes)."""
        entity: dict[str, Any] = {"id": websafe_decode(self.user["id"])}
        for key in ("name", "displayName"):
            if self.user.get(key):
                entity[key] = self.user[key]
        return entity


@dataclass
class KeyState:
    """Everything that survives a power cycle."""

    profile: str
    aaguid: str  # hex
    serial: int
    attestation_key: str  # PEM (PKCS#8)
    attestation_cert: str  # b64u DER
    device_secret: str  # b64u, keys the PIN hash; replaced on reset
    credential_key: str  # b64u AES-256-GCM key wrapping credential IDs; replaced on reset
    pin_hash: str | None = None  # b64u HMAC(device_secret, pinHash); None = no PIN set
    pin_length: int = 0  # code points of the current PIN (setMinPINLength compares it)
    pin_retries: int = PIN_RETRIES_MAX
    min_pin_length: int = 4
    min_pin_length_rpids: list[str] = field(default_factory=list)
    force_pin_change: bool = False
    always_uv: bool = False
    enterprise_attestation: bool = False
    sign_count: int = 0
    created_count: int = 0
    credentials: list[StoredCredential] = field(default_factory=list)
    large_blob: str | None = None  # b64u serialized large-blob array; None = the empty array
    version: int = STATE_VERSION

    # -- authenticatorLargeBlobs ----------------------------------------------------------------
    def large_blob_array(self) -> bytes:
        """The serialized large-blob array (CBOR array || 16-byte checksum)."""
        if self.large_blob is None:
            return EMPTY_LARGE_BLOB_ARRAY
        return websafe_decode(self.large_blob)

    def set_large_blob_array(self, serialized: bytes) -> None:
        self.large_blob = websafe_encode(serialized)

    # -- the PIN, only ever as a keyed hash ----------------------------------------------------
    def _keyed(self, pin_hash: bytes) -> str:
        return websafe_encode(hmac.new(websafe_decode(self.device_secret), pin_hash, sha256).digest())

    def set_pin(self, pin_hash: bytes, length: int) -> None:
        """Store a new PIN given its pinHash = LEFT(SHA-256(PIN), 16) and code point length."""
        self.pin_hash = self._keyed(pin_hash)
        self.pin_length = length
        self.pin_retries = PIN_RETRIES_MAX

    def pin_matches(self, pin_hash: bytes) -> bool:
        """Compare a pinHash with the stored one, in constant time."""
        return self.pin_hash is not None and hmac.compare_digest(self._keyed(pin_hash), self.pin_hash)

    @property
    def pin_set(self) -> bool:
        return self.pin_hash is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyState:
        if data.get("version") != STATE_VERSION:
            raise VirtualError(f"unsupported state file version {data.get('version')!r}")
        creds = [StoredCredential(**c) for c in data.pop("credentials", [])]
        return cls(**data, credentials=creds)


class StateFile:
    """The JSON file behind one virtual key, with its exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def lock(self) -> None:
        """Take the exclusive lock, or raise KeyBusy if another process holds the key.

        The lock file is removed on unlock, so after locking we check that the path still
        names the file we locked (another process may have unlinked it meanwhile)."""
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise KeyBusy(f"virtual key {self.path} is in use by another process") from None
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)

    def unlock(self) -> None:
        """Remove the lock file, then release the lock."""
        if self._lock_fd is not None:
            self.lock_path.unlink(missing_ok=True)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> KeyState:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise VirtualError(f"no virtual key at {self.path}; make one with `station virtual new`") from None
        try:
            return KeyState.from_json(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            raise VirtualError(f"{self.path} is not a virtual key state file ({exc.__class__.__name__})") from None

    def save(self, state: KeyState) -> None:
        """Write atomically: temp file in the same folder (0600), fsync, os.replace."""
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

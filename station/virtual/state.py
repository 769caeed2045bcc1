"""The persistent state of one virtual key: a JSON snapshot and a journal of changes, every
change durable (fsynced) before the command that made it answers.

What a real key keeps in flash is kept here: the PIN only as a keyed hash of its pinHash
(LEFT(SHA-256(PIN), 16), the value CTAP itself compares), the PIN retries counter, the
authenticatorConfig settings, the credential wrapping key and the discoverable credentials,
the signature counter (as the ceiling of the values handed out, see
VirtualAuthenticator.next_counter), the serial number and the per-key attestation key and
certificate.

STATEFILE is the snapshot, replaced atomically (temporary file, fsync, rename, fsync of the
folder) and numbered by its `generation`. STATEFILE.journal holds the changes made since: one
line per save, `SHA256HEX {"g": generation, "set": {field: new value}}`, appended and
fdatasynced (a save rewrites nothing; an append costs a fraction of a snapshot). Loading
replays the journal lines of the snapshot's generation in order and stops at the first line
that is cut short or does not match its digest: only the last line can be torn (a crash or a
pull while it was written, before its command answered), so the key holds the state before or
after that command, never a mixture. A load with a journal writes a fresh snapshot and removes
the journal (a torn tail is never appended to); so do a clean close and a save once the
journal passes JOURNAL_COMPACT_BYTES.

Both files are mode 0600. While a process holds the key open it holds an exclusive fcntl lock on
STATEFILE + ".lock"; a second opener gets `KeyBusy`.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from hashlib import sha256
from pathlib import Path
from typing import Any

from fido2.utils import websafe_decode, websafe_encode

from .errors import KeyBusy, VirtualError

STATE_VERSION = 1
PIN_RETRIES_MAX = 8
#: The serialized empty large-blob array (CTAP 2.1 §6.10.2): CBOR [] and LEFT(SHA-256(h'80'), 16).
EMPTY_LARGE_BLOB_ARRAY = b"\x80" + sha256(b"\x80").digest()[:16]
#: A save past this journal size writes a fresh snapshot instead (and starts a new journal).
JOURNAL_COMPACT_BYTES = 64 * 1024


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
        """A copy as JSON-ready values (what asdict gives, without its deep copy of strings)."""
        data = {f.name: getattr(self, f.name) for f in _STATE_FIELDS}
        data["min_pin_length_rpids"] = list(self.min_pin_length_rpids)
        data["credentials"] = [
            {f.name: getattr(c, f.name) for f in _CREDENTIAL_FIELDS} | {"user": dict(c.user)}
            for c in self.credentials
        ]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyState:
        if data.get("version") != STATE_VERSION:
            raise VirtualError(f"unsupported state file version {data.get('version')!r}")
        creds = [StoredCredential(**c) for c in data.pop("credentials", [])]
        return cls(**data, credentials=creds)


_STATE_FIELDS = fields(KeyState)
_CREDENTIAL_FIELDS = fields(StoredCredential)


class StateFile:
    """The snapshot and journal behind one virtual key, with its exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        self._journal_bytes = 0
        self._generation = 0
        #: the state as the files hold it (snapshot + journal), to find what a save changes
        self._persisted: dict[str, Any] | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def journal_path(self) -> Path:
        return self.path.with_name(self.path.name + ".journal")

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

    def is_locked(self) -> bool:
        return self._lock_fd is not None

    def unlock(self) -> None:
        """Close the journal, remove the lock file, then release the lock."""
        self._close_journal()
        if self._lock_fd is not None:
            self.lock_path.unlink(missing_ok=True)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> KeyState:
        """The state at power-up (under the lock): the snapshot with its journal replayed, then
        folded into a fresh snapshot."""
        state, journal = self._read()
        if journal is not None:
            self._snapshot(self._persisted)
        return state

    def read(self) -> KeyState:
        """The state as the files hold it, for a look from outside: no lock taken, nothing
        written (the key may be open elsewhere)."""
        return self._read()[0]

    def _read(self) -> tuple[KeyState, list[dict[str, Any]] | None]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise VirtualError(f"no virtual key at {self.path}; make one with `station virtual new`") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            generation = data.pop("generation", 0)
            journal = self._journal_changes(generation)
            for changes in journal or ():
                data.update(changes)
            state = KeyState.from_json(data)
            self._persisted = state.to_json()
        except (ValueError, TypeError, KeyError) as exc:
            raise VirtualError(f"{self.path} is not a virtual key state file ({exc.__class__.__name__})") from None
        self._generation = generation if isinstance(generation, int) else 0
        return state, journal

    def save(self, state: KeyState) -> None:
        """Make the state durable: the changed fields appended to the journal (fdatasync), or a
        fresh snapshot (the first save, or a journal past JOURNAL_COMPACT_BYTES)."""
        data = state.to_json()
        if self._persisted is None or self._journal_bytes >= JOURNAL_COMPACT_BYTES:
            self._snapshot(data)
            return
        changes = {k: v for k, v in data.items() if self._persisted.get(k) != v}
        if not changes:
            return
        self._append({"g": self._generation, "set": changes})
        self._persisted = data

    def fold(self, state: KeyState) -> None:
        """Write `state` as one snapshot and drop the journal (a clean power-down); nothing
        when the snapshot already holds it all."""
        data = state.to_json()
        if self._journal_fd is not None or self.journal_path.exists() or data != self._persisted:
            self._snapshot(data)

    # -- the snapshot ------------------------------------------------------------------------
    def _snapshot(self, data: dict[str, Any]) -> None:
        """Write the snapshot of the next generation atomically (temporary file in the same
        folder, 0600, fsync, os.replace, fsync of the folder), then drop the journal: its
        lines name the previous generation, so a crash between the two leaves them unread."""
        generation = self._generation + 1
        text = json.dumps({**data, "generation": generation}, indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._close_journal()
        self.journal_path.unlink(missing_ok=True)
        _fsync_folder(self.path.parent)
        self._generation, self._persisted = generation, data

    # -- the journal -------------------------------------------------------------------------
    def _journal_changes(self, generation: Any) -> list[dict[str, Any]] | None:
        """The changes recorded for `generation`, in order, up to the first torn or foreign
        line; None when there is no journal."""
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return None
        changes: list[dict[str, Any]] = []
        for line in raw.split(b"\n")[:-1]:  # the part after the last newline is torn
            digest, _, body = line.partition(b" ")
            if sha256(body).hexdigest().encode() != digest:
                break
            record = json.loads(body)
            if record.get("g") != generation or not isinstance(record.get("set"), dict):
                break
            changes.append(record["set"])
        return changes

    def _append(self, record: dict[str, Any]) -> None:
        body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        line = sha256(body).hexdigest().encode() + b" " + body + b"\n"
        if self._journal_fd is None:
            self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._journal_bytes = os.fstat(self._journal_fd).st_size
            _fsync_folder(self.path.parent)  # the new journal's name is durable before its lines
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._journal_fd, view):]
            os.fdatasync(self._journal_fd)
        except BaseException:
            os.ftruncate(self._journal_fd, self._journal_bytes)  # no half line for the next one to follow
            raise
        self._journal_bytes += len(line)

    def _close_journal(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
            self._journal_bytes = 0


def _fsync_folder(folder: Path) -> None:
    """Make a rename or a new name in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The directory secrets at rest: AES-GCM (`cryptography`) under a 256-bit key the service holds
apart from the database.

The key lives in a 0600 file in the service's state directory (`var/directory-secrets.key`,
or `$STATION_DIRECTORY_KEY`, or an explicit path), created on first use; where the OS keyring
is present (the optional `keyring` package with a real backend) and no path is configured, it
lives there instead. Every sealed value carries associated data (the tenant and the
configuration's name, and what the value is), so a sealed secret copied to another row does not
open. Neither the key nor a plaintext ever reaches a repr, a log or an exception message.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from station.errors import StationError

KEY_FILE_NAME = "directory-secrets.key"
ENV_KEY_FILE = "STATION_DIRECTORY_KEY"
KEYRING_SERVICE, KEYRING_USER = "fido-preregistration-station", "directory-secrets"
_PREFIX = "v1."


class SealingError(StationError):
    """The directory key is missing, unreadable, too widely readable, or does not open a value."""

    code = "directory_key"


class SecretBox:
    """seal(plaintext, aad) → "v1.<b64 nonce|ciphertext>"; open(sealed, aad) → plaintext."""

    def __init__(self, key: bytes, *, source: str) -> None:
        if len(key) != 32:
            raise SealingError(f"the directory key from {source} is not 32 bytes")
        self._aead = AESGCM(key)
        self.source = source

    def __repr__(self) -> str:
        return f"SecretBox({self.source})"

    def seal(self, plaintext: str, aad: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, aad: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise SealingError("a sealed directory value has an unknown format")
        raw = base64.urlsafe_b64decode(sealed[len(_PREFIX):])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], aad.encode("utf-8")).decode("utf-8")
        except InvalidTag:
            raise SealingError(f"a sealed directory value does not open with the key from {self.source} "
                               "(another key, or the value was moved to another configuration)") from None


def default_key_path() -> Path:
    """`$STATION_DIRECTORY_KEY`, else `var/directory-secrets.key` (the service's state folder)."""
    return Path(os.environ.get(ENV_KEY_FILE) or Path("var") / KEY_FILE_NAME).resolve()


def open_box(path: Path | str | None = None, *, use_keyring: bool = True) -> SecretBox:
    """The service's SecretBox: the key file at `path` (created 0600 on first use), or, with no
    path configured anywhere, the OS keyring when one is present, else the default key file."""
    if path is None and ENV_KEY_FILE not in os.environ and use_keyring:
        box = _from_keyring()
        if box is not None:
            return box
    return _from_file(Path(path) if path is not None else default_key_path())


def _from_file(path: Path) -> SecretBox:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:  # first use: a fresh key (another process racing us loses O_EXCL and reads ours)
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SealingError(f"{path} is readable by others (mode {mode:o}): chmod 600 {path}")
    try:
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (OSError, ValueError):
        raise SealingError(f"{path} is not a directory key (32 bytes, base64)") from None
    return SecretBox(key, source=str(path))


def _from_keyring() -> SecretBox | None:
    try:
        import keyring  # optional: present only where an OS keyring is
        from keyring.backends import fail
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 0) <= 0:
            return None
        stored = keyring.get_password(KEYRING_SERVICE, KEYRING_USER)
        if stored is None:
            stored = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
            keyring.set_password(KEYRING_SERVICE, KEYRING_USER, stored)
        return SecretBox(base64.b64decode(stored), source="the OS keyring")
    except Exception:  # a keyring that is installed but unusable (no session bus): the file
        return None

"""The key store: the factory's transport and signing keys (PROTOCOL.md §1).

A key-store folder (mode 0700) holds `keys.json`, the metadata of every key (kid, kind,
status, dates), and one private JWK file per key, `<kid>.jwk`. Every file is mode 0600 and
written atomically (temporary file in the same folder, fsync, os.replace). Several keys of a
kind may be active at once (rotation); a retired key is kept on disk but:

- a retired transport key no longer opens requests and leaves the transport JWKS;
- a retired signing key no longer signs, but stays in the signing JWKS so that customers can
  still verify the responses it signed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from jwcrypto.common import JWException
from jwcrypto.jwk import JWK

from station.errors import DecryptFailed, KeyStoreError
from station.fsutil import atomic_write

METADATA_FILE = "keys.json"
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class KeyStore:
    """A folder of EC P-384 transport and signing keys, each active or retired."""

    class KIND(str, Enum):
        TRANSPORT = "transport"
        SIGNING = "signing"

    class STATUS(str, Enum):
        ACTIVE = "active"
        RETIRED = "retired"

    USE = {KIND.TRANSPORT: "enc", KIND.SIGNING: "sig"}
    SIGNING_ALG = "ES384"

    @dataclass(frozen=True)
    class Entry:
        """One key's metadata (never its private part)."""

        kid: str
        kind: str
        status: str
        created: str
        retired: str | None = None

    def __init__(self, path: Path, entries: list[KeyStore.Entry]) -> None:
        self.path = path
        self._entries = entries
        self._private: dict[str, JWK] = {}

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike) -> KeyStore:
        """Create the store with one transport and one signing key; refuse existing keys."""
        folder = Path(path)
        if (folder / METADATA_FILE).exists() or any(folder.glob("*.jwk")):
            raise KeyStoreError(f"{folder} already holds keys; refusing to overwrite them")
        folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(folder, _DIR_MODE)
        store = cls(folder, [])
        store._add(cls.KIND.TRANSPORT)
        store._add(cls.KIND.SIGNING)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> KeyStore:
        """Open an existing store (KeyStoreError when there is none or it is unreadable)."""
        folder = Path(path)
        try:
            document = json.loads((folder / METADATA_FILE).read_text("utf-8"))
            entries = [cls.Entry(**e) for e in document["keys"]]
        except FileNotFoundError as exc:
            raise KeyStoreError(
                f"no key store in {folder}; create one with: station keys init --dir {folder}"
            ) from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"the key-store metadata in {folder} is unreadable") from exc
        return cls(folder, entries)

    # -- changing -------------------------------------------------------------------------

    def rotate(self, kind: str) -> str:
        """Add a new active key of `kind`; older keys stay usable. Returns its kid."""
        return self._add(self._kind(kind))

    def retire(self, kid: str) -> None:
        """Retire `kid`. The last active key of a kind cannot be retired: rotate first."""
        entry = self._entry(kid)
        if entry.status == self.STATUS.RETIRED:
            return
        if len(self._active(entry.kind)) == 1:
            raise KeyStoreError(
                f"{kid} is the only active {entry.kind} key; "
                f"run station keys rotate --kind {entry.kind} first"
            )
        retired = replace(entry, status=self.STATUS.RETIRED.value, retired=_now())
        self._entries = [retired if e.kid == kid else e for e in self._entries]
        self._save_metadata()

    # -- reading --------------------------------------------------------------------------

    @property
    def entries(self) -> list[KeyStore.Entry]:
        return list(self._entries)

    def jwks(self, kind: str) -> dict:
        """The public JWKS of `kind` (public members only; signing keys carry `alg` ES384).

        Transport: active keys only. Signing: every key, retired ones included.
        """
        kind = self._kind(kind)
        entries = [e for e in self._entries if e.kind == kind.value]
        if kind == self.KIND.TRANSPORT:
            entries = [e for e in entries if e.status == self.STATUS.ACTIVE]
        return {"keys": [json.loads(self._load(e.kid).export_public()) for e in entries]}

    def transport_key(self, kid: str) -> JWK:
        """The private transport key `kid`; DecryptFailed unless it is held and active."""
        entry = next((e for e in self._entries if e.kid == kid), None)
        if entry is None or entry.kind != self.KIND.TRANSPORT.value:
            raise DecryptFailed("the request names a transport key this station does not hold")
        if entry.status != self.STATUS.ACTIVE.value:
            raise DecryptFailed("the request names a retired transport key")
        return self._load(kid)

    def signing_key(self) -> JWK:
        """The newest active signing key (private)."""
        return self._load(self.signing_kid)

    @property
    def signing_kid(self) -> str:
        active = self._active(self.KIND.SIGNING.value)
        if not active:
            raise KeyStoreError(f"{self.path} holds no active signing key")
        return active[-1].kid

    # -- internals ------------------------------------------------------------------------

    def _kind(self, kind: str) -> KeyStore.KIND:
        try:
            return self.KIND(kind)
        except ValueError:
            raise KeyStoreError(f"unknown key kind {kind!r}: use transport or signing") from None

    def _entry(self, kid: str) -> KeyStore.Entry:
        for entry in self._entries:
            if entry.kid == kid:
                return entry
        raise KeyStoreError(f"no key {kid!r} in {self.path}")

    def _active(self, kind: str) -> list[KeyStore.Entry]:
        return [e for e in self._entries if e.kind == kind and e.status == self.STATUS.ACTIVE]

    def _add(self, kind: KeyStore.KIND) -> str:
        alg = self.SIGNING_ALG if kind == self.KIND.SIGNING else None
        key = _generate(kind, self.USE[kind], alg)
        kid = key["kid"]
        atomic_write(self.path / f"{kid}.jwk", key.export_private().encode("utf-8"), mode=_FILE_MODE)
        self._entries.append(self.Entry(kid=kid, kind=kind.value, status="active", created=_now()))
        self._save_metadata()
        self._private[kid] = key
        return kid

    def _load(self, kid: str) -> JWK:
        if kid not in self._private:
            try:
                self._private[kid] = JWK.from_json((self.path / f"{kid}.jwk").read_text("utf-8"))
            except (OSError, ValueError, JWException) as exc:
                raise KeyStoreError(f"the key file of {kid} in {self.path} is unreadable") from exc
        return self._private[kid]

    def _save_metadata(self) -> None:
        document = {"version": 1, "keys": [asdict(e) for e in self._entries]}
        atomic_write(self.path / METADATA_FILE, json.dumps(document, indent=2).encode("utf-8"), mode=_FILE_MODE)


def _generate(kind: KeyStore.KIND, use: str, alg: str | None) -> JWK:
    """A new EC P-384 key whose kid is `<kind>-` + the start of its RFC 7638 thumbprint."""
    key = JWK.generate(kty="EC", crv="P-384")
    members = json.loads(key.export_private())
    members.update(kid=f"{kind.value}-{key.thumbprint()[:16]}", use=use)
    if alg:
        members["alg"] = alg
    return JWK(**members)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

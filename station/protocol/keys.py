"""The key store: the factory's transport and signing keys (PROTOCOL.md §1).

A key-store folder (mode 0700) holds `keys.json`, the metadata of every key (kid, kind,
status, dates), and one private JWK file per key, `<kid>.jwk`. Every file is mode 0600 and
written atomically (temporary file in the same folder, fsync, os.replace). Several keys of a
kind may be active at once (rotation); a retired key is kept on disk but:

- a retired transport key no longer opens requests and leaves the transport JWKS;
- a retired signing key no longer signs, but stays in the signing JWKS so that customers can
  still verify the responses it signed;
- a revoked signing key (one believed compromised) no longer signs and leaves the signing JWKS:
  customers then refuse every response it signed, forged or genuine (docs/HARDENING.md, "Keys").

Keys split by role: the private keys live only on stations; the service runs on the public
half alone, `export_public()` written by `station keys export-public` and read back as
`PublishedKeys` (re-read when the file changes, so rotation, retirement and revocation reach a
running service without a restart). `KeyStore` implements `backend.KeyBackend` (decrypt, sign),
the one interface a hardware backend would replace.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from jwcrypto.common import JWException
from jwcrypto.jwk import JWK

from station.errors import DecryptFailed, KeyStoreError
from station.fsutil import atomic_write
from station.protocol.backend import operation_key, station_decrypt, station_sign

log = logging.getLogger(__name__)

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
        REVOKED = "revoked"

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
        self._operation: dict[str, object] = {}  # kid -> joserfc key, built once per key load

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

    def revoke(self, kid: str) -> None:
        """Revoke signing key `kid`: it no longer signs and leaves the signing JWKS, so customers
        refuse every response it signed. The last active signing key cannot be revoked: rotate
        first. (A transport key is retired instead: it then opens nothing.)"""
        entry = self._entry(kid)
        if entry.kind != self.KIND.SIGNING.value:
            raise KeyStoreError(f"{kid} is a transport key: retire it instead (station keys retire)")
        if entry.status == self.STATUS.REVOKED:
            return
        if entry.status == self.STATUS.ACTIVE and len(self._active(entry.kind)) == 1:
            raise KeyStoreError(f"{kid} is the only active signing key; run station keys rotate --kind signing first")
        revoked = replace(entry, status=self.STATUS.REVOKED.value, retired=entry.retired or _now())
        self._entries = [revoked if e.kid == kid else e for e in self._entries]
        self._save_metadata()

    # -- reading --------------------------------------------------------------------------

    @property
    def entries(self) -> list[KeyStore.Entry]:
        return list(self._entries)

    def jwks(self, kind: str) -> dict:
        """The public JWKS of `kind` (public members only; signing keys carry `alg` ES384).

        Transport: active keys only. Signing: active and retired keys, never revoked ones.
        """
        kind = self._kind(kind)
        entries = [e for e in self._entries if e.kind == kind.value and e.status != self.STATUS.REVOKED]
        if kind == self.KIND.TRANSPORT:
            entries = [e for e in entries if e.status == self.STATUS.ACTIVE]
        return {"keys": [json.loads(self._load(e.kid).export_public()) for e in entries]}

    def export_public(self) -> dict:
        """One JWKS of every published key: the active transport keys (`use` "enc") and the
        unrevoked signing keys (`use` "sig"): what `station serve --jwks` runs on."""
        return {"keys": self.jwks("transport")["keys"] + self.jwks("signing")["keys"]}

    def transport_key(self, kid: str) -> JWK:
        """The private transport key `kid`; DecryptFailed unless it is held and active."""
        self.check_transport_kid(kid)
        return self._load(kid)

    def check_transport_kid(self, kid: str) -> None:
        """DecryptFailed unless `kid` names a transport key held here and active."""
        entry = next((e for e in self._entries if e.kid == kid), None)
        if entry is None or entry.kind != self.KIND.TRANSPORT.value:
            raise DecryptFailed("the request names a transport key this station does not hold")
        if entry.status != self.STATUS.ACTIVE.value:
            raise DecryptFailed("the request names a retired transport key")

    # -- backend.KeyBackend: the only two private-key operations ----------------------------

    def decrypt(self, compact: str, *, kid: str, max_plaintext: int) -> bytes:
        """The plaintext of a request JWE under transport key `kid` (DecryptFailed otherwise)."""
        self.check_transport_kid(kid)
        try:
            return station_decrypt(compact, self._operation_key(kid), max_plaintext=max_plaintext)
        except ValueError:
            raise DecryptFailed("the JWE does not decrypt with the named key") from None

    def sign(self, payload: bytes) -> str:
        """`payload` as a compact ES384 JWS under the newest active signing key."""
        kid = self.signing_kid
        return station_sign(payload, self._operation_key(kid), kid)

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

    def _operation_key(self, kid: str):
        """The joserfc key object of `kid`, built from its JWK once per load of the store."""
        if kid not in self._operation:
            self._operation[kid] = operation_key(self._load(kid))
        return self._operation[kid]

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


def _is_private(path: Path) -> bool:
    try:
        return "d" in json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return True  # unreadable: assume the worst


def holds_private_keys(folder: str | os.PathLike) -> bool:
    """True when `folder` holds any private key file (a key store): `station serve --keys`
    refuses it unless told `--allow-private-keys`."""
    return any(_is_private(path) for path in Path(folder).glob("*.jwk"))


class PublishedKeys:
    """The public keys the service runs on (`backend.PublicKeys`): a JWKS whose `use` "enc"
    keys are the transport keys and `use` "sig" keys the signing keys (`station keys
    export-public`). No private member is ever accepted.

    The source is read again whenever it changes (its size, mtime or inode), at most once per
    `min_interval` seconds: a rotation, retirement or revocation exported by the operator takes
    effect without a restart. A change that does not parse (a half-copied file) keeps the last
    good set and is logged; the first read must succeed.
    """

    def __init__(self, load: Callable[[], dict], stamp: Callable[[], object] | None = None, *,
                 source: str = "the published keys", min_interval: float = 0.0,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self._load_document = load
        self._stamp = stamp or (lambda: None)
        self.source = source
        self.min_interval = min_interval
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self._checked = self._clock()
        self._sets = _split_published(load(), source)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **options) -> PublishedKeys:
        """The exported JWKS file `path` (KeyStoreError when missing, unreadable or private)."""
        file = Path(path)

        def load() -> dict:
            try:
                return json.loads(file.read_text("utf-8"))
            except FileNotFoundError:
                raise KeyStoreError(
                    f"no JWKS file {file}; write it with: station keys export-public --dir DIR --out {file}"
                ) from None
            except (OSError, ValueError) as exc:
                raise KeyStoreError(f"{file} is not a readable JWKS ({exc.__class__.__name__})") from None

        return cls(load, lambda: _stat_stamp(file), source=str(file), **options)

    @classmethod
    def of_store(cls, folder: str | os.PathLike, **options) -> PublishedKeys:
        """The public half of the key store in `folder`, followed as its metadata changes
        (the service with `--keys DIR --allow-private-keys`; the demo and the tests)."""
        path = Path(folder)
        return cls(lambda: KeyStore.open(path).export_public(), lambda: _stat_stamp(path / METADATA_FILE),
                   source=str(path), **options)

    @classmethod
    def of_document(cls, document: dict) -> PublishedKeys:
        """A fixed JWKS document (never re-read)."""
        return cls(lambda: document, source="a JWKS document")

    def jwks(self, kind: str) -> dict:
        """The public JWKS of `kind` ("transport" or "signing")."""
        if kind not in ("transport", "signing"):
            raise KeyStoreError(f"unknown key kind {kind!r}: use transport or signing")
        return {"keys": [dict(k) for k in self._current()[kind]]}

    def check_transport_kid(self, kid: str) -> None:
        """DecryptFailed unless `kid` is a published transport key."""
        if not any(k["kid"] == kid for k in self._current()["transport"]):
            raise DecryptFailed("the request names a transport key the factory does not publish (unknown or retired)")

    def _current(self) -> dict[str, list[dict]]:
        with self._lock:
            now = self._clock()
            if now - self._checked < self.min_interval:
                return self._sets
            self._checked = now
            stamp = self._stamp()
            if stamp == self._seen:
                return self._sets
            try:
                self._sets = _split_published(self._load_document(), self.source)
            except KeyStoreError as exc:
                log.warning("keeping the last good published keys: %s", exc.message)
                return self._sets
            self._seen = stamp
            log.info("published keys re-read from %s", self.source)
            return self._sets


def _stat_stamp(path: Path) -> object:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


_PUBLIC_EC_MEMBERS = {"kty", "crv", "x", "y", "use", "kid", "alg", "key_ops"}


def _split_published(document: object, source: str) -> dict[str, list[dict]]:
    """A published JWKS → {"transport": [...], "signing": [...]}; KeyStoreError when any key is
    not a public EC P-384 key with a unique kid and `use` "enc" or "sig"."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise KeyStoreError(f"{source} is not a JWKS ({{\"keys\": [...]}})")
    sets: dict[str, list[dict]] = {"transport": [], "signing": []}
    kids: set[str] = set()
    for key in keys:
        if not isinstance(key, dict):
            raise KeyStoreError(f"{source}: a member of keys is not a JWK")
        if "d" in key or set(key) - _PUBLIC_EC_MEMBERS:
            raise KeyStoreError(f"{source} holds private key material: the service takes public keys only")
        kid = key.get("kid")
        if key.get("kty") != "EC" or key.get("crv") != "P-384" or not isinstance(kid, str) or kid in kids:
            raise KeyStoreError(f"{source}: every key must be EC P-384 with a unique kid")
        try:
            JWK(**key)
        except (JWException, ValueError, TypeError):
            raise KeyStoreError(f"{source}: the key {kid} is not a valid public key") from None
        use = {"enc": "transport", "sig": "signing"}.get(key.get("use"))
        if use is None:
            raise KeyStoreError(f"{source}: the key {kid} has no use \"enc\" or \"sig\"")
        kids.add(kid)
        sets[use].append(key)
    return sets


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

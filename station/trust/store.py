"""The operator's trust store on disk: a folder (0700) of files (0600) and one JSON index.

    DIR/index.json          what is trusted: operator anchors and models, the imported MDS BLOB
    DIR/anchor-<sha16>.pem  one operator anchor (a root, or a pinned attestation certificate)
    DIR/mds-<sha16>.jwt     the imported BLOB, as downloaded
    DIR/mds-root-<sha16>.pem  the MDS root it was verified with (verified again on every load)

Files are named by their content's SHA-256, so a change writes new files first and the index
last (each through `fsutil.atomic_write`): until the index is replaced nothing new is trusted,
and a crash at any point leaves the old index and the files it names intact; files no index
names are removed after the index is written. Where the folder is comes from the `[run]`
setting `trust_dir` (`--trust DIR`, `STATION_RUN_TRUST_DIR`), by default
`$XDG_DATA_HOME/fido-station/trust` (else `~/.local/share/fido-station/trust`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from station.fsutil import atomic_write
from station.trust.errors import TrustError

INDEX = "index.json"
_NAME = r"^[^\x00-\x1f\x7f]{1,64}$"


def default_trust_dir() -> Path:
    """$XDG_DATA_HOME/fido-station/trust, else ~/.local/share/fido-station/trust."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fido-station" / "trust"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnchorRecord(_Record):
    id: str = Field(pattern=r"^[0-9a-f]{16}$")
    kind: Literal["root", "pinned"]
    file: str = Field(pattern=r"^anchor-[0-9a-f]{16}\.pem$")
    aaguids: list[uuid.UUID] = Field(min_length=1)
    subject: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    not_after: dt.datetime
    added_at: dt.datetime


class ModelRecord(_Record):
    aaguid: uuid.UUID
    name: str = Field(pattern=_NAME)
    vendor: str = Field(pattern=_NAME)
    added_at: dt.datetime


class MdsRecord(_Record):
    file: str = Field(pattern=r"^mds-[0-9a-f]{16}\.jwt$")
    root_file: str = Field(pattern=r"^mds-root-[0-9a-f]{16}\.pem$")
    no: int
    next_update: dt.date
    imported_at: dt.datetime
    entries: int


class Index(_Record):
    version: Literal[1] = 1
    anchors: list[AnchorRecord] = []
    models: list[ModelRecord] = []
    mds: MdsRecord | None = None

    def files(self) -> set[str]:
        names = {a.file for a in self.anchors}
        if self.mds:
            names |= {self.mds.file, self.mds.root_file}
        return names


def content_name(prefix: str, data: bytes, suffix: str) -> str:
    return f"{prefix}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"


class TrustDir:
    """One trust store folder. Reading a folder that does not exist gives the empty store."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def index(self) -> Index:
        path = self.path / INDEX
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return Index()
        except (OSError, UnicodeDecodeError) as exc:
            raise TrustError(f"cannot read the trust store index {path} ({exc.__class__.__name__})") from None
        try:
            return Index.model_validate(json.loads(text))
        except (ValueError, ValidationError):
            raise TrustError(f"the trust store index {path} is damaged: restore {self.path} from its backup") from None

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except OSError:
            raise TrustError(f"{self.path / name}, named in the trust store index, is missing or unreadable: "
                             f"restore {self.path} from its backup") from None

    def commit(self, index: Index, new_files: dict[str, bytes]) -> None:
        """Write `new_files`, then the index; then remove files the new index no longer names."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
            for name, data in new_files.items():
                atomic_write(self.path / name, data, mode=0o600)
            atomic_write(self.path / INDEX, (index.model_dump_json(indent=1) + "\n").encode(), mode=0o600)
        except OSError as exc:
            raise TrustError(f"cannot write the trust store {self.path} ({exc.strerror or exc.__class__.__name__}); "
                             "the store is as it was") from None
        keep = index.files() | {INDEX}
        for path in self.path.iterdir():
            if path.name not in keep and path.is_file() and path.name.startswith(("anchor-", "mds-")):
                path.unlink(missing_ok=True)

    def loose_modes(self) -> list[str]:
        """The folder and files that group or others may use (they should be 0700 and 0600)."""
        if not self.path.is_dir():
            return []
        paths = [self.path, *sorted(p for p in self.path.iterdir() if p.is_file())]
        return [f"{p} {stat.S_IMODE(p.stat().st_mode):04o}" for p in paths if p.stat().st_mode & 0o077]

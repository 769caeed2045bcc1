"""The `station trust` operations: each checks everything first, then commits once (or not at all)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from station.trust.certs import (
    PINNED,
    anchor_kind,
    certificate_aaguid,
    common_name,
    fingerprint,
    read_bounded,
    read_certificates,
)
from station.trust.errors import TrustError
from station.trust.mds import MAX_BLOB, MdsBlob, shipped_mds_root, verify_blob
from station.trust.policy import MDS, Trust
from station.trust.store import AnchorRecord, MdsRecord, ModelRecord, TrustDir, content_name

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_CANONICAL = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


def parse_aaguid(text: str) -> uuid.UUID:
    """An AAGUID as a UUID (8-4-4-4-12 hex, or 32 hex digits); TrustError otherwise."""
    text = text.strip()
    if not (_CANONICAL.match(text) or _HEX32.match(text)):
        raise TrustError(f"{text[:60]!r} is not an AAGUID: give it as a UUID, e.g. cb69481e-8ff7-4039-93ec-0a2729a154a8")
    value = uuid.UUID(text)
    if value.int == 0:
        raise TrustError("the all-zero AAGUID names no model (U2F-only and privacy-preserving keys send it)")
    return value


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _load(trust_dir: Path) -> Trust:
    return Trust.default(trust_dir=trust_dir)


@dataclass(frozen=True)
class Added:
    id: str
    kind: str
    subject: str
    aaguids: list[uuid.UUID]


def add_root(trust_dir: Path, pem: Path, aaguid_texts: list[str], *, now: dt.datetime | None = None) -> Added:
    """Trust the one certificate in `pem` for exactly the given AAGUIDs (operator models only).
    A CA certificate becomes a root; a self-signed attestation certificate is pinned (and, if it
    names an AAGUID in its extension, only for that AAGUID)."""
    if not aaguid_texts:
        raise TrustError("name the AAGUIDs this anchor may vouch for: --aaguid UUID (one or more)")
    aaguids = list(dict.fromkeys(parse_aaguid(t) for t in aaguid_texts))
    certs = read_certificates(pem)
    if len(certs) != 1:
        raise TrustError(f"{pem} holds {len(certs)} certificates: give one anchor per file")
    cert = certs[0]
    kind = anchor_kind(cert, str(pem), now=now)
    trust = _load(trust_dir)
    for aaguid in aaguids:
        model = trust.model(aaguid)
        if trust.vendor_named(aaguid):
            where = "the imported MDS BLOB" if trust.authority(aaguid) == MDS else "the station's vendor catalogue"
            raise TrustError(f"{aaguid} is {model.name if model else 'a vendor model'} of {where}: only its vendor's "
                             "roots (shipped, or listed in the FIDO MDS BLOB) vouch for it, never an operator's root")
        if model is None:
            raise TrustError(f"{aaguid} is not in the catalogue: add the model first "
                             f"(station trust add-model {aaguid} --name NAME --vendor VENDOR)")
    if kind == PINNED:
        named = certificate_aaguid(cert)
        if named is not None and any(a != named for a in aaguids):
            raise TrustError(f"{pem} names AAGUID {named} in its certificate: it can be pinned for that AAGUID only")
    fp = fingerprint(cert)
    index = _store(trust_dir).index()
    existing = next((a for a in index.anchors if a.sha256 == fp), None)
    scope = list(dict.fromkeys([*(existing.aaguids if existing else []), *aaguids]))
    data = cert.public_bytes(Encoding.PEM)
    record = AnchorRecord(id=fp[:16], kind=kind, file=content_name("anchor", data, ".pem"), aaguids=scope,
                          subject=cert.subject.rfc4514_string(), sha256=fp, not_after=cert.not_valid_after_utc,
                          added_at=existing.added_at if existing else _now())
    anchors = [a for a in index.anchors if a.sha256 != fp] + [record]
    _store(trust_dir).commit(index.model_copy(update={"anchors": anchors}), {record.file: data})
    return Added(record.id, kind, common_name(cert), scope)


def add_model(trust_dir: Path, aaguid_text: str, *, name: str, vendor: str) -> ModelRecord:
    """Catalogue a model that no vendor list or BLOB names (it still needs an anchor)."""
    aaguid = parse_aaguid(aaguid_text)
    for label, value in (("--name", name), ("--vendor", vendor)):
        if not _NAME.match(value or ""):
            raise TrustError(f"{label} must be 1 to 64 characters without control characters")
    trust = _load(trust_dir)
    model = trust.model(aaguid)
    if model is not None:
        raise TrustError(f"{aaguid} is already catalogued as {model.name} ({model.vendor}, from {model.source})")
    record = ModelRecord(aaguid=aaguid, name=name, vendor=vendor, added_at=_now())
    index = _store(trust_dir).index()
    _store(trust_dir).commit(index.model_copy(update={"models": [*index.models, record]}), {})
    return record


def remove(trust_dir: Path, ident: str) -> str:
    """Remove an operator anchor (by ID), an operator model (by AAGUID, once no anchor names it
    alone), or the imported BLOB ("mds"). Shipped anchors cannot be removed."""
    store = _store(trust_dir)
    index = store.index()
    ident = ident.strip().lower()
    if ident == "mds":
        if index.mds is None:
            raise TrustError("no MDS BLOB is imported")
        store.commit(index.model_copy(update={"mds": None}), {})
        return f"removed the MDS BLOB no {index.mds.no}"
    anchor = next((a for a in index.anchors if a.id == ident), None)
    if anchor is not None:
        store.commit(index.model_copy(update={"anchors": [a for a in index.anchors if a.id != ident]}), {})
        return f"removed anchor {ident} ({anchor.subject})"
    try:
        aaguid = uuid.UUID(ident)
    except ValueError:
        aaguid = None
    model = next((m for m in index.models if m.aaguid == aaguid), None)
    if model is not None:
        users = [a.id for a in index.anchors if aaguid in a.aaguids]
        if users:
            raise TrustError(f"anchors {', '.join(users)} vouch for {aaguid}: remove them first (station trust remove ID)")
        store.commit(index.model_copy(update={"models": [m for m in index.models if m.aaguid != aaguid]}), {})
        return f"removed model {model.name} ({aaguid})"
    trust = _load(trust_dir)
    shipped = next((a for a in trust.anchors if a.id == ident), None)
    if shipped is not None:
        raise TrustError(f"{ident} is a {shipped.source} anchor ({shipped.subject}): only operator anchors can be removed")
    raise TrustError(f"no operator anchor or model {ident!r} in {trust_dir} (see: station trust list)")


def import_mds(trust_dir: Path, blob_path: Path, mds_root: Path | None = None, *,
               now: dt.datetime | None = None) -> MdsBlob:
    """Verify a downloaded BLOB against the FIDO MDS root (or `mds_root`) and store it. A BLOB
    whose `no` is lower than the stored one's is refused (an old BLOB may lack revocations)."""
    root = read_certificates(mds_root)[0] if mds_root is not None else shipped_mds_root()
    raw = read_bounded(Path(blob_path), MAX_BLOB, "an MDS BLOB")
    blob = verify_blob(raw, root, name=str(blob_path), now=now)
    store = _store(trust_dir)
    index = store.index()
    if index.mds is not None and blob.no < index.mds.no:
        raise TrustError(f"{blob_path} is BLOB no {blob.no}, older than the stored no {index.mds.no}: "
                         "download the current BLOB; nothing was imported")
    root_pem = root.public_bytes(Encoding.PEM)
    record = MdsRecord(file=content_name("mds", blob.raw, ".jwt"), root_file=content_name("mds-root", root_pem, ".pem"),
                       no=blob.no, next_update=blob.next_update, imported_at=_now(), entries=len(blob.by_aaguid))
    store.commit(index.model_copy(update={"mds": record}), {record.file: blob.raw, record.root_file: root_pem})
    return blob


def _store(trust_dir: Path) -> TrustDir:
    return TrustDir(trust_dir)


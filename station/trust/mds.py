"""FIDO Metadata Service (MDS3) BLOBs, verified and read through python-fido2's `fido2.mds3`.

The BLOB is a JWT whose x5c chains to the FIDO MDS root: "GlobalSign Root CA - R3" (FIDO
Alliance, fidoalliance.org/metadata: the BLOB signing chain ends in GlobalSign's R3 root). Its
PEM ships in station/data/mds, copied from Debian's ca-certificates (Mozilla's bundle), SHA-256
CB:B5:22:D7:B7:F1:27:AD:6A:01:13:86:5B:DF:1C:D4:10:2E:7D:07:59:AF:63:5A:7C:F4:72:0D:C9:63:C5:3B,
valid until 2029-03-18; `--mds-root PEM` replaces it (a test MDS, or after FIDO changes roots).

`fido2.mds3.parse_blob` verifies the chain (x5c, then the root) and the JWT signature, and parses
the payload into `MetadataBlobPayload`; this module adds the checks it leaves to the caller: the
signing certificates' validity dates, a readable one-line error per failure, and the lookups the
guard needs (entries by AAGUID, their attestation roots and status reports).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from base64 import b64decode
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from fido2.attestation.base import InvalidAttestation
from fido2.mds3 import AuthenticatorStatus, MetadataBlobPayload, MetadataBlobPayloadEntry, parse_blob
from fido2.utils import websafe_decode

from station.trust.certs import common_name, fingerprint, parse_pem
from station.trust.errors import TrustError

MDS_ROOT_FILE = "globalsign-root-ca-r3.pem"
MAX_BLOB = 64 * 1024 * 1024

#: Status reports that make a model untrustworthy (FIDO Metadata Service v3 §3.1.4
#: AuthenticatorStatus). ATTESTATION_KEY_COMPROMISE that names a `certificate` condemns only
#: chains holding that certificate; without one, the whole model.
REFUSED_STATUSES = frozenset({
    AuthenticatorStatus.REVOKED,
    AuthenticatorStatus.ATTESTATION_KEY_COMPROMISE,
    AuthenticatorStatus.USER_KEY_REMOTE_COMPROMISE,
    AuthenticatorStatus.USER_KEY_PHYSICAL_COMPROMISE,
    AuthenticatorStatus.USER_VERIFICATION_BYPASS,
})


def shipped_mds_root() -> x509.Certificate:
    """The FIDO MDS BLOB signing root shipped with the station (GlobalSign Root CA - R3)."""
    data = (resources.files("station") / "data" / "mds" / MDS_ROOT_FILE).read_bytes()
    return parse_pem(data, MDS_ROOT_FILE)[0]


@dataclass(frozen=True)
class MdsBlob:
    """A verified BLOB: the raw JWT (stored as it came) and python-fido2's parsed payload."""

    raw: bytes
    payload: MetadataBlobPayload
    root: x509.Certificate

    @property
    def no(self) -> int:
        return self.payload.no

    @property
    def next_update(self) -> dt.date:
        return self.payload.next_update

    @cached_property
    def by_aaguid(self) -> dict[uuid.UUID, MetadataBlobPayloadEntry]:
        """FIDO2 entries by AAGUID (UAF and U2F entries have none and are not used here)."""
        return {uuid.UUID(bytes=bytes(e.aaguid)): e for e in self.payload.entries if e.aaguid}

    def roots(self, aaguid: uuid.UUID) -> list[x509.Certificate]:
        """The attestationRootCertificates the entry of `aaguid` lists (empty if none)."""
        entry = self.by_aaguid.get(aaguid)
        if entry is None or entry.metadata_statement is None:
            return []
        return [x509.load_der_x509_certificate(der) for der in entry.metadata_statement.attestation_root_certificates]

    def refusal(self, aaguid: uuid.UUID, chain: list[x509.Certificate] | None = None) -> str | None:
        """The refusing status of `aaguid`'s entry ("REVOKED (effective 2025-01-02)"), or None.
        With `chain` (leaf first), an ATTESTATION_KEY_COMPROMISE naming a certificate refuses
        only when that certificate is in the chain; without a chain it is not decided here."""
        entry = self.by_aaguid.get(aaguid)
        if entry is None:
            return None
        held = {c.public_bytes(Encoding.DER) for c in chain or []}
        for report in entry.status_reports:
            if report.status not in REFUSED_STATUSES:
                continue
            if report.status == AuthenticatorStatus.ATTESTATION_KEY_COMPROMISE and report.certificate:
                if chain is None or report.certificate not in held:
                    continue
            when = f" (effective {report.effective_date.isoformat()})" if report.effective_date else ""
            return f"{report.status.value}{when}"
        return None


def verify_blob(raw: bytes, root: x509.Certificate, *, name: str, now: dt.datetime | None = None,
                check_dates: bool = True) -> MdsBlob:
    """python-fido2's parse_blob against `root`, plus validity dates; TrustError on any failure.
    A stored BLOB is verified again on every load without the dates (`check_dates=False`): its
    age is the doctor's nextUpdate warning, not a reason for the station not to start."""
    now = now or dt.datetime.now(dt.timezone.utc)
    raw = raw.strip()
    header = _header(raw, name)
    try:
        chain = [x509.load_der_x509_certificate(b64decode(c, validate=True)) for c in header.get("x5c", [])]
    except (ValueError, TypeError):
        raise TrustError(f"{name}: the BLOB's x5c header holds no valid certificate") from None
    root_der = root.public_bytes(Encoding.DER)
    try:
        payload = parse_blob(raw, root_der)
    except (InvalidAttestation, InvalidSignature) as exc:
        where = "its signing chain does not lead to" if _chain_breaks(chain, root) else "its signature does not verify under"
        raise TrustError(f"{name}: {where} the MDS root {root.subject.rfc4514_string()} (SHA-256 {fingerprint(root)[:16]}…): "
                         "a forged or damaged BLOB, or the wrong --mds-root; nothing was imported") from exc
    except (ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as exc:
        raise TrustError(f"{name}: not a FIDO MDS3 BLOB payload ({exc.__class__.__name__}); nothing was imported") from None
    for cert in [*chain, root] if check_dates else []:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise TrustError(f"{name}: the signing certificate {common_name(cert)} is valid only "
                             f"{cert.not_valid_before_utc:%Y-%m-%d}..{cert.not_valid_after_utc:%Y-%m-%d}; nothing was imported")
    return MdsBlob(raw=raw, payload=payload, root=root)


def _header(raw: bytes, name: str) -> dict:
    parts = raw.split(b".")
    if len(parts) != 3 or not all(parts):
        raise TrustError(f"{name} is not an MDS BLOB: a BLOB is a JWT, three base64url parts joined by dots")
    try:
        header = json.loads(websafe_decode(parts[0]))
        json.loads(websafe_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise TrustError(f"{name} is not an MDS BLOB: its JWT header or payload is not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise TrustError(f"{name} is not an MDS BLOB: its JWT header names no algorithm")
    return header


def _chain_breaks(chain: list[x509.Certificate], root: x509.Certificate) -> bool:
    """True when the x5c's last certificate was not issued by `root` (a wrong root, not a bad signature)."""
    top = chain[-1] if chain else None
    if top is None:
        return False
    if top == root:
        return False
    if top.issuer != root.subject:
        return True
    try:
        top.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return True
    return False

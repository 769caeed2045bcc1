"""Which anchors may vouch for which AAGUID: the model the counterfeit guard consults.

For an AAGUID the anchors are, in this order of authority, exactly one of:
1. MDS: when the imported BLOB has an entry for it, the roots that entry lists, and nothing else
   (the FIDO Alliance's word replaces the shipped list for that AAGUID);
2. shipped: when the shipped catalogue names it, the vendor roots shipped for its model;
3. operator: when the operator added the model (`station trust add-model`), the roots and pinned
   certificates the operator scoped to it (`station trust add-root PEM --aaguid ...`).
An operator anchor can never vouch for an AAGUID that a vendor catalogue or the BLOB names: an
operator's root cannot "prove" a YubiKey genuine. The TEST CA, trusted only for virtual keys,
the demo and the tests, vouches for every catalogued AAGUID on top.

Before the first write a key's AAGUID (getInfo) must be catalogued, have an anchor and carry no
refusing MDS status (`admit`); after makeCredential each attestation chain must end in one of
that AAGUID's anchors (`build_chain`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from fido2.attestation import verify_x509_chain
from fido2.attestation.base import InvalidAttestation

from station.errors import DeviceError
from station.trust.certs import PINNED, ROOT, anchor_kind, common_name, fingerprint, parse_pem, read_certificates
from station.trust.errors import TrustError
from station.trust.mds import MdsBlob, verify_blob
from station.trust.shipped import catalogue, shipped_intermediates, shipped_roots
from station.trust.store import Index, TrustDir

SHIPPED = "shipped"
MDS = "mds"
OPERATOR = "operator"
ROOTS_FOLDER = "roots-folder"
TEST = "test"
TEST_ANCHOR_ID = "test-ca"
NOT_GENUINE = "not genuine: set this key aside, do not ship it"


def test_ca_certificate() -> x509.Certificate:
    """The virtual authenticator's TEST root (station/data/testca): its private key is public in
    this repository, so it is never trusted for a real key."""
    pem = (resources.files("station") / "data" / "testca" / "ca.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


@dataclass(frozen=True)
class Model:
    """A catalogued model: its AAGUID, a readable name, the vendor, and where it was catalogued."""

    aaguid: uuid.UUID
    name: str
    vendor: str
    source: str  # shipped | mds | operator


@dataclass(frozen=True)
class Anchor:
    """One trust anchor and the AAGUIDs it may vouch for."""

    id: str
    certificate: x509.Certificate = field(repr=False)
    kind: str  # root | pinned
    source: str  # shipped | mds | operator | roots-folder | test
    aaguids: frozenset[uuid.UUID] = field(repr=False)
    origin: str = ""  # the shipped file name, "MDS no 42", the operator's file

    @property
    def subject(self) -> str:
        return common_name(self.certificate)


@dataclass
class Trust:
    """The catalogue and the anchors, from the shipped data, an MDS BLOB and the operator store."""

    models: dict[uuid.UUID, Model]
    anchors: list[Anchor]
    intermediates: list[x509.Certificate] = field(default_factory=list)
    mds: MdsBlob | None = None
    index: Index = field(default_factory=Index)
    trust_dir: Path | None = None
    test_ca: bool = False

    # ---------------------------------------------------------------- building
    @classmethod
    def default(cls, *, operator_roots: Path | None = None, trust_test_ca: bool = False,
                trust_dir: Path | None = None) -> Trust:
        """Shipped roots, plus the trust store at `trust_dir` (its models, anchors and BLOB),
        plus a deprecated `--roots` folder, plus the TEST CA when asked (virtual keys, tests)."""
        models = {a: Model(a, e.name, e.vendor, SHIPPED) for a, e in catalogue().items()}
        anchors = [Anchor(fingerprint(c)[:16], c, ROOT, SHIPPED, scope, name) for name, c, scope in shipped_roots()]
        index, blob = Index(), None
        if trust_dir is not None:
            store = TrustDir(trust_dir)
            index = store.index()
            if index.mds is not None:
                root = parse_pem(store.read(index.mds.root_file), index.mds.root_file)[0]
                blob = verify_blob(store.read(index.mds.file), root, name=str(store.path / index.mds.file),
                                   check_dates=False)
        trust = cls(models=models, anchors=anchors, intermediates=list(shipped_intermediates()), mds=blob,
                    index=index, trust_dir=trust_dir)
        if blob is not None:
            trust._add_mds(blob)
        for record in index.models:
            if record.aaguid not in trust.models:
                trust.models[record.aaguid] = Model(record.aaguid, record.name, record.vendor, OPERATOR)
        if trust_dir is not None:
            store = TrustDir(trust_dir)
            for record in index.anchors:
                certs = parse_pem(store.read(record.file), record.file)
                trust.anchors.append(Anchor(record.id, certs[0], record.kind, OPERATOR, frozenset(record.aaguids), record.file))
        if operator_roots is not None:
            trust.anchors.extend(load_roots_folder(operator_roots, trust.operator_aaguids()))
        if trust_test_ca:
            trust.test_ca = True
            trust.anchors.append(Anchor(TEST_ANCHOR_ID, test_ca_certificate(), ROOT, TEST, frozenset(trust.models),
                                        "station/data/testca/ca.pem"))
        return trust

    def _add_mds(self, blob: MdsBlob) -> None:
        by_print: dict[str, tuple[x509.Certificate, set[uuid.UUID]]] = {}
        for aaguid, entry in blob.by_aaguid.items():
            if aaguid not in self.models:
                statement = entry.metadata_statement
                name = statement.description if statement else str(aaguid)
                shipped = catalogue().get(aaguid)
                self.models[aaguid] = Model(aaguid, name, shipped.vendor if shipped else "(from MDS)", MDS)
            for cert in blob.roots(aaguid):
                by_print.setdefault(fingerprint(cert), (cert, set()))[1].add(aaguid)
        for fp, (cert, scope) in by_print.items():
            self.anchors.append(Anchor(fp[:16], cert, ROOT, MDS, frozenset(scope), f"MDS BLOB no {blob.no}"))

    # ---------------------------------------------------------------- questions
    def model(self, aaguid: uuid.UUID) -> Model | None:
        return self.models.get(aaguid)

    def vendor_named(self, aaguid: uuid.UUID) -> bool:
        """True when a vendor catalogue (shipped) or the BLOB names this AAGUID."""
        return aaguid in catalogue() or (self.mds is not None and aaguid in self.mds.by_aaguid)

    def operator_aaguids(self) -> frozenset[uuid.UUID]:
        return frozenset(a for a, m in self.models.items() if m.source == OPERATOR)

    def authority(self, aaguid: uuid.UUID) -> str | None:
        """Which source's anchors count for `aaguid`: mds, shipped, operator, or None."""
        if self.mds is not None and aaguid in self.mds.by_aaguid:
            return MDS
        if aaguid in catalogue():
            return SHIPPED
        if aaguid in self.models:
            return OPERATOR
        return None

    def anchors_for(self, aaguid: uuid.UUID) -> list[Anchor]:
        """Exactly the anchors that may vouch for `aaguid` (see the module's rules)."""
        authority = self.authority(aaguid)
        sources = {MDS: {MDS}, SHIPPED: {SHIPPED}, OPERATOR: {OPERATOR, ROOTS_FOLDER}}.get(authority, set())
        return [a for a in self.anchors if aaguid in a.aaguids and (a.source in sources or a.source == TEST)]

    def refusal(self, aaguid: uuid.UUID, chain: list[x509.Certificate] | None = None) -> str | None:
        """A refusing MDS status report of `aaguid` ("REVOKED (effective ...)"), or None."""
        return self.mds.refusal(aaguid, chain) if self.mds is not None else None

    def admit(self, aaguid: uuid.UUID) -> Model:
        """Before the first write: `aaguid` (from getInfo) is catalogued, carries no refusing
        status and has an anchor; otherwise DeviceError and the key stays untouched."""
        model = self.model(aaguid)
        untouched = "this key was not written to: set it aside"
        if model is None:
            raise DeviceError(
                f"unknown model: AAGUID {aaguid} is in no catalogue; {untouched}. If your organisation buys this "
                f"model on purpose, add it (station trust add-model {aaguid} --name NAME --vendor VENDOR) and an "
                f"anchor for it (station trust add-root PEM --aaguid {aaguid})")
        status = self.refusal(aaguid)
        if status:
            raise DeviceError(f"{NOT_GENUINE}: the FIDO Metadata Service reports {status} for {model.name} "
                              f"({aaguid}); {untouched}")
        if not self.anchors_for(aaguid):
            raise DeviceError(f"cannot verify this key: {model.name} ({aaguid}) has no trust anchor; "
                              f"{untouched}. {self._anchor_hint(aaguid, model)}")
        return model

    def _anchor_hint(self, aaguid: uuid.UUID, model: Model) -> str:
        authority = self.authority(aaguid)
        if authority == MDS:
            entry = self.mds.by_aaguid[aaguid]
            kinds = ", ".join(entry.metadata_statement.attestation_types) if entry.metadata_statement else "none"
            return (f"Its MDS entry lists no attestation root (attestation types: {kinds}): "
                    "a key that only attests itself cannot be told from a counterfeit")
        if authority == SHIPPED:
            return (f"No {model.vendor} root shipped with the station covers this model: import the FIDO MDS BLOB, "
                    "which lists its roots (station trust import-mds BLOB.jwt)")
        return f"Add its root, or pin its self-signed attestation certificate: station trust add-root PEM --aaguid {aaguid}"

    def build_chain(self, x5c: list[x509.Certificate], aaguid: uuid.UUID) -> tuple[Anchor, list[x509.Certificate]]:
        """x5c extended with published intermediates up to an anchor of `aaguid`, every signature
        verified: (the anchor, the chain leaf first). DeviceError when no anchor of `aaguid` ends it."""
        anchors = self.anchors_for(aaguid)
        chain = list(x5c)
        for _ in range(4):  # attestation chains are short; bound the walk
            last = chain[-1]
            for anchor in anchors:
                cert = anchor.certificate
                if last == cert and (len(chain) > 1 or anchor.kind == PINNED):
                    candidate = chain
                elif last.issuer == cert.subject and last != cert:
                    candidate = chain + [cert]
                else:
                    continue
                if _signatures_verify(candidate):
                    return anchor, candidate
            step = next((c for c in self.intermediates if c.subject == last.issuer and c not in chain), None)
            if step is None:
                break
            chain.append(step)
        raise DeviceError(f"{NOT_GENUINE} (its attestation certificate chains to no anchor trusted for AAGUID {aaguid})")


def _signatures_verify(chain: list[x509.Certificate]) -> bool:
    try:
        verify_x509_chain([c.public_bytes(Encoding.DER) for c in chain])
    except (InvalidAttestation, InvalidSignature, ValueError):
        return False
    return True


def load_roots_folder(folder: Path, scope: frozenset[uuid.UUID], *, now: dt.datetime | None = None) -> list[Anchor]:
    """The deprecated `--roots` folder: every file a PEM certificate that is a root or a
    self-signed attestation certificate. Its anchors vouch only for operator models (never for
    a vendor's or the BLOB's AAGUIDs). TrustError on an empty folder or any bad file."""
    folder = Path(folder)
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise TrustError(f"cannot read the roots folder {folder} ({exc.strerror or exc.__class__.__name__})") from None
    if not files:
        raise TrustError(f"the roots folder {folder} holds no certificate file")
    anchors = []
    for path in files:
        for cert in read_certificates(path):
            kind = anchor_kind(cert, str(path), now=now)
            anchors.append(Anchor(fingerprint(cert)[:16], cert, kind, ROOTS_FOLDER, scope, str(path)))
    return anchors

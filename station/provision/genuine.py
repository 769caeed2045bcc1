"""The counterfeit guard (PROTOCOL.md §5): a key ships only if its attestation proves it genuine.

For every credential the key made:
1. the attestation statement verifies (python-fido2's `Attestation` for its `fmt`: the signature
   over authenticatorData ‖ clientDataHash by the certificate in x5c);
2. the certificate chains (x5c, then published intermediates) to a trust anchor: the vendor's
   published FIDO roots, roots an operator added, and — only when the station runs for testing —
   the virtual authenticator's TEST CA;
3. the AAGUID in the certificate (extension 1.3.6.1.4.1.45724.1.1.4) equals the authData's and the
   getInfo's, and is a catalogued model of the vendor whose anchor the chain ended in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from fido2.attestation import Attestation, InvalidData, UnsupportedType, verify_x509_chain
from fido2.webauthn import AttestationObject

from station.vendors import (
    HID_GLOBAL,
    YUBICO,
    load_operator_roots,
    lookup,
    vendor_intermediates,
    vendor_roots,
)
from station.errors import DeviceError

#: id-fido-gen-ce-aaguid (FIDO Authenticator Metadata; WebAuthn §8.2.1)
AAGUID_EXTENSION = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
TEST_ANCHOR = "TEST"
OPERATOR_ANCHOR = "operator"
NOT_GENUINE = "not genuine: set this key aside, do not ship it"


def test_ca_certificate() -> x509.Certificate:
    """The virtual authenticator's TEST root (fixtures/testca), never trusted by default."""
    pem = (resources.files("station") / "data" / "testca" / "ca.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


@dataclass
class TrustStore:
    """Trust anchors by name: a vendor, "operator" (added roots), or "TEST" (the test CA)."""

    anchors: dict[str, list[x509.Certificate]] = field(default_factory=dict)
    intermediates: list[x509.Certificate] = field(default_factory=list)

    @classmethod
    def default(cls, *, operator_roots: Path | None = None, trust_test_ca: bool = False) -> TrustStore:
        anchors = {vendor: list(vendor_roots(vendor)) for vendor in (YUBICO, HID_GLOBAL)}
        if operator_roots is not None:
            anchors[OPERATOR_ANCHOR] = load_operator_roots(operator_roots)
        if trust_test_ca:
            anchors[TEST_ANCHOR] = [test_ca_certificate()]
        intermediates = [c for v in (YUBICO, HID_GLOBAL) for c in vendor_intermediates(v)]
        return cls(anchors=anchors, intermediates=intermediates)

    def build_chain(self, x5c: list[x509.Certificate]) -> tuple[str, list[x509.Certificate]]:
        """Extend x5c with published intermediates up to an anchor; the anchor's name and the
        whole chain (leaf first, anchor last). An x5c already ending in an anchor is accepted."""
        chain = list(x5c)
        for _ in range(4):  # attestation chains are short; bound the walk
            last = chain[-1]
            for name, certs in self.anchors.items():
                for anchor in certs:
                    if last == anchor and len(chain) > 1:
                        return name, chain
                    if last.issuer == anchor.subject and last != anchor:
                        return name, chain + [anchor]
            step = next((c for c in self.intermediates if c.subject == last.issuer and c not in chain), None)
            if step is None:
                break
            chain.append(step)
        raise DeviceError(f"{NOT_GENUINE} (its attestation certificate chains to no trusted root)")


def certificate_aaguid(cert: x509.Certificate) -> uuid.UUID | None:
    try:
        ext = cert.extensions.get_extension_for_oid(AAGUID_EXTENSION)
    except x509.ExtensionNotFound:
        return None
    value = ext.value.value  # UnrecognizedExtension: the DER of the extnValue
    # extnValue is an OCTET STRING holding the 16 bytes: 04 10 <aaguid>
    if len(value) == 18 and value[:2] == b"\x04\x10":
        return uuid.UUID(bytes=value[2:])
    return None


def verify_genuine(
    attestation_object: bytes,
    client_data_hash: bytes,
    *,
    info_aaguid: uuid.UUID,
    trust: TrustStore,
) -> str:
    """Raise DeviceError("not genuine …") unless the attestation proves a genuine, catalogued key;
    return the name of the anchor the chain ended in."""
    att = AttestationObject(attestation_object)
    auth_aaguid = uuid.UUID(bytes=bytes(att.auth_data.credential_data.aaguid))
    x5c_der = att.att_stmt.get("x5c") or []
    if not x5c_der:
        raise DeviceError(f"{NOT_GENUINE} (self or no attestation: no certificate to check)")
    cert_aaguid = certificate_aaguid(x509.load_der_x509_certificate(x5c_der[0]))
    if cert_aaguid is None or not cert_aaguid == auth_aaguid == info_aaguid:
        raise DeviceError(
            f"{NOT_GENUINE} (AAGUID mismatch: certificate {cert_aaguid}, authData {auth_aaguid}, getInfo {info_aaguid})"
        )
    try:
        result = Attestation.for_type(att.fmt)().verify(att.att_stmt, att.auth_data, client_data_hash)
    except (InvalidData, UnsupportedType, InvalidSignature, ValueError) as exc:
        raise DeviceError(f"{NOT_GENUINE} (its {att.fmt} attestation does not verify)") from exc
    x5c = [x509.load_der_x509_certificate(der) for der in result.trust_path]
    anchor_name, chain = trust.build_chain(x5c)
    try:
        verify_x509_chain([c.public_bytes(Encoding.DER) for c in chain])
    except (InvalidSignature, ValueError) as exc:
        raise DeviceError(f"{NOT_GENUINE} (its certificate chain does not verify)") from exc

    entry = lookup(cert_aaguid)
    if entry is None:
        raise DeviceError(f"{NOT_GENUINE} (AAGUID {cert_aaguid} is no catalogued model)")
    if anchor_name not in (TEST_ANCHOR, OPERATOR_ANCHOR, entry.vendor):
        raise DeviceError(f"{NOT_GENUINE} (a {entry.vendor} AAGUID under a {anchor_name} root)")
    return anchor_name

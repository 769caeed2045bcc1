"""Packed attestation with x5c, from a per-key certificate issued by the TEST CA.

The TEST CA lives in fixtures/testca (reached as station/data/testca); every name in it says
TEST, and it must never pass as a genuine vendor root. At `create` time each virtual key gets
its own EC P-256 attestation key and a certificate meeting the WebAuthn packed attestation
certificate requirements: subject C, O, OU "Authenticator Attestation", CN; the FIDO AAGUID
extension 1.3.6.1.4.1.45724.1.1.4 (not critical); Basic Constraints CA:FALSE.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fido2.cose import ES256

from .errors import VirtualError

#: FIDO AAGUID certificate extension (id-fido-gen-ce-aaguid).
OID_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
TEST_CA_DIR = Path(__file__).resolve().parent.parent / "data" / "testca"

CertAndKey = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def make_ca(common_name: str, *, years: int = 30) -> CertAndKey:
    """A self-signed EC P-256 root (CA:TRUE, pathlen 0) named TEST ONLY: the TEST CA itself
    (scripts/make_test_ca.py) or a counterfeit vendor's root in tests."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST ONLY FIDO Station"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "TEST Virtual Authenticators"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def ca_pem() -> str:
    """The PEM of the TEST root (what `station virtual ca` prints)."""
    try:
        return (TEST_CA_DIR / "ca.pem").read_text(encoding="ascii")
    except FileNotFoundError:
        raise VirtualError(f"test CA missing at {TEST_CA_DIR}; run scripts/make_test_ca.py") from None


def load_test_ca() -> CertAndKey:
    """The TEST CA certificate and its private key."""
    cert = x509.load_pem_x509_certificate(ca_pem().encode())
    key = serialization.load_pem_private_key((TEST_CA_DIR / "ca.key.pem").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise VirtualError("the test CA key must be an EC key")
    return cert, key


def issue_attestation_certificate(
    ca: CertAndKey, *, aaguid: bytes, vendor: str, model: str, serial: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh attestation key and its certificate, signed by `ca`, carrying `aaguid` (none for
    the all-zero AAGUID of a U2F-only key)."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"TEST virtual {vendor}"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Authenticator Attestation"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"TEST {model} Attestation {serial}"),
        ]
    )
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(min(now + dt.timedelta(days=365 * 20), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if aaguid != bytes(16):  # a CTAP1/U2F-only key has no AAGUID, and its certificate no extension
        builder = builder.add_extension(x509.UnrecognizedExtension(OID_AAGUID, b"\x04\x10" + aaguid), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return key, cert


def packed_statement(
    key: ec.EllipticCurvePrivateKey, cert_der: bytes, auth_data: bytes, client_data_hash: bytes
) -> dict:
    """attStmt of fmt "packed": {alg, sig over authData || clientDataHash, x5c}."""
    sig = key.sign(auth_data + client_data_hash, ec.ECDSA(hashes.SHA256()))
    return {"alg": ES256.ALGORITHM, "sig": sig, "x5c": [cert_der]}


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def key_from_pem(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise VirtualError("attestation key in the state file is not an EC key")
    return key

"""Test PKI made in the test: roots, attestation certificates, and MDS3 BLOBs signed by a test MDS root."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from base64 import b64encode
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwcrypto import jwk, jws

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
OID_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
#: a made-up AAGUID standing in for a pico-fido build (no vendor list names it)
PICO_AAGUID = uuid.UUID("5a9f1c2e-8d3b-4e7a-9c61-0b2f4d6e8a10")
YUBIKEY_57 = uuid.UUID("a25342c0-3cdc-4414-8e46-f4807fca511c")  # YubiKey 5 NFC 5.7 (profile yubikey-5-nfc-5.7)
CRESCENDO_4000 = uuid.UUID("aa79f476-ea00-417e-9628-1e8365123922")


def name(cn: str, *, ou: str = "Test PKI") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST ONLY"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(subject: x509.Name, key, *, issuer=None, ca: bool | None = True, aaguid: uuid.UUID | None = None,
         not_before: dt.datetime | None = None, not_after: dt.datetime | None = None, cert_sign: bool = True):
    """A certificate for `key`'s public key, signed by issuer (cert, key) or self-signed."""
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - dt.timedelta(days=1))
               .not_valid_after(not_after or NOW + dt.timedelta(days=3650)))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=cert_sign, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if aaguid is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(OID_AAGUID, b"\x04\x10" + aaguid.bytes), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def root(cn: str, **kw):
    key = ec_key()
    return cert(name(cn), key, **kw), key


def pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def self_signed_attestation(cn: str = "Pico Key", aaguid: uuid.UUID | None = None):
    """What pico-fido puts in x5c: a self-signed end-entity certificate (CA:FALSE), no AAGUID extension."""
    key = ec_key()
    return cert(name(cn, ou="Authenticator Attestation"), key, ca=False, aaguid=aaguid), key


# ---------------------------------------------------------------- MDS3
class MdsSigner:
    """A test MDS: an RSA root and a leaf signing BLOBs (RS256, as the FIDO MDS signs them)."""

    def __init__(self) -> None:
        self.root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.root = cert(name("TEST MDS Root"), self.root_key)
        self.leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.leaf = cert(name("TEST MDS BLOB Signer"), self.leaf_key, issuer=(self.root, self.root_key), ca=False)

    def blob(self, entries: list[dict], *, no: int = 7, next_update: dt.date | None = None,
             signer=None, chain=None) -> bytes:
        payload = {"legalHeader": "TEST ONLY", "no": no,
                   "nextUpdate": (next_update or (NOW + dt.timedelta(days=30)).date()).isoformat(), "entries": entries}
        key = signer or self.leaf_key
        x5c = [b64encode(der(c)).decode() for c in (chain or [self.leaf])]
        token = jws.JWS(json.dumps(payload).encode())
        token.add_signature(jwk.JWK.from_pyca(key), alg="RS256",
                            protected=json.dumps({"alg": "RS256", "typ": "JWT", "x5c": x5c}))
        return token.serialize(compact=True).encode()


def mds_entry(aaguid: uuid.UUID, roots: list[x509.Certificate], *, statuses: list[dict] | None = None,
              description: str = "TEST model") -> dict:
    return {
        "aaguid": str(aaguid),
        "metadataStatement": {
            "legalHeader": "TEST ONLY", "aaguid": str(aaguid), "description": description,
            "authenticatorVersion": 1, "protocolFamily": "fido2", "schema": 3,
            "upv": [{"major": 1, "minor": 1}], "authenticationAlgorithms": ["secp256r1_ecdsa_sha256_raw"],
            "publicKeyAlgAndEncodings": ["cose"], "attestationTypes": ["basic_full"],
            "userVerificationDetails": [[{"userVerificationMethod": "passcode_external"}]],
            "keyProtection": ["hardware"], "matcherProtection": ["on_chip"], "attachmentHint": ["external"],
            "tcDisplay": [], "attestationRootCertificates": [b64encode(der(c)).decode() for c in roots],
        },
        "statusReports": statuses or [{"status": "FIDO_CERTIFIED_L1", "effectiveDate": "2024-01-01"}],
        "timeOfLastStatusChange": "2024-01-01",
    }

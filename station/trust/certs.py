"""Reading certificates an operator offers as trust anchors, and what kind of anchor each is.

An anchor is either
- a root: a CA certificate (basicConstraints CA:TRUE; keyUsage, when present, with keyCertSign)
  that attestation chains end in; or
- a pinned attestation certificate: a self-signed end-entity certificate that a model without a
  vendor CA (pico-fido generates one per device) puts in its x5c. Pinned, it vouches for exactly
  the keys holding its private key. It must meet the packed attestation certificate rules that
  python-fido2 checks (WebAuthn §8.2.1: version 3, Basic Constraints CA:FALSE).

Every refusal is a `TrustError` naming the file and what to do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from station.trust.errors import TrustError

#: id-fido-gen-ce-aaguid (FIDO Authenticator Metadata; WebAuthn §8.2.1)
AAGUID_EXTENSION = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
MAX_CERT_FILE = 1024 * 1024
ROOT = "root"
PINNED = "pinned"
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, lower-case hex (what `openssl x509 -fingerprint -sha256` shows)."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a file of at most `limit` bytes; TrustError naming it otherwise."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise TrustError(f"cannot read {path} ({exc.strerror or exc.__class__.__name__})") from None
    if len(data) > limit:
        raise TrustError(f"{path} is larger than {limit} bytes: not {what}")
    return data


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file; TrustError for DER, a key, garbage, or nothing."""
    return parse_pem(read_bounded(Path(path), MAX_CERT_FILE, "a certificate file"), str(path))


def parse_pem(data: bytes, name: str) -> list[x509.Certificate]:
    if data[:1] == b"\x30":
        raise TrustError(f"{name} is a DER certificate, not PEM: convert it first "
                         f"(openssl x509 -inform der -in {name} -out {Path(name).stem}.pem)")
    if b"PRIVATE KEY-----" in data:
        raise TrustError(f"{name} holds a private key: offer only the certificate (and keep the key away from here)")
    if _PEM_BEGIN not in data:
        raise TrustError(f"{name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TrustError(f"{name}: malformed PEM certificate (its base64 or DER does not parse)") from None
    if data.count(_PEM_BEGIN) != len(certs):
        raise TrustError(f"{name}: malformed PEM certificate (a BEGIN CERTIFICATE block does not parse)")
    return certs


def is_self_signed(cert: x509.Certificate) -> bool:
    """Issuer equals subject and the certificate's own key verifies its signature."""
    if cert.issuer != cert.subject:
        return False
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def certificate_aaguid(cert: x509.Certificate) -> uuid.UUID | None:
    """The AAGUID of the id-fido-gen-ce-aaguid extension, None when the extension is absent;
    ValueError when it is present but not an OCTET STRING of 16 bytes."""
    try:
        ext = cert.extensions.get_extension_for_oid(AAGUID_EXTENSION)
    except x509.ExtensionNotFound:
        return None
    value = ext.value.value  # UnrecognizedExtension: the DER of extnValue, 04 10 <16 bytes>
    if len(value) != 18 or value[:2] != b"\x04\x10":
        raise ValueError("the AAGUID extension is not an OCTET STRING of 16 bytes")
    return uuid.UUID(bytes=value[2:])


def anchor_kind(cert: x509.Certificate, name: str, *, now: dt.datetime | None = None) -> str:
    """ROOT or PINNED, or TrustError saying why `cert` (from `name`) can be neither."""
    now = now or dt.datetime.now(dt.timezone.utc)
    label = f"{name} ({common_name(cert)})"
    if cert.not_valid_after_utc < now:
        raise TrustError(f"{label} expired on {cert.not_valid_after_utc:%Y-%m-%d}: an expired certificate vouches for nothing")
    if cert.not_valid_before_utc > now:
        raise TrustError(f"{label} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.key_cert_sign:
            raise TrustError(f"{label} is marked CA but its keyUsage lacks keyCertSign: it cannot sign certificates")
        return ROOT
    if not is_self_signed(cert):
        raise TrustError(f"{label} is not a CA certificate (basicConstraints CA:TRUE) and not self-signed: "
                         "a root must be a CA; only a model's self-signed attestation certificate can be pinned")
    if basic is None or cert.version != x509.Version.v3:
        raise TrustError(f"{label} is a self-signed certificate without Basic Constraints (or not X.509 v3): "
                         "packed attestation (WebAuthn §8.2.1) refuses it as an attestation certificate")
    try:
        certificate_aaguid(cert)
    except ValueError as exc:
        raise TrustError(f"{label}: {exc}") from None
    return PINNED

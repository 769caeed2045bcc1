"""The counterfeit guard (PROTOCOL.md §5): a key is written to only if its model can be verified,
and ships only if every attestation it made proves it genuine.

Before the first write (`admit`, from item.preflight): the AAGUID getInfo reports is catalogued
(shipped, MDS BLOB, or an operator's model), carries no revoked or compromised MDS status, and
has at least one anchor (station.trust.policy). A key failing this is refused untouched.

After makeCredential, for every credential:
1. `none` and self attestation are refused: they prove nothing about who made the key;
2. the AAGUIDs agree: authData's equals getInfo's, and the attestation certificate's
   id-fido-gen-ce-aaguid extension, when present, equals them (WebAuthn §8.2.1, packed: "If
   attestnCert contains an extension with OID 1.3.6.1.4.1.45724.1.1.4 ... verify that the value
   of this extension matches the aaguid in authenticatorData"; a certificate without it is fine);
3. the attestation statement verifies (python-fido2's `Attestation` for its `fmt`);
4. the certificate chains (x5c, then published intermediates) to an anchor scoped to this
   AAGUID, every signature checked, and no MDS status condemns a certificate of the chain.
"""

from __future__ import annotations

import uuid

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from fido2.attestation import Attestation, UnsupportedType
from fido2.attestation.base import InvalidAttestation
from fido2.ctap2 import Info
from fido2.webauthn import AttestationObject

from station.errors import DeviceError
from station.trust.certs import AAGUID_EXTENSION, certificate_aaguid
from station.trust.policy import NOT_GENUINE, TEST, Trust, test_ca_certificate

#: The name the station's flow uses for the trust model (station.trust.policy.Trust).
TrustStore = Trust
TEST_ANCHOR = TEST

__all__ = ["AAGUID_EXTENSION", "NOT_GENUINE", "TrustStore", "admit", "certificate_aaguid", "test_ca_certificate",
           "verify_genuine"]

_ACCEPT_HOW = ("this station ships only keys whose attestation certificate chains to an anchor: if the model can "
               "attest with a certificate (pico-fido has a self-signed one), pin that certificate for its AAGUID "
               "(station trust add-root CERT.pem --aaguid AAGUID)")


def admit(info: Info, trust: Trust) -> None:
    """The pre-write check: DeviceError (key untouched) unless getInfo's AAGUID can be verified
    and the key can attest with something other than "none" (CTAP 2.2 getInfo attestationFormats,
    0x16; python-fido2 reads a key that omits it as ["packed"])."""
    model = trust.admit(uuid.UUID(bytes=bytes(info.aaguid)))
    formats = set(getattr(info, "attestation_formats", None) or ["packed"])
    if not formats - {"none"}:
        raise DeviceError(f"cannot verify this key: {model.name} attests only with \"none\" (getInfo "
                          f"attestationFormats); this key was not written to: set it aside. {_ACCEPT_HOW}")


def verify_genuine(
    attestation_object: bytes,
    client_data_hash: bytes,
    *,
    info_aaguid: uuid.UUID,
    trust: Trust,
) -> str:
    """Raise DeviceError("not genuine …") unless the attestation proves a genuine, catalogued key;
    return the id of the anchor the chain ended in."""
    att = AttestationObject(attestation_object)
    if att.fmt == "none":
        raise DeviceError(f"{NOT_GENUINE} (attestation \"none\": the key did not say who made it; {_ACCEPT_HOW})")
    auth_aaguid = uuid.UUID(bytes=bytes(att.auth_data.credential_data.aaguid))
    if auth_aaguid != info_aaguid:
        raise DeviceError(f"{NOT_GENUINE} (AAGUID mismatch: authData {auth_aaguid}, getInfo {info_aaguid})")
    x5c_der = att.att_stmt.get("x5c") or []
    if not x5c_der:
        raise DeviceError(f"{NOT_GENUINE} (self attestation: signed by the new credential's own key, it proves "
                          f"only that the key holds that credential, not who made it; {_ACCEPT_HOW})")
    try:
        cert_aaguid = certificate_aaguid(x509.load_der_x509_certificate(x5c_der[0]))
    except ValueError:
        raise DeviceError(f"{NOT_GENUINE} (its attestation certificate does not parse, or its AAGUID extension is malformed)") from None
    if cert_aaguid is not None and cert_aaguid != auth_aaguid:
        raise DeviceError(f"{NOT_GENUINE} (AAGUID mismatch: certificate {cert_aaguid}, authData {auth_aaguid})")
    try:
        result = Attestation.for_type(att.fmt)().verify(att.att_stmt, att.auth_data, client_data_hash)
    except (InvalidAttestation, UnsupportedType, InvalidSignature, ValueError) as exc:
        raise DeviceError(f"{NOT_GENUINE} (its {att.fmt} attestation does not verify)") from exc
    trust.admit(auth_aaguid)  # catalogued, not revoked, has an anchor (as before the first write)
    x5c = [x509.load_der_x509_certificate(der) for der in result.trust_path]
    anchor, chain = trust.build_chain(x5c, auth_aaguid)
    status = trust.refusal(auth_aaguid, chain)
    if status:
        raise DeviceError(f"{NOT_GENUINE} (the FIDO Metadata Service reports {status} for a certificate of its chain)")
    return anchor.id

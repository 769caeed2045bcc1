"""Where the private keys are used: the one small interface between the wire protocol and a key.

A station does two things with private keys, and only these two (PROTOCOL.md §2, §3):
- **decrypt** a request JWE with the transport key its header names (ECDH-ES+A256KW, A256GCM);
- **sign** a response payload with its newest active signing key (ES384, compact JWS).

`KeyBackend` is that interface. `jose.open_request` and `jose.seal_response` call nothing else
on a key, so a hardware backend (a PKCS#11 token doing the ECDH derivation and the ECDSA
signature on the token, with the key never leaving it) implements these four members and
drops in for the file key store (`station.protocol.keys.KeyStore`, which implements them on
jwcrypto JWKs read from 0600 files).

The service holds no backend at all: it checks `kid`s against the published public keys
(`PublicKeys`: `check_transport_kid` and `jwks`), which both the key store and
`keys.PublishedKeys` (the exported JWKS file the service runs on) implement.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from jwcrypto.common import JWException
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS

KEY_ALG = "ECDH-ES+A256KW"
CONTENT_ENC = "A256GCM"
SIGNING_ALG = "ES384"


@runtime_checkable
class PublicKeys(Protocol):
    """What the service's door needs: the published sets and a check of a request's `kid`."""

    def jwks(self, kind: str) -> dict:
        """The public JWKS of `kind` ("transport" or "signing")."""

    def check_transport_kid(self, kid: str) -> None:
        """Raise DecryptFailed unless `kid` names a published, active transport key."""


@runtime_checkable
class KeyBackend(PublicKeys, Protocol):
    """A station's private-key operations (file store today, PKCS#11 later)."""

    def decrypt(self, compact: str, *, kid: str, max_plaintext: int) -> bytes:
        """The plaintext of a compact request JWE, decrypted with transport key `kid`.
        Raises DecryptFailed for any failure (the caller has checked the header already)."""

    def sign(self, payload: bytes) -> str:
        """`payload` as a compact ES384 JWS with protected header
        `{"alg": "ES384", "kid": <signing kid>, "typ": "JOSE"}`."""


def jwe_decrypt(compact: str, key: JWK, *, max_plaintext: int) -> bytes:
    """jwcrypto decryption restricted to ECDH-ES+A256KW / A256GCM; ValueError on any failure."""
    token = JWE(algs=[KEY_ALG, CONTENT_ENC])
    try:
        token.deserialize(compact)
        token.decrypt(key, max_plaintext=max_plaintext)
    except (JWException, ValueError, TypeError) as exc:
        raise ValueError("the JWE does not decrypt with the named key") from exc
    return token.payload


def jws_sign(payload: bytes, key: JWK) -> str:
    """A compact ES384 JWS of `payload` under `key` (its `kid` in the protected header)."""
    jws = JWS(payload)
    jws.add_signature(key, alg=SIGNING_ALG, protected={"alg": SIGNING_ALG, "kid": key["kid"], "typ": "JOSE"})
    return jws.serialize(compact=True)

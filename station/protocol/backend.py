"""Where the private keys are used: the one small interface between the wire protocol and a key.

A station does two things with private keys, and only these two (PROTOCOL.md §2, §3):
- **decrypt** a request JWE with the transport key its header names (ECDH-ES+A256KW, A256GCM);
- **sign** a response payload with its newest active signing key (ES384, compact JWS).

`KeyBackend` is that interface. `jose.open_request` and `jose.seal_response` call nothing else
on a key, so a hardware backend (a PKCS#11 token doing the ECDH derivation and the ECDSA
signature on the token, with the key never leaving it) implements these four members and
drops in for the file key store (`station.protocol.keys.KeyStore`, which keeps its keys as
jwcrypto JWKs in 0600 files and does the two operations with joserfc, on key objects built once
per key load).

Two JOSE libraries, one per side, each doing the whole of its side's work: the station's
operations (`station_decrypt`, `station_sign`, and `jose.seal_response`'s encryption) run on
joserfc, chosen by the numbers (scripts/jose_compare.py: its ES384 signature and its JWE
encryption to a P-384 key cost less above the `cryptography` floor than jwcrypto's); the customer
side (`jose.seal_request`, `jose.open_response`) and the key files stay on jwcrypto. Every
request and response the tests pass between the two sides is thus read by the other library.

The service holds no backend at all: it checks `kid`s against the published public keys
(`PublicKeys`: `check_transport_kid` and `jwks`), which both the key store and
`keys.PublishedKeys` (the exported JWKS file the service runs on) implement.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from joserfc import jwe as rfc_jwe
from joserfc import jws as rfc_jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
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


def operation_key(key: JWK | dict) -> ECKey:
    """The joserfc key object of a jwcrypto JWK (or a JWK dict), private part included: built
    once per key and kept by its holder."""
    members = key.export(as_dict=True, private_key=key.has_private) if isinstance(key, JWK) else dict(key)
    return ECKey.import_key(members)


def station_decrypt(compact: str, key: ECKey, *, max_plaintext: int) -> bytes:
    """joserfc decryption restricted to ECDH-ES+A256KW / A256GCM; ValueError on any failure,
    a plaintext longer than `max_plaintext` included."""
    try:
        plaintext = rfc_jwe.decrypt_compact(compact, key, algorithms=[KEY_ALG, CONTENT_ENC]).plaintext
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError("the JWE does not decrypt with the named key") from exc
    if len(plaintext) > max_plaintext:
        raise ValueError("the JWE plaintext is longer than allowed")
    return plaintext


def station_sign(payload: bytes, key: ECKey, kid: str) -> str:
    """A compact ES384 JWS of `payload` under `key`, protected header
    `{"alg": "ES384", "kid": kid, "typ": "JOSE"}` (joserfc)."""
    return rfc_jws.serialize_compact({"alg": SIGNING_ALG, "kid": kid, "typ": "JOSE"}, payload, key,
                                     algorithms=[SIGNING_ALG])


def station_encrypt(plaintext: bytes, recipient: ECKey, extra_header: dict) -> str:
    """A compact JWE of `plaintext` to the public key `recipient`, ECDH-ES+A256KW / A256GCM,
    `extra_header` added to the protected header (joserfc)."""
    header = {"alg": KEY_ALG, "enc": CONTENT_ENC, **extra_header}
    return rfc_jwe.encrypt_compact(header, plaintext, recipient, algorithms=[KEY_ALG, CONTENT_ENC])


def jwe_decrypt(compact: str, key: JWK, *, max_plaintext: int) -> bytes:
    """jwcrypto decryption restricted to ECDH-ES+A256KW / A256GCM (the customer side); ValueError
    on any failure."""
    token = JWE(algs=[KEY_ALG, CONTENT_ENC])
    try:
        token.deserialize(compact)
        token.decrypt(key, max_plaintext=max_plaintext)
    except (JWException, ValueError, TypeError) as exc:
        raise ValueError("the JWE does not decrypt with the named key") from exc
    return token.payload


def jws_sign(payload: bytes, key: JWK) -> str:
    """A compact ES384 JWS of `payload` under `key` (its `kid` in the protected header), with
    jwcrypto (what a customer's own signer would do; the station signs with `station_sign`)."""
    jws = JWS(payload)
    jws.add_signature(key, alg=SIGNING_ALG, protected={"alg": SIGNING_ALG, "kid": key["kid"], "typ": "JOSE"})
    return jws.serialize(compact=True)

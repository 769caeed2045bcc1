"""JOSE of the wire protocol (PROTOCOL.md §2 requests, §3 responses): the station's side on
joserfc, the customer's on jwcrypto (station.protocol.backend says why).

Station side: `check_request_header` (the service's door), `open_request`, `seal_response`.
Customer side: `seal_request`, `open_response`. Both: `request_digest`.

Only `ECDH-ES+A256KW` with `A256GCM` is ever accepted, and each library is told so (`algs=`,
`algorithms=`); the header and its `epk` are checked here before a library sees a byte of the
token.

Canonical encodings only: every part of a compact JWE must be base64url exactly as RFC 7515 §2
writes it (url-safe alphabet, no padding, the spare bits of the last character zero), so that one
token has one spelling. Base64url decoders ignore the spare bits: without this check one request
re-encoded would give many strings of the same content. The replay key (`content_digest`) is
taken over the decoded bytes of the five parts, never over the string.

The private-key operations go through `backend.KeyBackend` (`decrypt`, `sign`); the door needs
only `backend.PublicKeys` (`check_transport_kid`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone

from fido2.utils import websafe_encode
from jwcrypto.common import JWException
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK, JWKSet
from jwcrypto.jws import JWS
from pydantic import BaseModel

from station.errors import DecryptFailed, Expired, InvalidRequest, StationError
from station.protocol.backend import (
    CONTENT_ENC,
    KEY_ALG,
    SIGNING_ALG,
    KeyBackend,
    PublicKeys,
    jwe_decrypt,
    station_encrypt,
)
from station.protocol.messages import (
    MAX_JWE_CHARS,
    CredentialRequest,
    CredentialResponse,
    PinRequest,
    PinResponse,
    ResponseKey,
    decode_b64u_canonical,
    parse_request_payload,
    parse_response_payload,
    public_key_p384,
)

MAX_RESPONSE_CHARS = 1024 * 1024
"""A response carries an attestation certificate chain; it is bounded more loosely."""


class ResponseRejected(StationError):
    """The customer side refuses a response: it does not decrypt, verify or match its request."""

    code = "response_rejected"


class NotCompactJws(ResponseRejected):
    """The response's inner JWS is not one compact serialization (three canonical base64url
    parts): PROTOCOL.md §3 allows nothing else, JSON serializations (flattened or general, with
    several signatures) included."""

    code = "response_not_compact_jws"


# -- both sides ------------------------------------------------------------------------------


def request_digest(compact: str) -> str:
    """`requestDigest`: b64u(SHA-256(ASCII bytes of the request's compact JWE)) (§3)."""
    try:
        data = compact.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidRequest("a compact JWE is ASCII only") from None
    return websafe_encode(hashlib.sha256(data).digest())


def content_digest(compact: str) -> str:
    """The replay key of a request JWE: b64u(SHA-256) over its five decoded parts, each
    preceded by its length (8 bytes, big-endian). Two spellings of one token, were any
    accepted, would have the same content digest. InvalidRequest when it is no compact JWE."""
    parts = compact.split(".") if isinstance(compact, str) else []
    if len(parts) != 5:
        raise InvalidRequest("not a compact JWE (five parts expected)")
    digest = hashlib.sha256()
    for part in parts:
        try:
            raw = decode_b64u_canonical(part)
        except ValueError:
            raise DecryptFailed("a part of the JWE is not canonical base64url") from None
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
    return websafe_encode(digest.digest())


def replay_keys(request_ids: list[str], jwes: list[str]) -> list[str]:
    """What a station remembers of an item to refuse it again: each requestId and each
    request's content digest (as `content:<digest>`, which no requestId spells)."""
    return [*request_ids, *(f"content:{content_digest(jwe)}" for jwe in jwes)]


def _split_header(
    compact: str, max_chars: int, error: type[StationError], oversize: type[StationError]
) -> dict:
    """The protected header of a compact JWE (five b64u parts), as a JSON object."""
    if not isinstance(compact, str):
        raise error("a compact JWE must be text")
    if len(compact) > max_chars:
        raise oversize(f"the JWE is longer than {max_chars} characters")
    parts = compact.split(".")
    if len(parts) != 5:
        raise error("not a compact JWE (five parts expected)")
    names = ("protected header", "encrypted key", "initialization vector", "ciphertext", "tag")
    for name, part in zip(names, parts):
        try:
            decode_b64u_canonical(part)
        except ValueError:
            raise error(f"the JWE {name} is not canonical base64url (alphabet, no padding, zero spare bits)") from None
    try:
        header = json.loads(decode_b64u_canonical(parts[0]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise error("the JWE protected header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise error("the JWE protected header is not a JSON object")
    return header


def _check_algorithms(header: dict, error: type[StationError]) -> None:
    """Only ECDH-ES+A256KW / A256GCM, no compression, no critical extensions, a P-384 `epk`."""
    if header.get("alg") != KEY_ALG or header.get("enc") != CONTENT_ENC:
        raise error(f"only alg {KEY_ALG} with enc {CONTENT_ENC} is accepted")
    if "zip" in header or "crit" in header:
        raise error("compressed or critical-extension JWEs are not accepted")
    epk = header.get("epk")
    if not isinstance(epk, dict) or epk.get("kty") != "EC" or epk.get("crv") != "P-384":
        raise error("the epk is not an EC P-384 key")
    if "d" in epk:
        raise error("the epk carries a private member")
    try:
        public_key_p384(epk.get("x"), epk.get("y"))
    except ValueError:
        raise error("the epk is not a valid P-384 point") from None


def _decrypt(compact: str, key: JWK, max_plaintext: int, error: type[StationError]) -> bytes:
    """jwcrypto decryption restricted to ECDH-ES+A256KW / A256GCM."""
    try:
        return jwe_decrypt(compact, key, max_plaintext=max_plaintext)
    except ValueError:
        raise error("the JWE does not decrypt with the named key") from None


# -- station side ----------------------------------------------------------------------------


def check_request_header(compact: str, *, keystore: PublicKeys) -> dict:
    """The door check of a request JWE without decrypting it (§4): returns its header.

    Raises InvalidRequest when it is oversized, DecryptFailed when its form, `alg`/`enc`,
    `kid` (held and active) or `epk` (a valid P-384 point) is wrong.
    """
    header = _split_header(compact, MAX_JWE_CHARS, DecryptFailed, InvalidRequest)
    _check_algorithms(header, DecryptFailed)
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise DecryptFailed("the JWE header names no kid")
    keystore.check_transport_kid(kid)
    return header


def open_request(
    compact: str, *, keystore: KeyBackend, now: datetime | None = None
) -> PinRequest | CredentialRequest:
    """A request JWE (§2) → its validated payload.

    Raises DecryptFailed (form, alg/enc, kid, epk, tampering, truncation), InvalidRequest
    (oversized, plaintext not a JSON object, payload invalid) or Expired (`notAfter` passed).
    """
    header = check_request_header(compact, keystore=keystore)
    payload = parse_request_payload(keystore.decrypt(compact, kid=header["kid"], max_plaintext=MAX_JWE_CHARS))
    now = now or datetime.now(timezone.utc)
    if isinstance(payload, CredentialRequest) and payload.is_expired(now):
        raise Expired(f"credential request {payload.request_id} passed its notAfter")
    return payload


def inspect_request(compact: str, *, keystore: KeyBackend, now: datetime | None = None) -> dict:
    """`station inspect`: the JWE header and the validated payload, as JSON-ready data."""
    payload = open_request(compact, keystore=keystore, now=now)
    return {
        "header": check_request_header(compact, keystore=keystore),
        "payload": payload.model_dump(mode="json", exclude_none=True),
    }


def seal_response(
    payload: PinResponse | CredentialResponse,
    *,
    response_key: ResponseKey | dict,
    keystore: KeyBackend,
) -> str:
    """A response payload → ES384 JWS (signing key's kid), nested in a JWE to `responseKey`
    with `cty` "JWS" (§3)."""
    if isinstance(response_key, dict):
        response_key = ResponseKey.model_validate(response_key)
    return station_encrypt(
        keystore.sign(payload.to_json_bytes()).encode("ascii"),
        response_key.operation_key(),
        {"kid": response_key.kid, "cty": "JWS"},
    )


def _encrypt(plaintext: bytes, recipient: JWK, extra_header: dict) -> str:
    header = {"alg": KEY_ALG, "enc": CONTENT_ENC, **extra_header}
    token = JWE(plaintext, protected=header, algs=[KEY_ALG, CONTENT_ENC])
    token.add_recipient(recipient)
    return token.serialize(compact=True)


# -- customer side ---------------------------------------------------------------------------


def seal_request(
    payload: PinRequest | CredentialRequest | dict, *, transport_jwk: JWK | dict, kid: str
) -> str:
    """A request payload → compact JWE to the factory transport key `kid` (§2)."""
    if isinstance(transport_jwk, dict):
        transport_jwk = JWK(**transport_jwk)
    if isinstance(payload, BaseModel):
        plaintext = payload.to_json_bytes()
    else:
        plaintext = json.dumps(payload).encode("utf-8")
    return _encrypt(plaintext, transport_jwk, {"kid": kid})


def open_response(
    compact: str, *, response_private_key: JWK, signing_jwks: dict, request_jwe: str
) -> PinResponse | CredentialResponse:
    """The customer's check of a response (§3): decrypt with its response key, verify the
    JWS against the factory's signing JWKS by `kid`, match `requestDigest` to the request it
    sent. Any failure raises ResponseRejected.
    """
    header = _split_header(compact, MAX_RESPONSE_CHARS, ResponseRejected, ResponseRejected)
    _check_algorithms(header, ResponseRejected)
    if header.get("cty") != "JWS":
        raise ResponseRejected("the response JWE does not carry a JWS (cty)")
    if "kid" in response_private_key and header.get("kid") != response_private_key["kid"]:
        raise ResponseRejected("the response is not sealed to this response key")
    jws_compact = _decrypt(compact, response_private_key, MAX_RESPONSE_CHARS, ResponseRejected)
    payload = _parse_response(_verify(jws_compact, signing_jwks))
    expected = request_digest(request_jwe)
    if not hmac.compare_digest(payload.request_digest, expected):
        raise ResponseRejected("requestDigest does not match the request sent")
    return payload


def _check_compact_jws(jws_compact: bytes) -> None:
    """NotCompactJws unless `jws_compact` is ASCII `header.payload.signature`, each part canonical
    base64url, the header a JSON object (checked before jwcrypto, which also takes JSON forms)."""
    try:
        text = jws_compact.decode("ascii")
    except UnicodeDecodeError:
        raise NotCompactJws("the inner JWS is not ASCII: not a compact serialization") from None
    parts = text.split(".")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise NotCompactJws("the inner JWS is not a compact serialization (header.payload.signature)")
    try:
        for part in parts:
            decode_b64u_canonical(part)
        header = json.loads(decode_b64u_canonical(parts[0]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise NotCompactJws("the inner JWS parts are not canonical base64url / a JSON header") from None
    if not isinstance(header, dict):
        raise NotCompactJws("the inner JWS header is not a JSON object")


def _verify(jws_compact: bytes, signing_jwks: dict) -> bytes:
    """The payload of an ES384 compact JWS whose `kid` names a key of `signing_jwks`."""
    _check_compact_jws(jws_compact)
    token = JWS()
    try:
        token.deserialize(jws_compact.decode("ascii"))
        header = token.jose_header
        keyset = JWKSet.from_json(json.dumps(signing_jwks))
    except (JWException, ValueError, TypeError, UnicodeDecodeError):
        raise ResponseRejected("the response does not hold a well-formed JWS") from None
    if header.get("alg") != SIGNING_ALG:
        raise ResponseRejected(f"the response is not signed with {SIGNING_ALG}")
    key = keyset.get_key(header["kid"]) if isinstance(header.get("kid"), str) else None
    if key is None:
        raise ResponseRejected("the response names a signing key not in the signing JWKS")
    try:
        token.verify(key, alg=SIGNING_ALG)
    except (JWException, ValueError, TypeError):
        raise ResponseRejected("the response signature does not verify") from None
    return token.payload


def _parse_response(data: bytes) -> PinResponse | CredentialResponse:
    """A verified response payload → its model, or ResponseRejected."""
    try:
        return parse_response_payload(data)
    except ValueError as exc:
        raise ResponseRejected(str(exc)) from None


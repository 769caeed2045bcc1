"""station.protocol.jose: round trips and every refusal of PROTOCOL.md §2–§3."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import datetime, timezone

import pytest
from fido2.utils import websafe_decode, websafe_encode
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS
from pydantic import ValidationError

from station.errors import DecryptFailed, Expired, InvalidRequest, StationError
from station.protocol.jose import (
    ResponseRejected,
    check_request_header,
    inspect_request,
    open_request,
    open_response,
    request_digest,
    seal_request,
    seal_response,
)
from station.protocol.keys import KeyStore
from station.protocol.messages import CredentialRequest, CredentialResponse, PinRequest, PinResponse

ALL_ALGS = [
    "RSA-OAEP", "A256KW", "dir", "ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A256KW",
    "A128GCM", "A256GCM", "A256CBC-HS512",
]  # fmt: skip
AAGUID = "ee882879-721c-4913-9775-3dfcce97072a"


def _jwe(plaintext: bytes, key: JWK, header: dict) -> str:
    """A JWE made by jwcrypto with any algorithm, as a careless or hostile customer would."""
    token = JWE(plaintext, protected=header, algs=ALL_ALGS)
    token.add_recipient(key)
    return token.serialize(compact=True)


def _parts(compact: str) -> list[str]:
    return compact.split(".")


def _with_header(compact: str, header: dict) -> str:
    parts = _parts(compact)
    parts[0] = websafe_encode(json.dumps(header).encode())
    return ".".join(parts)


def _header(compact: str) -> dict:
    return json.loads(websafe_decode(_parts(compact)[0]))


def _flip(part: str) -> str:
    raw = bytearray(websafe_decode(part))
    raw[len(raw) // 2] ^= 0x01
    return websafe_encode(bytes(raw))


def _response(request_jwe: str, **change):
    base = dict(
        version=1,
        request_id="r1",
        request_digest=request_digest(request_jwe),
        serial_number="31337",
        firmware_version="5.7.1",
        aaguid=AAGUID,
        issued_at=int(time.time()),
        pin="482915",
        force_pin_change=True,
    )
    return PinResponse(**{**base, **change})


@pytest.fixture
def sealed_pin(pin_request, transport_jwk) -> str:
    return seal_request(pin_request, transport_jwk=transport_jwk, kid=transport_jwk["kid"])


# -- round trips -----------------------------------------------------------------------------


def test_pin_request_round_trip(keystore, transport_jwk, pin_request, sealed_pin):
    opened = open_request(sealed_pin, keystore=keystore)
    assert isinstance(opened, PinRequest)
    assert opened == PinRequest.model_validate(pin_request)


def test_credential_request_round_trip_graph_and_okta(keystore, transport_jwk, credential_request):
    model = CredentialRequest.model_validate_json(json.dumps(credential_request))
    compact = seal_request(model, transport_jwk=JWK(**transport_jwk), kid=transport_jwk["kid"])
    opened = open_request(compact, keystore=keystore)
    assert isinstance(opened, CredentialRequest) and opened == model
    assert opened.public_key.challenge == credential_request["publicKey"]["challenge"]


def test_request_header_is_what_protocol_md_fixes(keystore, transport_jwk, sealed_pin):
    header = check_request_header(sealed_pin, keystore=keystore)
    assert header["alg"] == "ECDH-ES+A256KW" and header["enc"] == "A256GCM"
    assert header["kid"] == transport_jwk["kid"]
    assert header["epk"]["crv"] == "P-384" and "d" not in header["epk"]


def test_a_request_sealed_by_plain_jwcrypto_opens(keystore, transport_jwk, pin_request):
    """Any implementation following PROTOCOL.md, here jwcrypto with `cty` json."""
    header = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": transport_jwk["kid"], "cty": "json"}
    compact = _jwe(json.dumps(pin_request).encode(), JWK(**transport_jwk), header)
    assert open_request(compact, keystore=keystore).request_id == pin_request["requestId"]


def test_a_rotated_key_opens_alongside_the_old_one(tmp_path, pin_request):
    store = KeyStore.init(tmp_path / "keys")
    old = store.jwks("transport")["keys"][0]
    new_kid = store.rotate("transport")
    new = next(k for k in store.jwks("transport")["keys"] if k["kid"] == new_kid)
    for key in (old, new):
        assert open_request(seal_request(pin_request, transport_jwk=key, kid=key["kid"]), keystore=store)


def test_inspect_request_gives_header_and_payload(keystore, sealed_pin, pin_request):
    shown = inspect_request(sealed_pin, keystore=keystore)
    assert shown["header"]["alg"] == "ECDH-ES+A256KW"
    assert shown["payload"]["requestId"] == pin_request["requestId"]
    assert shown["payload"]["minPINLength"] == 6
    json.dumps(shown)


def test_response_round_trip(keystore, sealed_pin, response_key, response_private_key):
    response = _response(sealed_pin)
    sealed = seal_response(response, response_key=response_key, keystore=keystore)
    opened = open_response(
        sealed,
        response_private_key=response_private_key,
        signing_jwks=keystore.jwks("signing"),
        request_jwe=sealed_pin,
    )
    assert opened == response and opened.pin == "482915"


def test_credential_response_round_trip(keystore, sealed_pin, response_key, response_private_key):
    body = _response(sealed_pin).model_dump(exclude={"pin", "force_pin_change"})
    body["credential"] = {
        "id": "AQID",
        "rawId": "AQID",
        "type": "public-key",
        "response": {"clientDataJSON": "e30", "attestationObject": "oA", "transports": ["usb"]},
    }
    response = CredentialResponse.model_validate(body)
    sealed = seal_response(response, response_key=response_key, keystore=keystore)
    opened = open_response(
        sealed,
        response_private_key=response_private_key,
        signing_jwks=keystore.jwks("signing"),
        request_jwe=sealed_pin,
    )
    assert opened == response


def test_response_envelopes_are_what_protocol_md_fixes(keystore, sealed_pin, response_key, response_private_key):
    sealed = seal_response(_response(sealed_pin), response_key=response_key, keystore=keystore)
    outer = _header(sealed)
    assert (outer["alg"], outer["enc"], outer["cty"]) == ("ECDH-ES+A256KW", "A256GCM", "JWS")
    assert outer["kid"] == response_key["kid"] and outer["epk"]["crv"] == "P-384"
    token = JWE(algs=["ECDH-ES+A256KW", "A256GCM"])
    token.deserialize(sealed, key=response_private_key)
    jws = JWS()
    jws.deserialize(token.payload.decode())
    assert jws.jose_header == {"alg": "ES384", "kid": keystore.signing_kid, "typ": "JOSE"}
    jws.verify(keystore.signing_key(), alg="ES384")
    assert json.loads(jws.payload)["pin"] == "482915"


def test_request_digest_is_b64u_sha256_of_the_ascii_token():
    expected = base64.urlsafe_b64encode(hashlib.sha256(b"a.b.c.d.e").digest()).rstrip(b"=").decode()
    assert request_digest("a.b.c.d.e") == expected
    with pytest.raises(InvalidRequest):
        request_digest("a.b.c.d.é")


# -- request refusals ------------------------------------------------------------------------


def _sym(kid: str) -> tuple[JWK, dict]:
    return JWK.generate(kty="oct", size=256), {"kid": kid}


@pytest.mark.parametrize(
    "alg, enc",
    [
        ("dir", "A256GCM"),
        ("A256KW", "A256GCM"),
        ("ECDH-ES", "A256GCM"),
        ("ECDH-ES+A128KW", "A256GCM"),
        ("ECDH-ES+A256KW", "A128GCM"),
        ("ECDH-ES+A256KW", "A256CBC-HS512"),
    ],
)
def test_other_algorithms_are_refused(keystore, transport_jwk, pin_request, alg, enc):
    if alg.startswith("ECDH"):
        key = JWK(**transport_jwk)
    else:
        key = JWK.generate(kty="oct", size=256)
    header = {"alg": alg, "enc": enc, "kid": transport_jwk["kid"]}
    compact = _jwe(json.dumps(pin_request).encode(), key, header)
    with pytest.raises(DecryptFailed, match="only alg"):
        open_request(compact, keystore=keystore)
    with pytest.raises(DecryptFailed):
        check_request_header(compact, keystore=keystore)


def test_rsa_oaep_is_refused(keystore, transport_jwk, pin_request):
    rsa = JWK.generate(kty="RSA", size=2048)
    header = {"alg": "RSA-OAEP", "enc": "A256GCM", "kid": transport_jwk["kid"]}
    compact = _jwe(json.dumps(pin_request).encode(), rsa, header)
    with pytest.raises(DecryptFailed):
        open_request(compact, keystore=keystore)


def test_alg_none_is_refused(keystore, transport_jwk, sealed_pin):
    header = {"alg": "none", "enc": "A256GCM", "kid": transport_jwk["kid"]}
    parts = _parts(_with_header(sealed_pin, header))
    parts[1] = ""
    with pytest.raises(DecryptFailed):
        open_request(".".join(parts), keystore=keystore)


def test_unknown_kid_is_refused(keystore, transport_jwk, pin_request):
    compact = seal_request(pin_request, transport_jwk=transport_jwk, kid="transport-unknown")
    with pytest.raises(DecryptFailed, match="does not hold"):
        open_request(compact, keystore=keystore)


def test_missing_kid_is_refused(keystore, transport_jwk, sealed_pin):
    header = _header(sealed_pin)
    del header["kid"]
    with pytest.raises(DecryptFailed, match="kid"):
        open_request(_with_header(sealed_pin, header), keystore=keystore)


def test_retired_kid_is_refused(tmp_path, pin_request):
    store = KeyStore.init(tmp_path / "keys")
    old = store.jwks("transport")["keys"][0]
    compact = seal_request(pin_request, transport_jwk=old, kid=old["kid"])
    store.rotate("transport")
    store.retire(old["kid"])
    with pytest.raises(DecryptFailed, match="retired"):
        open_request(compact, keystore=KeyStore.open(store.path))


def test_a_p256_epk_is_refused(keystore, transport_jwk, pin_request):
    p256 = JWK.generate(kty="EC", crv="P-256")
    header = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": transport_jwk["kid"]}
    compact = _jwe(json.dumps(pin_request).encode(), p256, header)
    assert _header(compact)["epk"]["crv"] == "P-256"
    with pytest.raises(DecryptFailed, match="P-384"):
        open_request(compact, keystore=keystore)


@pytest.mark.parametrize("coordinate", ["x", "y"])
def test_an_off_curve_epk_is_refused(keystore, sealed_pin, coordinate):
    header = _header(sealed_pin)
    header["epk"][coordinate] = _flip(header["epk"][coordinate])
    with pytest.raises(DecryptFailed, match="valid P-384 point"):
        open_request(_with_header(sealed_pin, header), keystore=keystore)


@pytest.mark.parametrize(
    "epk",
    [None, "text", {"kty": "OKP", "crv": "X25519", "x": "AAAA"}, {"kty": "EC", "crv": "P-384"}],
)
def test_malformed_epk_is_refused(keystore, sealed_pin, epk):
    header = _header(sealed_pin)
    header["epk"] = epk
    with pytest.raises(DecryptFailed):
        open_request(_with_header(sealed_pin, header), keystore=keystore)


def test_an_epk_with_a_private_member_is_refused(keystore, sealed_pin):
    header = _header(sealed_pin)
    header["epk"]["d"] = "AAAA"
    with pytest.raises(DecryptFailed, match="private"):
        open_request(_with_header(sealed_pin, header), keystore=keystore)


def test_another_valid_epk_does_not_decrypt(keystore, sealed_pin):
    header = _header(sealed_pin)
    header["epk"] = json.loads(JWK.generate(kty="EC", crv="P-384").export_public())
    with pytest.raises(DecryptFailed, match="does not decrypt"):
        open_request(_with_header(sealed_pin, header), keystore=keystore)


@pytest.mark.parametrize("extra", [{"zip": "DEF"}, {"crit": ["exp"], "exp": 1}])
def test_compression_and_critical_headers_are_refused(keystore, sealed_pin, extra):
    header = {**_header(sealed_pin), **extra}
    with pytest.raises(DecryptFailed, match="compressed"):
        open_request(_with_header(sealed_pin, header), keystore=keystore)


def test_a_tampered_header_is_refused(keystore, sealed_pin):
    header = {**_header(sealed_pin), "cty": "json"}
    with pytest.raises(DecryptFailed, match="does not decrypt"):
        open_request(_with_header(sealed_pin, header), keystore=keystore)


@pytest.mark.parametrize("index", [1, 2, 3, 4], ids=["encrypted_key", "iv", "ciphertext", "tag"])
def test_tampered_parts_are_refused(keystore, sealed_pin, index):
    parts = _parts(sealed_pin)
    parts[index] = _flip(parts[index])
    with pytest.raises(DecryptFailed):
        open_request(".".join(parts), keystore=keystore)


@pytest.mark.parametrize("cut", [1, 10, 100, -1, -20])
def test_truncated_tokens_are_refused(keystore, sealed_pin, cut):
    with pytest.raises(DecryptFailed):
        open_request(sealed_pin[:cut], keystore=keystore)


@pytest.mark.parametrize(
    "compact", ["", "....", "a.b.c.d", "a.b.c.d.e.f", "%%%.a.b.c.d", "e30.a.b.c.d", "W10.a.b.c.d"]
)
def test_malformed_tokens_are_refused(keystore, compact):
    with pytest.raises(DecryptFailed):
        open_request(compact, keystore=keystore)


def test_non_text_input_is_refused(keystore, sealed_pin):
    with pytest.raises(DecryptFailed):
        open_request(sealed_pin.encode(), keystore=keystore)


@pytest.mark.parametrize("plaintext", [b"not json", b"\xff\xfe\xfd", b"[1, 2, 3]", b'"a string"', b"42"])
def test_plaintext_that_is_not_a_json_object_is_invalid(keystore, transport_jwk, plaintext):
    header = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": transport_jwk["kid"]}
    compact = _jwe(plaintext, JWK(**transport_jwk), header)
    with pytest.raises(InvalidRequest):
        open_request(compact, keystore=keystore)


@pytest.mark.parametrize("member", ["version", "requestId", "responseKey", "type"])
def test_missing_members_are_invalid(keystore, transport_jwk, pin_request, member):
    del pin_request[member]
    compact = seal_request(pin_request, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    with pytest.raises(InvalidRequest, match="PinRequest"):
        open_request(compact, keystore=keystore)


def test_oversized_input_is_invalid(keystore, sealed_pin):
    with pytest.raises(InvalidRequest, match="longer"):
        open_request(sealed_pin + "A" * (64 * 1024), keystore=keystore)
    with pytest.raises(InvalidRequest, match="longer"):
        check_request_header("A" * (64 * 1024 + 1), keystore=keystore)


def test_oversized_plaintext_is_refused(keystore, transport_jwk, pin_request):
    pin_request["padding"] = "x" * (64 * 1024)
    compact = seal_request(pin_request, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    with pytest.raises(InvalidRequest):
        open_request(compact, keystore=keystore)


def test_expired_credential_request(keystore, transport_jwk, credential_request):
    credential_request["notAfter"] = "2026-01-01T00:00:00Z"
    compact = seal_request(credential_request, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    with pytest.raises(Expired):
        open_request(compact, keystore=keystore, now=datetime(2026, 1, 1, 0, 0, 1, tzinfo=timezone.utc))
    before = datetime(2025, 12, 31, tzinfo=timezone.utc)
    assert open_request(compact, keystore=keystore, now=before).request_id
    with pytest.raises(Expired):
        open_request(compact, keystore=keystore)  # now defaults to the clock


# -- response refusals -----------------------------------------------------------------------


@pytest.fixture
def sealed_response(keystore, sealed_pin, response_key) -> str:
    return seal_response(_response(sealed_pin), response_key=response_key, keystore=keystore)


def _open(sealed, keystore, request_jwe, key, jwks=None):
    return open_response(
        sealed,
        response_private_key=key,
        signing_jwks=jwks if jwks is not None else keystore.jwks("signing"),
        request_jwe=request_jwe,
    )


def test_response_for_another_request_is_rejected(keystore, sealed_response, response_private_key, pin_request, transport_jwk):
    other = seal_request(pin_request, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    with pytest.raises(ResponseRejected, match="requestDigest") as caught:
        _open(sealed_response, keystore, other, response_private_key)
    assert "482915" not in str(caught.value)
    assert caught.value.code == "response_rejected" and isinstance(caught.value, StationError)


def test_response_signed_by_an_unknown_key_is_rejected(keystore, sealed_pin, sealed_response, response_private_key):
    with pytest.raises(ResponseRejected, match="not in the signing JWKS"):
        _open(sealed_response, keystore, sealed_pin, response_private_key, jwks={"keys": []})


def test_response_signed_by_an_impostor_with_the_same_kid_is_rejected(keystore, sealed_pin, sealed_response, response_private_key):
    impostor = JWK.generate(kty="EC", crv="P-384", use="sig", alg="ES384", kid=keystore.signing_kid)
    jwks = {"keys": [json.loads(impostor.export_public())]}
    with pytest.raises(ResponseRejected, match="signature"):
        _open(sealed_response, keystore, sealed_pin, response_private_key, jwks=jwks)


def test_response_for_another_response_key_is_rejected(keystore, sealed_pin, sealed_response):
    other = JWK.generate(kty="EC", crv="P-384", use="enc", kid="another")
    with pytest.raises(ResponseRejected, match="not sealed to this"):
        _open(sealed_response, keystore, sealed_pin, other)
    other_same_kid = JWK.generate(kty="EC", crv="P-384", use="enc", kid=_header(sealed_response)["kid"])
    with pytest.raises(ResponseRejected, match="does not decrypt"):
        _open(sealed_response, keystore, sealed_pin, other_same_kid)


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_tampered_response_is_rejected(keystore, sealed_pin, sealed_response, response_private_key, index):
    parts = _parts(sealed_response)
    parts[index] = _flip(parts[index])
    with pytest.raises(ResponseRejected):
        _open(".".join(parts), keystore, sealed_pin, response_private_key)


def _inner_jws_response(keystore, payload: bytes, response_key: dict, alg="ES384", key=None, header=None):
    key = key or keystore.signing_key()
    jws = JWS(payload)
    jws.add_signature(key, alg=alg, protected=header or {"alg": alg, "kid": key["kid"]})
    return _jwe(
        jws.serialize(compact=True).encode(),
        JWK(**response_key),
        {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": response_key["kid"], "cty": "JWS"},
    )


def test_response_signed_with_another_alg_is_rejected(keystore, sealed_pin, response_key, response_private_key):
    p256 = JWK.generate(kty="EC", crv="P-256", kid=keystore.signing_kid)
    sealed = _inner_jws_response(keystore, _response(sealed_pin).to_json_bytes(), response_key, "ES256", p256)
    with pytest.raises(ResponseRejected, match="ES384"):
        _open(sealed, keystore, sealed_pin, response_private_key)


def test_response_without_cty_jws_is_rejected(keystore, sealed_pin, sealed_response, response_private_key):
    header = _header(sealed_response)
    del header["cty"]
    with pytest.raises(ResponseRejected, match="cty"):
        _open(_with_header(sealed_response, header), keystore, sealed_pin, response_private_key)


def test_response_whose_plaintext_is_not_a_jws_is_rejected(keystore, sealed_pin, response_key, response_private_key):
    sealed = _jwe(
        b"not a jws",
        JWK(**response_key),
        {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": response_key["kid"], "cty": "JWS"},
    )
    with pytest.raises(ResponseRejected, match="not a compact serialization"):
        _open(sealed, keystore, sealed_pin, response_private_key)


def test_response_with_an_invalid_payload_is_rejected_without_echoing_it(keystore, sealed_pin, response_key, response_private_key):
    body = json.loads(_response(sealed_pin).to_json_bytes())
    body["pin"] = "48291x"
    sealed = _inner_jws_response(keystore, json.dumps(body).encode(), response_key)
    with pytest.raises(ResponseRejected, match="pin") as caught:
        _open(sealed, keystore, sealed_pin, response_private_key)
    assert "48291x" not in str(caught.value)


def test_response_refusals_of_form(keystore, sealed_pin, sealed_response, response_private_key):
    for bad in (sealed_response[:50], "x" * (1024 * 1024 + 1), "a.b.c.d.e"):
        with pytest.raises(ResponseRejected):
            _open(bad, keystore, sealed_pin, response_private_key)


def test_seal_response_validates_a_dict_response_key(keystore, sealed_pin, response_private_key):
    private = json.loads(response_private_key.export_private())
    with pytest.raises(ValidationError) as caught:
        seal_response(_response(sealed_pin), response_key=private, keystore=keystore)
    assert "public only" in str(caught.value)

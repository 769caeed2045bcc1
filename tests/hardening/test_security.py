"""Security tests at the system's edges (issue 8, item 5): algorithm confusion on requests (the
service's door and the station) and on responses (the customer), invalid-curve epk, replayed
requestIds on the one-shot fulfill path, oversized payloads, and the failed-token rate limit.
tests/protocol/test_jose.py holds the unit-level refusals; these add what it does not cover."""

from __future__ import annotations

import json

import pytest
from fido2 import cbor
from fido2.ctap import CtapError
from fido2.hid import CTAPHID, TYPE_INIT
from fido2.utils import websafe_decode, websafe_encode
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS

from station.customer.orders import new_response_key, public_response_key, seal_item, shipment_body
from station.errors import DecryptFailed, InvalidRequest
from station.fulfillment.api import FailedTokenLimit
from station.fulfillment.errors import RateLimited
from station.protocol.jose import ResponseRejected, open_request, open_response, seal_response, seal_request
from station.protocol.messages import MAX_JWE_CHARS, PinResponse, ShipmentRequest
from station.provision.genuine import TrustStore
from station.provision.shipment import fulfill_shipment, spec_source
from station.virtual.apdu import FidoApplet
from station.virtual.hid import MAX_MESSAGE_SIZE, VirtualHidDevice

from .conftest import ROOT

OPTIONS = json.loads((ROOT / "fixtures" / "options" / "okta.json").read_text())
ERR = CtapError.ERR


def _pin_payload(response_key: dict, request_id: str = "7c1d3c1e-6a55-4d0e-9e3c-0b1f0c0a5b11") -> dict:
    return {"version": 1, "requestId": request_id, "type": "generate", "length": 6, "responseKey": response_key}


def _compact_jwe(plaintext: bytes, key: JWK, header: dict) -> str:
    token = JWE(plaintext, protected=header)
    token.add_recipient(key)
    return token.serialize(compact=True)


def _with_header(compact: str, header: dict) -> str:
    parts = compact.split(".")
    parts[0] = websafe_encode(json.dumps(header).encode())
    return ".".join(parts)


def _header(compact: str) -> dict:
    return json.loads(websafe_decode(compact.split(".")[0]))


def _body_with(keystore, pin_jwe: str) -> dict:
    item = seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])
    body = shipment_body([item])
    body["shipment_items"][0]["product_customizations"][0]["fido_pin_request"] = pin_jwe
    return body


def _door_and_station_refuse(api, keystore, compact: str) -> None:
    """The service refuses it at the door (400 decrypt_failed) and a station refuses to open it."""
    answer = api.post("/v1/fpr/shipments", api.customer, json=_body_with(keystore, compact))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "decrypt_failed"
    assert answer.json()["error_data"] == {"shipment_item": 0, "member": "fido_pin_request"}
    with pytest.raises(DecryptFailed):
        open_request(compact, keystore=keystore)


# -- algorithm confusion: requests -------------------------------------------------------------


def _request_with_alg(alg: str, transport_jwk: dict) -> str:
    payload = json.dumps(_pin_payload(public_response_key(new_response_key()))).encode()
    kid = transport_jwk["kid"]
    if alg == "ECDH-ES":  # direct key agreement on the real transport key: the right key, wrong alg
        return _compact_jwe(payload, JWK(**transport_jwk), {"alg": "ECDH-ES", "enc": "A256GCM", "kid": kid})
    if alg == "RSA-OAEP-256":
        return _compact_jwe(payload, JWK.generate(kty="RSA", size=2048),
                            {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid})
    if alg == "dir":  # a symmetric key derived from public material an attacker knows
        secret = JWK(kty="oct", k=websafe_encode(websafe_decode(transport_jwk["x"])[:32]))
        return _compact_jwe(payload, secret, {"alg": "dir", "enc": "A256GCM", "kid": kid})
    if alg == "none":
        sealed = seal_request(json.loads(payload), transport_jwk=transport_jwk, kid=kid)
        parts = _with_header(sealed, {"alg": "none", "enc": "A256GCM", "kid": kid}).split(".")
        parts[1] = ""
        return ".".join(parts)
    raise ValueError(alg)


@pytest.mark.parametrize("alg", ["ECDH-ES", "RSA-OAEP-256", "dir", "none"])
def test_request_alg_confusion_is_refused_at_the_door_and_on_the_station(api, keystore, transport_jwk, alg):
    compact = _request_with_alg(alg, transport_jwk)
    assert _header(compact)["alg"] == alg
    _door_and_station_refuse(api, keystore, compact)


# -- invalid-curve epk -------------------------------------------------------------------------

_P384_BYTES = 48


def _epk_variant(kind: str, epk: dict) -> dict:
    if kind == "off-curve":  # a point not on P-384: y + 1
        y = int.from_bytes(websafe_decode(epk["y"]), "big") + 1
        return {**epk, "y": websafe_encode(y.to_bytes(_P384_BYTES, "big"))}
    if kind == "p256":
        return json.loads(JWK.generate(kty="EC", crv="P-256").export_public())
    if kind == "p256-labelled-p384":  # P-256 coordinates claiming to be P-384
        p256 = json.loads(JWK.generate(kty="EC", crv="P-256").export_public())
        return {**p256, "crv": "P-384"}
    if kind == "identity":  # the point at infinity has no affine form; (0, 0) stands in for it
        zero = websafe_encode(b"\x00" * _P384_BYTES)
        return {"kty": "EC", "crv": "P-384", "x": zero, "y": zero}
    if kind == "small-order-x":  # x beyond the field prime
        big = websafe_encode(b"\xff" * _P384_BYTES)
        return {**epk, "x": big}
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["off-curve", "p256", "p256-labelled-p384", "identity", "small-order-x"])
def test_invalid_curve_epk_is_refused_at_the_door_and_on_the_station(api, keystore, transport_jwk, kind):
    sealed = seal_request(_pin_payload(public_response_key(new_response_key())), transport_jwk=transport_jwk,
                          kid=transport_jwk["kid"])
    header = _header(sealed)
    compact = _with_header(sealed, {**header, "epk": _epk_variant(kind, header["epk"])})
    _door_and_station_refuse(api, keystore, compact)


@pytest.mark.parametrize("kind", ["off-curve", "p256", "identity"])
def test_invalid_curve_epk_on_a_response_is_rejected_by_the_customer(keystore, transport_jwk, kind):
    response_key = new_response_key()
    request = seal_request(_pin_payload(public_response_key(response_key)), transport_jwk=transport_jwk,
                           kid=transport_jwk["kid"])
    sealed = seal_response(_pin_response(request), response_key=public_response_key(response_key), keystore=keystore)
    header = _header(sealed)
    forged = _with_header(sealed, {**header, "epk": _epk_variant(kind, header["epk"])})
    with pytest.raises(ResponseRejected, match="epk"):
        open_response(forged, response_private_key=response_key, signing_jwks=keystore.jwks("signing"),
                      request_jwe=request)


# -- algorithm confusion: responses ------------------------------------------------------------


def _pin_response(request_jwe: str) -> PinResponse:
    from station.protocol.jose import request_digest

    return PinResponse.model_validate({
        "version": 1, "requestId": "7c1d3c1e-6a55-4d0e-9e3c-0b1f0c0a5b11", "requestDigest": request_digest(request_jwe),
        "serialNumber": "12345678", "firmwareVersion": "5.7.1", "aaguid": "a25342c0-3cdc-4414-8e46-f4807fca511c",
        "issuedAt": 1_700_000_000, "pin": "482915", "forcePINChange": True,
    })


def _forged_jws(keystore, payload: bytes, alg: str) -> str:
    """A JWS under the factory's signing kid made without its private key."""
    kid = keystore.signing_kid
    public = keystore.jwks("signing")["keys"][0]
    if alg == "HS384":  # the classic: the public key (as JSON and as PEM) used as the HMAC secret
        secret = JWK(kty="oct", k=websafe_encode(JWK(**public).export_to_pem()))
        token = JWS(payload)
        token.add_signature(secret, alg="HS384", protected={"alg": "HS384", "kid": kid, "typ": "JOSE"})
        return token.serialize(compact=True)
    if alg == "ES256":
        token = JWS(payload)
        token.add_signature(JWK.generate(kty="EC", crv="P-256"), alg="ES256",
                            protected={"alg": "ES256", "kid": kid, "typ": "JOSE"})
        return token.serialize(compact=True)
    if alg == "none":
        header = websafe_encode(json.dumps({"alg": "none", "kid": kid, "typ": "JOSE"}).encode())
        return f"{header}.{websafe_encode(payload)}."
    raise ValueError(alg)


@pytest.mark.parametrize("alg", ["HS384", "ES256", "none"])
def test_response_jws_alg_confusion_is_rejected_by_the_customer(keystore, transport_jwk, alg):
    response_key = new_response_key()
    request = seal_request(_pin_payload(public_response_key(response_key)), transport_jwk=transport_jwk,
                           kid=transport_jwk["kid"])
    jws = _forged_jws(keystore, _pin_response(request).to_json_bytes(), alg)
    public = public_response_key(response_key)
    sealed = _compact_jwe(jws.encode(), JWK(**public), {"alg": "ECDH-ES+A256KW", "enc": "A256GCM",
                                                        "kid": public["kid"], "cty": "JWS"})
    with pytest.raises(ResponseRejected, match="ES384|signature|well-formed"):
        open_response(sealed, response_private_key=response_key, signing_jwks=keystore.jwks("signing"),
                      request_jwe=request)


# -- a replayed requestId on the one-shot fulfill path -----------------------------------------


def test_a_requestid_resealed_in_a_second_item_of_one_fulfill_run_is_refused(keystore, tmp_path):
    """`station fulfill` programs one key per item: an item whose requestIds another item of the
    run already used (re-sealed, so the JWEs differ) is refused `invalid_request`, its key untouched.
    (The daemon's path is tests/fulfillment/test_runner.py's replay test.)"""
    jwks = keystore.jwks("transport")
    first = seal_item(transport_jwks=jwks, options=[OPTIONS])
    transport = jwks["keys"][0]
    again = {
        "fido_pin_request": seal_request(open_request(first.pin_request_jwe, keystore=keystore).model_dump(
            mode="json", by_alias=True, exclude_none=True), transport_jwk=transport, kid=transport["kid"]),
        "fido_credential_requests": [seal_request(open_request(jwe, keystore=keystore).model_dump(
            mode="json", by_alias=True, exclude_none=True), transport_jwk=transport, kid=transport["kid"])
            for jwe in first.credential_request_jwes],
    }
    assert again["fido_pin_request"] != first.pin_request_jwe
    body = shipment_body([first, first])
    body["shipment_items"][1]["product_customizations"][0] = again
    steps: list[tuple[int, str]] = []
    result = fulfill_shipment(
        ShipmentRequest.model_validate(body),
        devices=spec_source(f"virtual:{tmp_path}/keys/", profile="yubikey-5-nfc-5.7"),
        keystore=keystore, trust=TrustStore.default(trust_test_ca=True),
        on_step=lambda index, name, data: steps.append((index, name)),
    )
    first_entry, second_entry = (item["product_data"][0] for item in result.output["shipment_items"])
    assert "fido_pin_response" in first_entry
    assert second_entry["error_code"] == InvalidRequest.code
    assert "already" in second_entry["error_message"]
    assert (1, "pin_set") not in steps  # the second key was never written


# -- oversized payloads ------------------------------------------------------------------------


def test_an_oversized_request_jwe_is_refused_at_the_door_and_on_the_station(api, keystore, transport_jwk):
    payload = _pin_payload(public_response_key(new_response_key()))
    payload["padding"] = "x" * MAX_JWE_CHARS  # unknown members are ignored, so only size refuses it
    compact = seal_request(payload, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    assert len(compact) > MAX_JWE_CHARS
    answer = api.post("/v1/fpr/shipments", api.customer, json=_body_with(keystore, compact))
    assert answer.status_code in (400, 413), answer.text
    assert answer.json()["error_code"] in ("invalid_request", "payload_too_large")
    with pytest.raises(InvalidRequest, match="longer than"):
        open_request(compact, keystore=keystore)


def test_an_oversized_shipment_body_is_413_declared_or_streamed(api):
    big = b'{"pad": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    declared = api.client.post("/v1/fpr/shipments", content=big,
                               headers={"Authorization": f"Bearer {api.customer}", "content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error_code"] == "payload_too_large"

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    streamed = api.client.post("/v1/fpr/shipments", content=chunks(),
                               headers={"Authorization": f"Bearer {api.customer}", "content-type": "application/json"})
    assert streamed.status_code == 413


def test_ctap_beyond_max_msg_size_is_request_too_large(authenticator):
    """CTAP 2.1 §6 / §8: a command longer than maxMsgSize is CTAP2_ERR_REQUEST_TOO_LARGE; an empty
    one CTAP1_ERR_INVALID_LENGTH; one that fits is processed."""
    limit = authenticator.profile.max_msg_size
    assert authenticator.process(b"\x04" + cbor.encode({1: b"\x00" * (limit + 10)})) == bytes([ERR.REQUEST_TOO_LARGE])
    assert authenticator.process(b"") == bytes([ERR.INVALID_LENGTH])
    fits = b"\x04" + cbor.encode({1: b"\x00" * (limit - 10)})
    assert len(fits) <= limit and authenticator.process(fits)[0] != ERR.REQUEST_TOO_LARGE


def test_apdu_beyond_max_msg_size_answers_request_too_large(authenticator):
    """Over NFC the oversized CTAP message reaches the authenticator: CTAP2_ERR_REQUEST_TOO_LARGE
    in a 9000 response; chained data past the applet's buffer is ISO 6700."""
    applet = FidoApplet(authenticator)
    applet.apdu(bytes.fromhex("00A4040008A0000006472F0001"))
    request = b"\x04" + cbor.encode({1: b"\x00" * authenticator.profile.max_msg_size})
    extended = bytes.fromhex("80100000") + b"\x00" + len(request).to_bytes(2, "big") + request + b"\x00\x00"
    assert applet.apdu(extended) == bytes([ERR.REQUEST_TOO_LARGE]) + b"\x90\x00"
    block = bytes.fromhex("90100000FF") + b"\x00" * 255
    answers = [applet.apdu(block) for _ in range(FidoApplet.MAX_CHAINED_DATA // 255 + 1)]
    assert answers[-1] == b"\x67\x00"


def test_ctaphid_message_longer_than_the_framing_allows_is_invalid_length(authenticator):
    import struct

    device = VirtualHidDevice(authenticator)
    connection = device.connect()
    try:
        connection.write_packet(struct.pack(">IBH", 0xFFFFFFFF, TYPE_INIT | CTAPHID.INIT, 8).ljust(64, b"\x01"))
        cid = struct.unpack_from(">I", connection.read_packet(timeout=1), 15)[0]
        connection.write_packet(struct.pack(">IBH", cid, TYPE_INIT | CTAPHID.CBOR, MAX_MESSAGE_SIZE + 1).ljust(64, b"\0"))
        answer = connection.read_packet(timeout=1)
        assert struct.unpack_from(">IBHB", answer) == (cid, TYPE_INIT | CTAPHID.ERROR, 1, ERR.INVALID_LENGTH)
    finally:
        connection.close()


# -- cross-tenant access (beyond tests/fulfillment/test_fulfillment_api.py) ---------------------


def test_a_station_token_reads_no_customer_shipment_and_a_customer_cannot_act_as_a_station(api, keystore):
    body = shipment_body([seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])])
    created = api.post("/v1/fpr/shipments", api.customer, json=body).json()["shipment_id"]
    assert api.get(f"/v1/fpr/shipments/{created}", api.station).status_code == 403
    for route in ("claim", "items/1/submit", "items/1/heartbeat", "items/1/release"):
        assert api.post(f"/v1/station/{route}", api.customer, json={}).status_code == 403
    claimed = api.post("/v1/station/claim", api.station).json()
    other_station = api.store.create_token("station", "station-2")
    release = api.post(f"/v1/station/items/{claimed['item_id']}/release", other_station)
    assert release.status_code == 409  # another station's lease is not yours to give back


# -- the failed-token rate limit ---------------------------------------------------------------


def _unknown(api, n: int):
    return [api.get("/v1/fpr/shipments/00000000-0000-4000-8000-000000000000", f"guess-{i}") for i in range(n)]


def test_failed_tokens_past_the_limit_answer_429_with_retry_after(make_api):
    api = make_api(failed_token_limit=3, failed_token_window=60)
    assert [a.status_code for a in _unknown(api, 3)] == [401, 401, 401]
    limited = _unknown(api, 1)[0]
    assert limited.status_code == 429
    assert limited.json()["error_code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # limited: a known token from the same address still passes (issue 17: one station
    # restarting with a wrong token must not lock out the others behind its address)
    assert api.get("/v1/fpr/shipments/00000000-0000-4000-8000-000000000000", api.customer).status_code == 404
    # no token at all is still plain 401; the public JWKS need none
    assert api.get("/v1/fpr/shipments/00000000-0000-4000-8000-000000000000", None).status_code == 401
    assert api.get("/.well-known/transport-keys.jwks", None).status_code == 200


def test_successful_tokens_are_not_counted(make_api):
    api = make_api(failed_token_limit=2, failed_token_window=60)
    for _ in range(20):
        assert api.post("/v1/station/claim", api.station).status_code == 204
    assert [a.status_code for a in _unknown(api, 2)] == [401, 401]
    assert _unknown(api, 1)[0].status_code == 429


def test_the_limit_resets_after_the_window():
    now = [1000.0]
    limit = FailedTokenLimit(2, 60.0, clock=lambda: now[0])
    limit.failed("10.0.0.1")
    now[0] += 30
    limit.failed("10.0.0.1")
    with pytest.raises(RateLimited) as limited:
        limit.check("10.0.0.1")
    assert limited.value.retry_after == 30 and limited.value.status == 429
    limit.check("10.0.0.2")  # another address is not limited
    now[0] += 30  # the first failure leaves the window
    limit.check("10.0.0.1")
    limit.failed("10.0.0.1")
    with pytest.raises(RateLimited):
        limit.check("10.0.0.1")
    now[0] += 61
    limit.check("10.0.0.1")


def test_the_limit_forgets_the_oldest_address_past_its_bound():
    limit = FailedTokenLimit(1, 60.0, max_addresses=2)
    for address in ("a", "b", "c"):
        limit.failed(address)
    limit.check("a")  # forgotten
    with pytest.raises(RateLimited):
        limit.check("c")


@pytest.mark.parametrize("limit, window", [(0, 60.0), (10, 0.0)])
def test_the_limit_needs_positive_parameters(limit, window):
    with pytest.raises(ValueError):
        FailedTokenLimit(limit, window)

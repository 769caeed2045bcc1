"""Canonical JOSE at the door and on the station (issue 17, item 2): one token, one spelling.

A base64url decoder ignores the spare bits of a part's last character, so flipping them gives a
new string of the same bytes: the replay check once hashed the string and let such a re-encoding
through. Now every part must be canonical (refused otherwise, at the door and by `open_request`),
and the replay key is the digest of the decoded bytes."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from fido2.utils import websafe_decode

from station.customer.orders import seal_item, shipment_body
from station.errors import DecryptFailed
from station.fulfillment.store import ReplayedRequest, request_digests
from station.protocol.jose import content_digest, open_request, request_digest
from station.protocol.messages import decode_b64u_canonical

from .conftest import ROOT

OPTIONS = json.loads((ROOT / "fixtures" / "options" / "okta.json").read_text())
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PARTS = ("protected header", "encrypted key", "initialization vector", "ciphertext", "tag")


def respell(part: str) -> str:
    """The same bytes with the spare bits of the last character set (a part of length % 4 in 2, 3)."""
    spare = {2: 0b1111, 3: 0b11}[len(part) % 4]
    index = _ALPHABET.index(part[-1])
    assert index & spare == 0
    respelled = part[:-1] + _ALPHABET[index | 1]
    assert websafe_decode(respelled) == websafe_decode(part)
    return respelled


def respellable(compact: str) -> list[int]:
    return [i for i, p in enumerate(compact.split(".")) if len(p) % 4 in (2, 3)]


def with_part(compact: str, index: int, value: str) -> str:
    parts = compact.split(".")
    parts[index] = value
    return ".".join(parts)


@pytest.fixture
def sealed(keystore):
    """A sealed item whose PIN request has at least one part that can be respelled."""
    for _ in range(50):
        item = seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])
        if respellable(item.pin_request_jwe):
            return item
    raise AssertionError("no respellable part in 50 seals")


def test_canonical_b64u_refuses_spare_bits_padding_and_strangers():
    assert decode_b64u_canonical("AQ") == b"\x01"
    for bad in ("AR", "AQ==", "A+", "A/", "AQ ", "A\nQ", "AQF", "A"):
        with pytest.raises(ValueError):
            decode_b64u_canonical(bad)


def test_a_respelled_request_is_refused_by_the_station_naming_the_part(sealed, keystore):
    compact = sealed.pin_request_jwe
    for index in respellable(compact):
        respelled = with_part(compact, index, respell(compact.split(".")[index]))
        assert request_digest(respelled) != request_digest(compact)  # the same bytes, a new string digest
        with pytest.raises(DecryptFailed):
            content_digest(respelled)  # no replay key for a spelling that is not the one
        with pytest.raises(DecryptFailed, match=PARTS[index]):
            open_request(respelled, keystore=keystore, now=datetime.now(timezone.utc))


@pytest.mark.parametrize("spoil", [lambda p: p + "==", lambda p: p[:-1] + "+" + p[-1:], lambda p: p + "%"])
def test_padding_or_non_alphabet_in_any_part_is_refused_at_the_door(api, sealed, spoil):
    compact = sealed.pin_request_jwe
    for index in range(5):
        part = compact.split(".")[index]
        if not part:
            continue
        body = shipment_body([sealed])
        body["shipment_items"][0]["product_customizations"][0]["fido_pin_request"] = with_part(compact, index, spoil(part))
        refused = api.post("/v1/fpr/shipments", api.customer, json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error_code"] in ("decrypt_failed", "invalid_request")


def test_the_door_refuses_every_respelling_and_the_original_goes_in_once(api, sealed):
    compact = sealed.pin_request_jwe
    for index in respellable(compact):
        body = shipment_body([sealed])
        body["shipment_items"][0]["product_customizations"][0]["fido_pin_request"] = \
            with_part(compact, index, respell(compact.split(".")[index]))
        refused = api.post("/v1/fpr/shipments", api.customer, json=body)
        assert refused.status_code == 400 and refused.json()["error_code"] == "decrypt_failed", refused.text
        assert "not canonical base64url" in refused.json()["error_message"]
        assert refused.json()["error_data"]["member"] == "fido_pin_request"
    assert api.post("/v1/fpr/shipments", api.customer, json=shipment_body([sealed])).status_code == 201
    again = api.post("/v1/fpr/shipments", api.customer, json=shipment_body([sealed]))
    assert again.status_code == 400 and "already received" in again.json()["error_message"]


def test_the_replay_key_is_the_digest_of_the_decoded_bytes(api, sealed):
    assert api.post("/v1/fpr/shipments", api.customer, json=shipment_body([sealed])).status_code == 201
    with api.store.engine.connect() as conn:
        stored = set(conn.execute(request_digests.select()).scalars())
    jwes = [sealed.pin_request_jwe, *sealed.credential_request_jwes]
    assert stored == {content_digest(j) for j in jwes}
    parts = [websafe_decode(p) for p in sealed.pin_request_jwe.split(".")]
    import hashlib

    from fido2.utils import websafe_encode

    framed = b"".join(len(p).to_bytes(8, "big") + p for p in parts)
    assert content_digest(sealed.pin_request_jwe) == websafe_encode(hashlib.sha256(framed).digest())


def test_a_digest_stored_before_the_upgrade_still_refuses_its_replay(api, sealed):
    """Rows written by an older service hold requestDigest (the string's digest)."""
    with api.store.engine.begin() as conn:
        conn.execute(request_digests.insert().values(digest=request_digest(sealed.pin_request_jwe), item_id=0,
                                                     received=0.0))
    with pytest.raises(ReplayedRequest):
        api.store.create_shipment("acme", {}, [_new_item(sealed)])


def _new_item(sealed):
    from station.fulfillment.store import NewItem

    return NewItem(descriptor={}, pin_request=sealed.pin_request_jwe,
                   credential_requests=list(sealed.credential_request_jwes))

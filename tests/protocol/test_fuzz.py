"""Property-based fuzz of open_request: it raises nothing but the project's own errors."""

from __future__ import annotations

import json

from fido2.utils import websafe_decode, websafe_encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from station.errors import StationError
from station.protocol.jose import open_request, seal_request
from station.protocol.messages import CredentialRequest, PinRequest

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
b64u_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=80)


def _opens_or_refuses(compact, keystore):
    """The property: a payload, or a StationError; any other exception fails the test."""
    try:
        result = open_request(compact, keystore=keystore)
    except StationError:
        return None
    assert isinstance(result, (PinRequest, CredentialRequest))
    return result


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text(keystore, text):
    _opens_or_refuses(text, keystore)


@FUZZ
@given(parts=st.lists(b64u_text, min_size=0, max_size=7))
def test_arbitrary_b64u_parts(keystore, parts):
    _opens_or_refuses(".".join(parts), keystore)


@FUZZ
@given(data=st.data())
def test_mutations_of_a_valid_request(keystore, transport_jwk, pin_request, data):
    compact = seal_request(pin_request, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    position = data.draw(st.integers(0, len(compact) - 1))
    operation = data.draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
    char = data.draw(st.sampled_from("Aa0-_.=+/ \x00é"))
    mutated = {
        "replace": compact[:position] + char + compact[position + 1 :],
        "delete": compact[:position] + compact[position + 1 :],
        "insert": compact[:position] + char + compact[position:],
        "truncate": compact[:position],
    }[operation]
    result = _opens_or_refuses(mutated, keystore)
    if result is not None:  # integrity: a mutation that still opens changed no authenticated byte
        assert result == PinRequest.model_validate(pin_request)


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["alg", "enc", "kid", "epk", "zip", "crit", "cty", "apu"]), json_values))
def test_arbitrary_headers_on_a_valid_token(keystore, transport_jwk, pin_request, header):
    compact = seal_request(pin_request, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    original = json.loads(websafe_decode(compact.split(".")[0]))
    parts = compact.split(".")
    parts[0] = websafe_encode(json.dumps({**original, **header}).encode())
    _opens_or_refuses(".".join(parts), keystore)


@FUZZ
@given(payload=json_values)
def test_arbitrary_json_plaintexts(keystore, transport_jwk, payload):
    compact = seal_request(payload, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    _opens_or_refuses(compact, keystore)


@FUZZ
@given(changes=st.dictionaries(
    st.sampled_from(["version", "requestId", "type", "length", "minPINLength", "forcePINChange",
                     "responseKey", "origin", "notAfter", "publicKey"]),
    json_values,
))  # fmt: skip
def test_arbitrary_members_in_a_valid_request(keystore, transport_jwk, pin_request, changes):
    compact = seal_request({**pin_request, **changes}, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    _opens_or_refuses(compact, keystore)

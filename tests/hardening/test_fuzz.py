"""Bounded property-based fuzzing (hypothesis) of every parser that faces untrusted bytes:
open_request (what tests/protocol/test_fuzz.py does not already cover), the virtual
authenticator's CTAP command decoder, its APDU applet, its CTAPHID framer, and the service's
request parsing. The long, coverage-guided run of the same targets is scripts/fuzz_atheris.py.
"""

from __future__ import annotations

import json
import struct

import pytest
from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2.base import Ctap2
from fido2.hid import CTAPHID, TYPE_INIT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK

from station.customer.orders import seal_item, shipment_body
from station.errors import StationError
from station.protocol.jose import open_request, seal_request
from station.virtual.apdu import FidoApplet
from station.virtual.hid import BROADCAST_CID, MAX_MESSAGE_SIZE, PACKET_SIZE, VirtualHidDevice

from .conftest import ROOT

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
OPTIONS = {name: json.loads((ROOT / "fixtures" / "options" / f"{name}.json").read_text()) for name in ("graph", "okta")}

CMD = Ctap2.CMD
ERR = CtapError.ERR

# -- open_request: what tests/protocol/test_fuzz.py leaves out -----------------------------------


def _nested(depth: int, leaf: str = "0") -> str:
    return "[" * depth + leaf + "]" * depth


@FUZZ
@given(depth=st.integers(1, 5000), where=st.sampled_from(["plaintext", "responseKey", "publicKey"]))
def test_open_request_survives_deeply_nested_json(keystore, transport_jwk, depth, where):
    """JSON nested far beyond Python's recursion limit is refused, not a RecursionError."""
    if where == "plaintext":
        plaintext = _nested(depth)
    else:
        plaintext = '{"version": 1, "requestId": "x", "type": "generate", "%s": %s}' % (where, _nested(depth))
    token = JWE(plaintext.encode(), protected={"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": transport_jwk["kid"]})
    token.add_recipient(JWK(**transport_jwk))
    compact = token.serialize(compact=True)
    with pytest.raises(StationError):
        open_request(compact, keystore=keystore)


@FUZZ
@given(data=st.data())
def test_open_request_refuses_or_keeps_mutated_credential_requests(keystore, transport_jwk, data):
    """Byte mutations of a sealed credential request: refused (a StationError), or, when they
    touch no authenticated byte, the very same payload."""
    payload = {"version": 1, "requestId": "0f0d8f0a-fuzz", "responseKey": _RESPONSE_KEY,
               "publicKey": OPTIONS[data.draw(st.sampled_from(sorted(OPTIONS)))]}
    compact = seal_request(payload, transport_jwk=transport_jwk, kid=transport_jwk["kid"])
    start = data.draw(st.integers(0, len(compact)))
    cut = data.draw(st.integers(0, 6))
    insert = data.draw(st.text(alphabet="AZaz09-_.=~é\x00", max_size=4))
    mutated = compact[:start] + insert + compact[start + cut:]
    try:
        opened = open_request(mutated, keystore=keystore)
    except StationError:
        return
    assert opened == open_request(compact, keystore=keystore)


_RESPONSE_KEY = {"kty": "EC", "crv": "P-384", "use": "enc", "kid": "okta-h2r91gconqiai1vs0psg",
                 "x": "ZlRn6wV4vZcmPlzEqOF8Do6l1pZWnTbfWd2WV50oDOcczS1C3gsDsd5jrv2WvVhw",
                 "y": "eRLVySb7TWBa2C7Rq-7DHQQD9sJwuQ66e53sV5IHdjDGRpMrCW4ey8Mf7Ob9Db5Q"}

# -- the CTAP command decoder -----------------------------------------------------------------

_leaf = (st.booleans() | st.integers(-3, 12) | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=80)
         | st.binary(min_size=32, max_size=32) | st.text(max_size=16)
         | st.sampled_from(["public-key", "example.com", "credProtect", "hmac-secret", "rk", "uv", "up",
                            "alg", "type", "id", "name", "displayName", -7, -8, -25, -35]))
cbor_values = st.recursive(
    _leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.integers(-3, 12) | _leaf, c, max_size=5),
    max_leaves=15,
)
_rp = st.fixed_dictionaries({"id": st.sampled_from(["example.com", ""]) | st.text(max_size=5)}, optional={"name": cbor_values})
_user = st.fixed_dictionaries({"id": st.binary(max_size=70)}, optional={"name": cbor_values, "displayName": cbor_values})
_descriptor = st.fixed_dictionaries({"id": st.binary(max_size=80), "type": st.just("public-key")})
_cose = st.fixed_dictionaries({1: st.just(2) | cbor_values, 3: st.just(-25) | cbor_values, -1: st.just(1) | cbor_values,
                               -2: st.binary(min_size=32, max_size=32) | cbor_values,
                               -3: st.binary(min_size=32, max_size=32) | cbor_values})
_maybe = lambda s: s | cbor_values  # noqa: E731  a good-shaped member, or anything

#: Per command, maps whose members have the right keys and mostly the right shapes.
structured_commands = st.one_of(
    st.tuples(st.just(CMD.MAKE_CREDENTIAL), st.fixed_dictionaries(
        {1: _maybe(st.binary(min_size=32, max_size=32)), 2: _maybe(_rp), 3: _maybe(_user),
         4: _maybe(st.lists(st.fixed_dictionaries({"alg": _maybe(st.sampled_from([-7, -8, 1])),
                                                    "type": _maybe(st.just("public-key"))}), max_size=3))},
        optional={5: _maybe(st.lists(_descriptor, max_size=2)),
                  6: st.dictionaries(st.sampled_from(["credProtect", "hmac-secret", "minPinLength", "xx"]), cbor_values),
                  7: st.dictionaries(st.sampled_from(["rk", "uv", "up", "xx"]), cbor_values),
                  8: cbor_values, 9: _maybe(st.sampled_from([1, 2])), 10: cbor_values})),
    st.tuples(st.just(CMD.GET_ASSERTION), st.fixed_dictionaries(
        {1: _maybe(st.sampled_from(["example.com", ""])), 2: _maybe(st.binary(min_size=32, max_size=32))},
        optional={3: _maybe(st.lists(_descriptor, max_size=2)),
                  4: st.dictionaries(st.sampled_from(["hmac-secret", "xx"]),
                                     _maybe(st.fixed_dictionaries({1: _cose, 2: st.binary(max_size=80),
                                                                   3: st.binary(max_size=32), 4: st.sampled_from([1, 2])}))),
                  5: st.dictionaries(st.sampled_from(["rk", "uv", "up"]), cbor_values),
                  6: cbor_values, 7: _maybe(st.sampled_from([1, 2]))})),
    st.tuples(st.just(CMD.CLIENT_PIN), st.fixed_dictionaries(
        {1: _maybe(st.sampled_from([1, 2])), 2: _maybe(st.integers(0, 11))},
        optional={3: _maybe(_cose), 4: cbor_values, 5: _maybe(st.binary(max_size=80)),
                  6: _maybe(st.binary(max_size=80)), 9: _maybe(st.integers(0, 255)), 10: cbor_values})),
    st.tuples(st.sampled_from([CMD.CREDENTIAL_MGMT, CMD.CREDENTIAL_MGMT_PRE, CMD.CONFIG]), st.fixed_dictionaries(
        {1: _maybe(st.integers(0, 10))},
        optional={2: st.dictionaries(st.integers(1, 4), cbor_values | _descriptor | _user),
                  3: _maybe(st.sampled_from([1, 2])), 4: _maybe(st.binary(max_size=32))})),
    st.tuples(st.sampled_from([CMD.GET_INFO, CMD.GET_NEXT_ASSERTION, CMD.SELECTION, 0x00, 0x3F, 0xFF]),
              st.dictionaries(st.integers(0, 12), cbor_values, max_size=6)),
)


def _answers_a_status(key, request: bytes) -> int:
    answer = key.process(request)
    assert isinstance(answer, bytes) and len(answer) >= 1
    if answer[0] == 0 and len(answer) > 1:
        assert isinstance(cbor.decode(answer[1:]), dict)  # success carries a CBOR map
    return answer[0]


@FUZZ
@given(request=st.binary(max_size=1400))
def test_ctap_arbitrary_bytes_always_answer_a_status_byte(authenticator, request):
    _answers_a_status(authenticator, request)


@FUZZ
@given(command=st.sampled_from(list(CMD)) | st.integers(0, 255), tail=st.binary(max_size=200))
def test_ctap_a_command_byte_with_arbitrary_cbor_bytes(authenticator, command, tail):
    _answers_a_status(authenticator, bytes([command]) + tail)


@FUZZ
@given(command=structured_commands)
def test_ctap_structured_maps_of_random_members(authenticator, command):
    code, params = command
    try:
        encoded = cbor.encode(params)
    except ValueError:  # python-fido2 refuses to encode some values (a float): not a request
        return
    _answers_a_status(authenticator, bytes([code]) + encoded)


@pytest.mark.parametrize("request_bytes, status", [
    (b"\x04\xa1\x1a", ERR.INVALID_CBOR),  # a map whose 4-byte length is cut off (was struct.error)
    (b"\x06\xa1\x19\x01", ERR.INVALID_CBOR),  # a 2-byte length cut off
    (b"\x04" + b"\x81" * 1100 + b"\x00", ERR.INVALID_CBOR),  # nesting deep past the limit (was RecursionError)
    (b"\x06" + cbor.encode({1: 2, 2: {}}), ERR.CBOR_UNEXPECTED_TYPE),  # subCommand a map (was TypeError)
    (b"\x0a" + cbor.encode({1: [1]}), ERR.CBOR_UNEXPECTED_TYPE),
    (b"\x0d" + cbor.encode({1: {8: False}}), ERR.CBOR_UNEXPECTED_TYPE),
    (b"\x41" + cbor.encode({1: b"\x01"}), ERR.CBOR_UNEXPECTED_TYPE),
])  # fmt: skip
def test_ctap_crashes_found_by_fuzzing_answer_their_error(authenticator, request_bytes, status):
    assert authenticator.process(request_bytes) == bytes([status])


# -- the APDU applet --------------------------------------------------------------------------

SELECT_FIDO = bytes.fromhex("00A4040008A0000006472F0001")


def _apdu(header: tuple[int, int, int, int], data: bytes, le: bytes) -> bytes:
    if not data:
        return bytes(header) + le
    if len(data) < 256 and len(le) <= 1:
        return bytes(header) + bytes([len(data)]) + data + le
    return bytes(header) + b"\x00" + len(data).to_bytes(2, "big") + data + le[-2:]


structured_apdus = st.builds(
    _apdu,
    st.tuples(st.sampled_from([0x00, 0x80, 0x90, 0x10, 0x84]), st.sampled_from([0xA4, 0x10, 0x11, 0xC0, 0xCA, 0x1D, 0x01, 0x03]),
              st.sampled_from([0x00, 0x04, 0x80, 0x11, 0x9F]), st.sampled_from([0x00, 0x7F])),
    st.binary(max_size=300) | st.sampled_from([b"\x04", bytes.fromhex("A0000006472F0001"), bytes.fromhex("A000000527471117")]),
    st.sampled_from([b"", b"\x00", b"\x00\x00", b"\x10"]),
)


@FUZZ
@given(apdus=st.lists(st.binary(max_size=300) | structured_apdus, min_size=1, max_size=5), select=st.booleans())
def test_apdu_always_answers_a_status_word(authenticator, apdus, select):
    applet = FidoApplet(authenticator)
    if select:
        assert applet.apdu(SELECT_FIDO) == b"U2F_V2\x90\x00"
    for command in apdus:
        answer = applet.apdu(command)
        assert len(answer) >= 2
        sw1 = answer[-2]
        assert sw1 in (0x90, 0x91, 0x61, 0x67, 0x68, 0x69, 0x6A, 0x6D, 0x6E, 0x6F), answer.hex()


# -- the CTAPHID framer -----------------------------------------------------------------------

CTAPHID_COMMANDS = [TYPE_INIT | c for c in (CTAPHID.INIT, CTAPHID.PING, CTAPHID.CBOR, CTAPHID.WINK, CTAPHID.CANCEL,
                                            CTAPHID.MSG, CTAPHID.LOCK, CTAPHID.VENDOR_FIRST + 2)]


@st.composite
def ctaphid_packets(draw) -> list[tuple[int | None, bytes]]:
    """(cid or None for "the channel INIT gave us", packet body after the CID) per packet."""
    packets = []
    for _ in range(draw(st.integers(1, 6))):
        cid = draw(st.sampled_from([BROADCAST_CID, 0, 0x01020304, None]))
        if draw(st.booleans()):
            body = draw(st.binary(min_size=60, max_size=60))
        elif draw(st.booleans()):
            cmd = draw(st.sampled_from(CTAPHID_COMMANDS) | st.integers(0x80, 0xFF))
            length = draw(st.integers(0, 80) | st.integers(0, MAX_MESSAGE_SIZE + 10))
            body = struct.pack(">BH", cmd, length) + draw(st.binary(max_size=57))
        else:
            body = bytes([draw(st.integers(0, 0x7F))]) + draw(st.binary(max_size=59))
        packets.append((cid, body))
    return packets


def _check_report(report: bytes, used: set[int]) -> int:
    assert len(report) == PACKET_SIZE
    cid = struct.unpack_from(">I", report)[0]
    assert cid in used, f"an answer on channel {cid:08x}, which the host never used"
    if report[4] & TYPE_INIT:
        assert struct.unpack_from(">H", report, 5)[0] <= MAX_MESSAGE_SIZE
    return cid


def _starts_cbor_job(packet: bytes, channel: int | None) -> bool:
    """A whole CTAPHID_CBOR message on our channel: its answer comes from a worker thread."""
    cid, cmd, length = struct.unpack_from(">IBH", packet)
    return cid == channel and cmd == TYPE_INIT | CTAPHID.CBOR and 0 < length <= PACKET_SIZE - 7


def _answers(connection, *, wait: float) -> list[bytes]:
    """The input reports waiting now; with `wait`, first block that long for one to come."""
    reports = []
    try:
        if wait:
            reports.append(connection.read_packet(timeout=wait))
        while True:
            reports.append(connection.read_packet(timeout=0))
    except TimeoutError:
        return reports


@settings(FUZZ, max_examples=200)
@given(packets=ctaphid_packets())
def test_ctaphid_arbitrary_packets_never_raise_and_answer_well_formed_reports(authenticator, packets):
    device = VirtualHidDevice(authenticator)
    connection = device.connect()
    used, channel = {BROADCAST_CID}, None
    try:
        for cid, body in packets:
            cid = channel if cid is None else cid
            cid = BROADCAST_CID if cid is None else cid
            used.add(cid)
            packet = (struct.pack(">I", cid) + body)[:PACKET_SIZE].ljust(PACKET_SIZE, b"\0")
            connection.write_packet(packet)
            for report in _answers(connection, wait=0.5 if _starts_cbor_job(packet, channel) else 0):
                _check_report(report, used)
                if report[4] == TYPE_INIT | CTAPHID.INIT and struct.unpack_from(">H", report, 5)[0] == 17:
                    channel = struct.unpack_from(">I", report, 15)[0]
                    used.add(channel)
    finally:
        connection.close()


@FUZZ
@given(raw=st.binary(min_size=64, max_size=64 * 4))
def test_ctaphid_arbitrary_bytes_as_reports(authenticator, raw):
    device = VirtualHidDevice(authenticator)
    connection = device.connect()
    used = {BROADCAST_CID}
    try:
        for start in range(0, len(raw) - PACKET_SIZE + 1, PACKET_SIZE):
            packet = raw[start:start + PACKET_SIZE]
            used.add(struct.unpack_from(">I", packet)[0])
            connection.write_packet(packet)
            for report in _answers(connection, wait=0):
                _check_report(report, used)
    finally:
        connection.close()


# -- the service's request parsing ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=20,
)
_member_names = st.sampled_from([
    "delivery_type", "recipient", "mailing_address", "shipment_items", "product_id", "inventory_product_id",
    "product_quantity", "customization_id", "product_customizations", "fido_pin_request",
    "fido_credential_requests", "lease_seconds", "product_data", "error", "error_code", "error_message",
    "serial_number", "firmware_version", "fido_pin_response", "fido_credential_responses", "audit_serial",
])
shaped_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_member_names, c, max_size=6),
    max_leaves=25,
)
ROUTES = ["/v1/fpr/shipments", "/v1/station/claim", "/v1/station/items/1/submit",
          "/v1/station/items/1/heartbeat", "/v1/station/items/1/release"]


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory, keystore):
    from .conftest import Api

    api = Api(tmp_path_factory.mktemp("fuzz-api"), keystore)
    yield api
    api.close()


def _post(api, path: str, content: bytes):
    token = api.customer if path.startswith("/v1/fpr") else api.station
    return api.client.post(path, content=content,
                           headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})


@FUZZ
@given(path=st.sampled_from(ROUTES), body=json_values | shaped_json)
def test_service_random_json_bodies_never_answer_5xx(fuzz_api, path, body):
    answer = _post(fuzz_api, path, json.dumps(body).encode())
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert set(answer.json()) == {"error_code", "error_message", "error_data"}


@FUZZ
@given(path=st.sampled_from(ROUTES), body=st.binary(max_size=300))
def test_service_arbitrary_bytes_never_answer_5xx(fuzz_api, path, body):
    assert _post(fuzz_api, path, body).status_code < 500


@pytest.fixture(scope="module")
def valid_body(keystore) -> dict:
    item = seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS["graph"]])
    return shipment_body([item])


def _paths(value, prefix=()):
    """Every (path) to a member or element of a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@FUZZ
@given(data=st.data())
def test_service_valid_shipments_with_one_member_changed_never_answer_5xx(fuzz_api, valid_body, data):
    body = json.loads(json.dumps(valid_body))
    path = data.draw(st.sampled_from([p for p in _paths(body) if p]))
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values | st.text(alphabet="ABCxyz019-_.", max_size=300))
    answer = _post(fuzz_api, ROUTES[0], json.dumps(body).encode())
    assert answer.status_code < 500, answer.text
    assert answer.status_code in (201, 400), answer.text

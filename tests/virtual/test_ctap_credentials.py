"""makeCredential / getAssertion / getNextAssertion at the CTAP level."""

from __future__ import annotations

import os
import threading

import pytest
from fido2 import cbor
from fido2.cose import CoseKey
from fido2.ctap import CtapError
from fido2.ctap2.pin import ClientPin
from fido2.utils import sha256

from station.virtual import PresencePolicy

ERR = CtapError.ERR
PERM = ClientPin.PERMISSION
RP = {"id": "example.com", "name": "Example"}
ES256 = [{"type": "public-key", "alg": -7}]
CDH = sha256(b"client data")


def user(n: int = 1) -> dict:
    return {"id": b"user-%d" % n, "name": f"u{n}", "displayName": f"User {n}"}


def mc(key, *, rk=True, uv=True, params=ES256, rp=RP, u=None, token_rp=None, **kw):
    """makeCredential, with a fresh mc token when uv."""
    if uv:
        proto, token = key.token(PERM.MAKE_CREDENTIAL, token_rp or rp["id"])
        kw.update(pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=proto.VERSION)
    return key.ctap.make_credential(CDH, rp, u or user(), params, options={"rk": rk}, **kw)


def ga(key, *, uv=True, rp_id="example.com", **kw):
    if uv:
        proto, token = key.token(PERM.GET_ASSERTION, rp_id)
        kw.update(pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=proto.VERSION)
    return key.ctap.get_assertion(rp_id, CDH, **kw)


def code(e) -> CtapError.ERR:
    return e.value.code


@pytest.mark.parametrize("alg", [-7, -8])
def test_make_credential_and_assert_es256_eddsa(key, alg):
    att = mc(key, params=[{"type": "public-key", "alg": alg}])
    assert att.fmt == "packed" and att.att_stmt["alg"] == -7 and len(att.att_stmt["x5c"]) == 1
    cred = att.auth_data.credential_data
    assert cred.aaguid == key.authenticator.aaguid and cred.public_key.ALGORITHM == alg
    assert att.auth_data.flags & 0x45 == 0x45  # UP UV AT
    a = ga(key)
    assert a.credential["id"] == cred.credential_id
    CoseKey.parse(dict(cred.public_key)).verify(a.auth_data + CDH, a.signature)
    assert a.auth_data.counter > att.auth_data.counter
    assert a.user == user()


def test_algorithm_choice_and_unsupported(key, new_key):
    att = mc(key, params=[{"type": "public-key", "alg": -257}, {"type": "public-key", "alg": -8}])
    assert att.auth_data.credential_data.public_key.ALGORITHM == -8
    with pytest.raises(CtapError) as e:
        mc(key, params=[{"type": "public-key", "alg": -257}])
    assert code(e) == ERR.UNSUPPORTED_ALGORITHM
    card = new_key("crescendo-4000", pin="123456")  # ES256 only
    with pytest.raises(CtapError) as e:
        mc(card, params=[{"type": "public-key", "alg": -8}])
    assert code(e) == ERR.UNSUPPORTED_ALGORITHM


def test_uv_rules(key, new_key):
    with pytest.raises(CtapError) as e:  # rk with a PIN set needs a token
        mc(key, uv=False)
    assert code(e) == ERR.PUAT_REQUIRED
    att = mc(key, uv=False, rk=False)  # makeCredUvNotRqd
    assert not att.auth_data.is_user_verified()
    old = new_key("yubikey-5-nfc-5.4", pin="123456")
    with pytest.raises(CtapError) as e:  # CTAP 2.0 semantics: PIN set → pinAuth required
        mc(old, uv=False, rk=False)
    assert code(e) == ERR.PUAT_REQUIRED
    fresh = new_key()
    assert not mc(fresh, uv=False).auth_data.is_user_verified()  # no PIN: rk without UV
    with pytest.raises(CtapError) as e:
        fresh.ctap.make_credential(CDH, RP, user(), ES256, pin_uv_param=b"\0" * 32, pin_uv_protocol=2)
    assert code(e) == ERR.PIN_NOT_SET


def test_token_rules(key):
    proto, token = key.token(PERM.GET_ASSERTION, "example.com")
    with pytest.raises(CtapError) as e:  # no mc permission
        key.ctap.make_credential(CDH, RP, user(), ES256, pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=2)
    assert code(e) == ERR.PIN_AUTH_INVALID
    proto, token = key.token(PERM.MAKE_CREDENTIAL, "other.example")
    with pytest.raises(CtapError) as e:  # bound to another RP ID
        key.ctap.make_credential(CDH, RP, user(), ES256, pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=2)
    assert code(e) == ERR.PIN_AUTH_INVALID
    proto, token = key.token(PERM.MAKE_CREDENTIAL)
    with pytest.raises(CtapError) as e:  # wrong MAC
        key.ctap.make_credential(CDH, RP, user(), ES256, pin_uv_param=b"\1" * 32, pin_uv_protocol=2)
    assert code(e) == ERR.PIN_AUTH_INVALID
    param = proto.authenticate(token, CDH)
    key.ctap.make_credential(CDH, RP, user(), ES256, pin_uv_param=param, pin_uv_protocol=2)
    with pytest.raises(CtapError) as e:  # permissions cleared after use (2.1)
        key.ctap.make_credential(CDH, RP, user(2), ES256, pin_uv_param=param, pin_uv_protocol=2)
    assert code(e) == ERR.PIN_AUTH_INVALID
    with pytest.raises(CtapError) as e:
        key.ctap.make_credential(CDH, RP, user(), ES256, pin_uv_param=param)
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.make_credential(CDH, RP, user(), ES256, pin_uv_param=param, pin_uv_protocol=7)
    assert code(e) == ERR.INVALID_PARAMETER


def test_v1_token_on_v2_key(key):
    proto, token = key.token(PERM.MAKE_CREDENTIAL, protocol=1)
    att = key.ctap.make_credential(CDH, RP, user(), ES256, options={"rk": True},
                                   pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=1)
    assert att.auth_data.is_user_verified()


def test_empty_pin_uv_auth_param_selects(key, new_key):
    for call in (lambda k: k.ctap.make_credential(CDH, RP, user(), ES256, pin_uv_param=b"", pin_uv_protocol=2),
                 lambda k: k.ctap.get_assertion("example.com", CDH, pin_uv_param=b"", pin_uv_protocol=2)):
        with pytest.raises(CtapError) as e:
            call(key)
        assert code(e) == ERR.PIN_INVALID
        with pytest.raises(CtapError) as e:
            call(new_key())
        assert code(e) == ERR.PIN_NOT_SET


def test_options_and_parameters(key):
    with pytest.raises(CtapError) as e:
        key.ctap.make_credential(CDH, RP, user(), ES256, options={"up": False})
    assert code(e) == ERR.INVALID_OPTION
    with pytest.raises(CtapError) as e:
        key.ctap.make_credential(CDH, RP, user(), ES256, options={"uv": True})
    assert code(e) == ERR.INVALID_OPTION
    with pytest.raises(CtapError) as e:
        key.ctap.send_cbor(0x01, {1: CDH, 2: RP, 3: user()})
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.send_cbor(0x01, {1: CDH, 2: RP, 3: user(), 4: "ES256"})
    assert code(e) == ERR.CBOR_UNEXPECTED_TYPE
    with pytest.raises(CtapError) as e:
        key.ctap.send_cbor(0x01, {1: CDH, 2: RP, 3: user(), 4: [{"alg": -7}]})
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.get_assertion("example.com", CDH, options={"rk": True})
    assert code(e) == ERR.UNSUPPORTED_OPTION
    with pytest.raises(CtapError) as e:
        key.ctap.get_assertion("example.com", CDH, options={"uv": True})
    assert code(e) == ERR.INVALID_OPTION
    with pytest.raises(CtapError) as e:
        key.ctap.send_cbor(0x02, {1: "example.com"})
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.send_cbor(0x02, {1: b"example.com", 2: CDH})
    assert code(e) == ERR.CBOR_UNEXPECTED_TYPE
    with pytest.raises(CtapError) as e:
        key.ctap.get_assertion("example.com", CDH, options={"up": "yes"})
    assert code(e) == ERR.CBOR_UNEXPECTED_TYPE
    with pytest.raises(CtapError) as e:
        key.ctap.get_assertion("example.com", CDH, allow_list=[{"type": "public-key"}])
    assert code(e) == ERR.MISSING_PARAMETER


def test_malformed_requests(key):
    process = key.authenticator.process
    assert process(b"") == bytes([ERR.INVALID_LENGTH])
    assert process(b"\x42") == bytes([ERR.INVALID_COMMAND])
    assert process(b"\x01\xa1") == bytes([ERR.INVALID_CBOR])
    assert process(b"\x01" + cbor.encode({1: 1}) + b"\x00") == bytes([ERR.INVALID_CBOR])
    assert process(b"\x01" + cbor.encode([1])) == bytes([ERR.CBOR_UNEXPECTED_TYPE])
    assert process(b"\x04" + b"\x00" * 1280) == bytes([ERR.REQUEST_TOO_LARGE])


def test_exclude_list(key):
    cred = mc(key).auth_data.credential_data
    descriptor = {"type": "public-key", "id": cred.credential_id}
    with pytest.raises(CtapError) as e:
        mc(key, exclude_list=[descriptor])
    assert code(e) == ERR.CREDENTIAL_EXCLUDED
    mc(key, rp={"id": "other.example"}, exclude_list=[descriptor])  # another RP: not excluded


def test_exclude_list_hides_cred_protect_3_without_uv(new_key):
    key = new_key()  # no PIN: credentials made without UV
    cred = mc(key, uv=False, extensions={"credProtect": 3}).auth_data.credential_data
    att = mc(key, uv=False, rk=False, exclude_list=[{"type": "public-key", "id": cred.credential_id}])
    assert att.auth_data.credential_data is not None


def test_cred_protect_levels(key):
    ids = {}
    for level in (1, 2, 3):
        att = mc(key, u=user(level), extensions={"credProtect": level})
        assert att.auth_data.extensions == {"credProtect": level}
        ids[level] = att.auth_data.credential_data.credential_id
    # discoverable without UV: only level 1
    a = ga(key, uv=False)
    assert a.credential["id"] == ids[1] and a.number_of_credentials is None
    assert a.user == {"id": user(1)["id"]}  # no name / displayName without UV
    # with an allowList, level 2 is usable without UV, level 3 never
    a = ga(key, uv=False, allow_list=[{"type": "public-key", "id": ids[2]}])
    assert a.credential["id"] == ids[2]
    with pytest.raises(CtapError) as e:
        ga(key, uv=False, allow_list=[{"type": "public-key", "id": ids[3]}])
    assert code(e) == ERR.NO_CREDENTIALS
    assert ga(key, allow_list=[{"type": "public-key", "id": ids[3]}]).credential["id"] == ids[3]


def test_get_next_assertion(key):
    made = [mc(key, u=user(n)).auth_data.credential_data.credential_id for n in (1, 2, 3)]
    first = ga(key)
    assert first.number_of_credentials == 3 and first.user["name"] == "u3"  # most recent first
    rest = [key.ctap.get_next_assertion() for _ in range(2)]
    assert [a.credential["id"] for a in [first, *rest]] == made[::-1]
    with pytest.raises(CtapError) as e:
        key.ctap.get_next_assertion()
    assert code(e) == ERR.NOT_ALLOWED
    ga(key)
    key.ctap.get_info()  # any other command ends the series
    with pytest.raises(CtapError) as e:
        key.ctap.get_next_assertion()
    assert code(e) == ERR.NOT_ALLOWED


def test_get_next_assertion_window(key, monkeypatch):
    from station.virtual import credentials

    for n in (1, 2):
        mc(key, u=user(n))
    ga(key)
    monkeypatch.setattr(credentials, "NEXT_ASSERTION_WINDOW", -1.0)
    with pytest.raises(CtapError) as e:
        key.ctap.get_next_assertion()
    assert code(e) == ERR.NOT_ALLOWED


def test_no_credentials_and_unknown_ids(key):
    with pytest.raises(CtapError) as e:
        ga(key, uv=False)
    assert code(e) == ERR.NO_CREDENTIALS
    with pytest.raises(CtapError) as e:
        ga(key, allow_list=[{"type": "public-key", "id": os.urandom(64)}])
    assert code(e) == ERR.NO_CREDENTIALS
    cred = mc(key, rk=False).auth_data.credential_data.credential_id
    with pytest.raises(CtapError) as e:  # bound to its RP ID
        ga(key, rp_id="other.example", allow_list=[{"type": "public-key", "id": cred}])
    assert code(e) == ERR.NO_CREDENTIALS


def test_up_false_and_signature_counter(key):
    cred = mc(key).auth_data.credential_data.credential_id
    a = ga(key, uv=False, allow_list=[{"type": "public-key", "id": cred}], options={"up": False})
    assert not a.auth_data.is_user_present() and not a.auth_data.is_user_verified()
    b = ga(key, uv=False, allow_list=[{"type": "public-key", "id": cred}])
    assert b.auth_data.is_user_present() and b.auth_data.counter == a.auth_data.counter + 1


def test_rk_same_user_replaced_and_store_full(new_key):
    key = new_key()
    first = mc(key, uv=False).auth_data.credential_data.credential_id
    second = mc(key, uv=False).auth_data.credential_data.credential_id
    assert len(key.authenticator.state.credentials) == 1
    assert ga(key, uv=False).credential["id"] == second != first
    for n in range(2, 101):
        mc(key, uv=False, u=user(n))
    assert key.ctap.get_info().remaining_disc_creds == 0
    with pytest.raises(CtapError) as e:
        mc(key, uv=False, u=user(500))
    assert code(e) == ERR.KEY_STORE_FULL
    mc(key, uv=False, u=user(50))  # replacing an existing one still works


def test_hmac_secret_errors_and_outputs(key):
    cred = mc(key, extensions={"hmac-secret": True}).auth_data.credential_data.credential_id
    cp = key.client_pin()
    ka, shared = cp._get_shared_secret()
    salt_enc = cp.protocol.encrypt(shared, b"s" * 32)

    def call(ext, uv=True):
        return ga(key, uv=uv, allow_list=[{"type": "public-key", "id": cred}], extensions={"hmac-secret": ext})

    with_uv = cp.protocol.decrypt(shared, call({1: ka, 2: salt_enc, 3: cp.protocol.authenticate(shared, salt_enc), 4: 2}).auth_data.extensions["hmac-secret"])
    ka, shared = cp._get_shared_secret()
    salt_enc = cp.protocol.encrypt(shared, b"s" * 32)
    without = cp.protocol.decrypt(shared, call({1: ka, 2: salt_enc, 3: cp.protocol.authenticate(shared, salt_enc), 4: 2}, uv=False).auth_data.extensions["hmac-secret"])
    assert len(with_uv) == len(without) == 32 and with_uv != without  # CredRandomWithUV vs WithoutUV
    two = cp.protocol.encrypt(shared, b"a" * 64)
    out = call({1: ka, 2: two, 3: cp.protocol.authenticate(shared, two), 4: 2}).auth_data.extensions["hmac-secret"]
    assert len(cp.protocol.decrypt(shared, out)) == 64
    with pytest.raises(CtapError) as e:
        call({1: ka, 2: salt_enc, 3: b"\0" * 32, 4: 2})
    assert code(e) == ERR.PIN_AUTH_INVALID
    bad = cp.protocol.encrypt(shared, b"s" * 48)
    with pytest.raises(CtapError) as e:
        call({1: ka, 2: bad, 3: cp.protocol.authenticate(shared, bad), 4: 2})
    assert code(e) == ERR.INVALID_LENGTH
    with pytest.raises(CtapError) as e:
        call({1: ka, 2: salt_enc})
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        call({1: ka, 2: salt_enc, 3: b"x", 4: 9})
    assert code(e) == ERR.INVALID_PARAMETER


def test_min_pin_length_extension(key):
    from fido2.ctap2 import Config

    proto, token = key.token(PERM.AUTHENTICATOR_CFG)
    Config(key.ctap, proto, token).set_min_pin_length(6, rp_ids=["example.com"])
    att = mc(key, extensions={"minPinLength": True})
    assert att.auth_data.extensions == {"minPinLength": 6}
    att = mc(key, rp={"id": "other.example"}, extensions={"minPinLength": True})
    assert att.auth_data.extensions is None


def test_presence_delay_keepalive_never_and_cancel(new_key):
    key = new_key(presence=PresencePolicy.delay(0.25))
    seen = []
    key.ctap.make_credential(CDH, RP, user(), ES256, on_keepalive=seen.append)
    assert seen == [2]  # STATUS.UPNEEDED, once per run
    key = new_key(presence=PresencePolicy.never(0.2))
    with pytest.raises(CtapError) as e:
        key.ctap.make_credential(CDH, RP, user(), ES256)
    assert code(e) == ERR.USER_ACTION_TIMEOUT
    key = new_key(presence=PresencePolicy.never(10))
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(CtapError) as e:
        key.ctap.make_credential(CDH, RP, user(), ES256, event=cancel)
    assert code(e) == ERR.KEEPALIVE_CANCEL

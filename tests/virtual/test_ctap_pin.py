"""authenticatorClientPIN at the CTAP level: every subcommand and its error codes."""

from __future__ import annotations

import pytest
from fido2.ctap import CtapError
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2, _pad_pin
from fido2.utils import sha256

ERR = CtapError.ERR
PERM = ClientPin.PERMISSION
PIN = "123456"


def code(exc_info) -> CtapError.ERR:
    return exc_info.value.code


def test_get_info_client_pin_option_follows_state(new_key):
    key = new_key()
    assert key.ctap.get_info().options["clientPin"] is False
    key.client_pin().set_pin(PIN)
    assert key.ctap.get_info().options["clientPin"] is True


@pytest.mark.parametrize("protocol", [1, 2])
def test_set_change_and_token_both_protocols(new_key, protocol):
    key = new_key()
    cp = key.client_pin(protocol)
    cp.set_pin(PIN)
    assert cp.get_pin_retries() == (8, False)
    token = cp.get_pin_token(PIN, PERM.MAKE_CREDENTIAL, "example.com")
    assert len(token) == 32
    cp.change_pin(PIN, "654321")
    with pytest.raises(CtapError) as e:
        cp.get_pin_token(PIN, PERM.GET_ASSERTION)
    assert code(e) == ERR.PIN_INVALID
    assert len(cp.get_pin_token("654321")) == 32  # legacy getPinToken


def test_set_pin_twice_not_allowed(key):
    with pytest.raises(CtapError) as e:
        key.client_pin().set_pin("999999")
    assert code(e) == ERR.NOT_ALLOWED


def test_set_pin_too_short_policy_violation(new_key):
    key = new_key()
    cp = key.client_pin()
    with pytest.raises(ValueError):
        cp.set_pin("123")  # python-fido2 refuses locally; send it raw
    ka, shared = cp._get_shared_secret()
    padded = b"123".ljust(64, b"\0")
    enc = cp.protocol.encrypt(shared, padded)
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.SET_PIN, key_agreement=ka, new_pin_enc=enc,
                            pin_uv_param=cp.protocol.authenticate(shared, enc))
    assert code(e) == ERR.PIN_POLICY_VIOLATION


def test_set_pin_bad_auth_and_bad_length(new_key):
    key = new_key()
    cp = key.client_pin()
    ka, shared = cp._get_shared_secret()
    enc = cp.protocol.encrypt(shared, _pad_pin(PIN))
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.SET_PIN, key_agreement=ka, new_pin_enc=enc, pin_uv_param=b"\0" * 32)
    assert code(e) == ERR.PIN_AUTH_INVALID
    short = enc[:48]
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.SET_PIN, key_agreement=ka, new_pin_enc=short,
                            pin_uv_param=cp.protocol.authenticate(shared, short))
    assert code(e) == ERR.INVALID_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.SET_PIN, key_agreement=ka, new_pin_enc=enc)
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.SET_PIN, key_agreement={1: 2}, new_pin_enc=enc, pin_uv_param=b"x")
    assert code(e) == ERR.INVALID_PARAMETER


def test_protocol_and_subcommand_errors(key):
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(3, ClientPin.CMD.GET_KEY_AGREEMENT)
    assert code(e) == ERR.INVALID_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.send_cbor(0x06, {2: ClientPin.CMD.GET_KEY_AGREEMENT})
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.send_cbor(0x06, {1: 2})
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.GET_TOKEN_USING_UV)
    assert code(e) == ERR.INVALID_SUBCOMMAND


def test_token_before_pin_is_pin_not_set(new_key):
    key = new_key()
    with pytest.raises(CtapError) as e:
        key.client_pin().get_pin_token(PIN, PERM.MAKE_CREDENTIAL)
    assert code(e) == ERR.PIN_NOT_SET


def test_change_pin_without_pin_is_pin_not_set(new_key):
    with pytest.raises(CtapError) as e:
        new_key().client_pin().change_pin(PIN, "654321")
    assert code(e) == ERR.PIN_NOT_SET


def test_permissions_rules(key):
    cp = key.client_pin()
    ka, shared = cp._get_shared_secret()
    enc = cp.protocol.encrypt(shared, sha256(PIN.encode())[:16])
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.GET_TOKEN_USING_PIN, key_agreement=ka, pin_hash_enc=enc, permissions=0)
    assert code(e) == ERR.INVALID_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.GET_TOKEN_USING_PIN, key_agreement=ka, pin_hash_enc=enc,
                            permissions=PERM.BIO_ENROLL)
    assert code(e) == ERR.UNAUTHORIZED_PERMISSION
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.GET_TOKEN_USING_PIN, key_agreement=ka, pin_hash_enc=enc)
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:  # legacy getPinToken takes no permissions
        key.ctap.client_pin(2, ClientPin.CMD.GET_TOKEN_USING_PIN_LEGACY, key_agreement=ka, pin_hash_enc=enc,
                            permissions=PERM.MAKE_CREDENTIAL)
    assert code(e) == ERR.INVALID_PARAMETER
    with pytest.raises(CtapError) as e:  # pinHashEnc of the wrong size
        key.ctap.client_pin(2, ClientPin.CMD.GET_TOKEN_USING_PIN_LEGACY, key_agreement=ka, pin_hash_enc=enc[:16])
    assert code(e) == ERR.INVALID_PARAMETER


def test_three_wrong_pins_block_until_power_cycle_and_eight_block_for_good(key):
    cp = key.client_pin()
    for _ in range(2):
        with pytest.raises(CtapError) as e:
            cp.get_pin_token("000000", PERM.GET_ASSERTION)
        assert code(e) == ERR.PIN_INVALID
    with pytest.raises(CtapError) as e:
        cp.get_pin_token("000000", PERM.GET_ASSERTION)
    assert code(e) == ERR.PIN_AUTH_BLOCKED
    assert cp.get_pin_retries() == (5, True)
    with pytest.raises(CtapError) as e:  # even the right PIN, until a power cycle
        cp.get_pin_token(PIN, PERM.GET_ASSERTION)
    assert code(e) == ERR.PIN_AUTH_BLOCKED
    key.authenticator.power_cycle()
    assert cp.get_pin_retries() == (5, False)
    cp.get_pin_token(PIN, PERM.GET_ASSERTION)
    assert cp.get_pin_retries()[0] == 8  # a right PIN restores the retries

    answers = []
    for i in range(8):
        if i and i % 3 == 0:
            key.authenticator.power_cycle()
        with pytest.raises(CtapError) as e:
            cp.get_pin_token("000000", PERM.GET_ASSERTION)
        answers.append(code(e))
    assert answers[-1] == ERR.PIN_BLOCKED
    assert answers[:2] == [ERR.PIN_INVALID, ERR.PIN_INVALID]
    key.authenticator.power_cycle()
    for attempt in (lambda: cp.get_pin_token(PIN, PERM.GET_ASSERTION), lambda: cp.change_pin(PIN, "111111")):
        with pytest.raises(CtapError) as e:
            attempt()
        assert code(e) == ERR.PIN_BLOCKED
    assert cp.get_pin_retries()[0] == 0


def test_wrong_pin_regenerates_key_agreement(key):
    cp = key.client_pin()
    before = key.ctap.client_pin(2, ClientPin.CMD.GET_KEY_AGREEMENT)[1]
    with pytest.raises(CtapError):
        cp.get_pin_token("000000", PERM.GET_ASSERTION)
    assert key.ctap.client_pin(2, ClientPin.CMD.GET_KEY_AGREEMENT)[1] != before


def test_change_pin_wrong_current_and_bad_auth(key):
    cp = key.client_pin()
    with pytest.raises(CtapError) as e:
        cp.change_pin("000000", "654321")
    assert code(e) == ERR.PIN_INVALID
    ka, shared = cp._get_shared_secret()
    new_enc = cp.protocol.encrypt(shared, _pad_pin("654321"))
    hash_enc = cp.protocol.encrypt(shared, sha256(PIN.encode())[:16])
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(2, ClientPin.CMD.CHANGE_PIN, key_agreement=ka, pin_hash_enc=hash_enc,
                            new_pin_enc=new_enc, pin_uv_param=b"\0" * 32)
    assert code(e) == ERR.PIN_AUTH_INVALID


def test_change_pin_invalidates_token(key):
    from fido2.ctap2 import Config

    protocol, token = key.token(PERM.AUTHENTICATOR_CFG)
    key.client_pin().change_pin(PIN, "654321")
    with pytest.raises(CtapError) as e:
        Config(key.ctap, protocol, token).toggle_always_uv()
    assert code(e) == ERR.PIN_AUTH_INVALID


def test_legacy_only_on_fido_2_1_pre(new_key):
    key = new_key("yubikey-5-nfc-5.4", pin=PIN)
    assert key.ctap.info.pin_uv_protocols == [2, 1]  # 5.4.3's getInfo
    assert "pinUvAuthToken" not in key.ctap.info.options
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(1, ClientPin.CMD.GET_TOKEN_USING_PIN, permissions=1)
    assert code(e) == ERR.INVALID_SUBCOMMAND
    with pytest.raises(CtapError) as e:
        key.ctap.client_pin(3, ClientPin.CMD.GET_KEY_AGREEMENT)
    assert code(e) == ERR.INVALID_PARAMETER
    assert ClientPin(key.ctap, PinProtocolV1()).get_pin_retries() == (8, None)
    assert ClientPin(key.ctap, PinProtocolV2()).get_pin_token(PIN)  # legacy getPinToken on protocol 2

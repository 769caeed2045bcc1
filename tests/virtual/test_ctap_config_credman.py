"""authenticatorConfig, authenticatorCredentialManagement, authenticatorReset and
authenticatorSelection at the CTAP level."""

from __future__ import annotations

import pytest
from fido2.ctap import CtapError
from fido2.ctap2 import Config, CredentialManagement
from fido2.ctap2.pin import ClientPin
from fido2.utils import sha256

from station.virtual import PresencePolicy, authenticator

ERR = CtapError.ERR
PERM = ClientPin.PERMISSION
PIN = "123456"
CDH = sha256(b"cd")
ES256 = [{"type": "public-key", "alg": -7}]


def code(e):
    return e.value.code


def config(key) -> Config:
    proto, token = key.token(PERM.AUTHENTICATOR_CFG)
    return Config(key.ctap, proto, token)


def credman(key, rp_id=None) -> CredentialManagement:
    proto, token = key.token(PERM.CREDENTIAL_MGMT, rp_id)
    return CredentialManagement(key.ctap, proto, token)


def make(key, rp_id="example.com", n=1, cred_protect=None):
    proto, token = key.token(PERM.MAKE_CREDENTIAL, rp_id)
    ext = {"credProtect": cred_protect} if cred_protect else None
    return key.ctap.make_credential(
        CDH, {"id": rp_id, "name": rp_id.upper()}, {"id": b"u%d" % n, "name": f"n{n}", "displayName": f"D{n}"},
        ES256, options={"rk": True}, extensions=ext,
        pin_uv_param=proto.authenticate(token, CDH), pin_uv_protocol=proto.VERSION,
    ).auth_data.credential_data.credential_id


# -- authenticatorConfig -----------------------------------------------------------------------
def test_force_pin_change_flow(key):
    config(key).set_min_pin_length(8, force_change_pin=True)
    info = key.ctap.get_info()
    assert info.force_pin_change is True and info.min_pin_length == 8
    cp = key.client_pin()
    with pytest.raises(CtapError) as e:  # refused until changePIN (CTAP 2.1 §6.5.5.7.2: PIN_INVALID)
        cp.get_pin_token(PIN, PERM.MAKE_CREDENTIAL)
    assert code(e) == ERR.PIN_INVALID
    assert cp.get_pin_retries()[0] == 8  # the PIN itself was right: no retry is lost
    with pytest.raises(CtapError) as e:  # legacy getPinToken too
        cp.get_pin_token(PIN)
    assert code(e) == ERR.PIN_INVALID
    with pytest.raises(CtapError) as e:  # a wrong PIN still costs a retry
        cp.get_pin_token("99999999", PERM.MAKE_CREDENTIAL)
    assert code(e) == ERR.PIN_INVALID
    assert cp.get_pin_retries()[0] == 7
    with pytest.raises(CtapError) as e:  # shorter than minPINLength
        cp.change_pin(PIN, "7654321")
    assert code(e) == ERR.PIN_POLICY_VIOLATION
    cp.change_pin(PIN, "87654321")
    assert key.ctap.get_info().force_pin_change is False
    assert cp.get_pin_token("87654321", PERM.MAKE_CREDENTIAL)


def test_same_pin_refused_while_force_pin_change(key):
    config(key).set_min_pin_length(force_change_pin=True)
    with pytest.raises(CtapError) as e:
        key.client_pin().change_pin(PIN, PIN)
    assert code(e) == ERR.PIN_POLICY_VIOLATION
    key.client_pin().change_pin(PIN, "222222")


def test_min_pin_length_above_current_pin_forces_change(key):
    config(key).set_min_pin_length(7)
    assert key.ctap.get_info().force_pin_change is True


def test_set_min_pin_length_errors(key, new_key):
    cfg = config(key)
    cfg.set_min_pin_length(6, rp_ids=["example.com"])
    for kwargs in ({"min_pin_length": 5}, {"rp_ids": ["a.example", "b.example"]}):
        with pytest.raises(CtapError) as e:
            config(key).set_min_pin_length(**kwargs)
        assert code(e) == ERR.PIN_POLICY_VIOLATION
    fresh = new_key()
    unprotected = Config(fresh.ctap)  # no PIN: no pinUvAuthParam needed
    unprotected.set_min_pin_length(5)
    assert fresh.ctap.get_info().min_pin_length == 5
    with pytest.raises(CtapError) as e:
        unprotected.set_min_pin_length(force_change_pin=True)
    assert code(e) == ERR.PIN_NOT_SET


def test_config_auth_errors(key):
    with pytest.raises(CtapError) as e:
        Config(key.ctap).toggle_always_uv()
    assert code(e) == ERR.PUAT_REQUIRED
    proto, token = key.token(PERM.MAKE_CREDENTIAL)
    with pytest.raises(CtapError) as e:  # no acfg permission
        Config(key.ctap, proto, token).toggle_always_uv()
    assert code(e) == ERR.PIN_AUTH_INVALID
    with pytest.raises(CtapError) as e:
        key.ctap.config(Config.CMD.TOGGLE_ALWAYS_UV, None, 2, b"\0" * 32)
    assert code(e) == ERR.PIN_AUTH_INVALID
    with pytest.raises(CtapError) as e:
        key.ctap.config(Config.CMD.TOGGLE_ALWAYS_UV, None, None, b"\0" * 32)
    assert code(e) == ERR.MISSING_PARAMETER
    with pytest.raises(CtapError) as e:
        key.ctap.config(Config.CMD.VENDOR_PROTOTYPE)
    assert code(e) == ERR.INVALID_SUBCOMMAND
    with pytest.raises(CtapError) as e:
        key.ctap.send_cbor(0x0D, {2: {}})
    assert code(e) == ERR.MISSING_PARAMETER


def test_toggle_always_uv(key):
    config(key).toggle_always_uv()
    info = key.ctap.get_info()
    assert info.options["alwaysUv"] is True and info.options["makeCredUvNotRqd"] is False
    with pytest.raises(CtapError) as e:
        key.ctap.make_credential(CDH, {"id": "example.com"}, {"id": b"u"}, ES256)
    assert code(e) == ERR.PUAT_REQUIRED
    with pytest.raises(CtapError) as e:
        key.ctap.get_assertion("example.com", CDH)
    assert code(e) == ERR.PUAT_REQUIRED
    config(key).toggle_always_uv()
    assert key.ctap.get_info().options["alwaysUv"] is False


def test_no_enterprise_attestation_on_retail_keys(key, new_key):
    """Retail YubiKey 5.7 and Crescendo keys have no `ep` (only enterprise-ordered keys do):
    enterpriseAttestation in makeCredential and enableEnterpriseAttestation are refused."""
    for k in (key, new_key("crescendo-key")):
        assert "ep" not in k.ctap.info.options
        with pytest.raises(CtapError) as e:
            k.ctap.make_credential(CDH, {"id": "example.com"}, {"id": b"u"}, ES256, enterprise_attestation=2)
        assert code(e) == ERR.INVALID_PARAMETER
    proto, token = key.token(PERM.AUTHENTICATOR_CFG)
    with pytest.raises(CtapError) as e:
        Config(key.ctap, proto, token).enable_enterprise_attestation()
    assert code(e) == ERR.INVALID_PARAMETER


def test_no_authenticator_config_on_5_4(new_key):
    key = new_key("yubikey-5-nfc-5.4", pin=PIN)
    info = key.ctap.info
    assert not Config.is_supported(info) and "setMinPINLength" not in info.options
    with pytest.raises(CtapError) as e:
        key.ctap.config(Config.CMD.SET_MIN_PIN_LENGTH, {3: True}, 1, b"\0" * 16)
    assert code(e) == ERR.INVALID_COMMAND
    with pytest.raises(CtapError) as e:
        key.ctap.selection()
    assert code(e) == ERR.INVALID_COMMAND


# -- authenticatorCredentialManagement -----------------------------------------------------------
def test_credential_management(key):
    a1, a2 = make(key, n=1, cred_protect=2), make(key, n=2)
    b1 = make(key, "b.example", n=3)
    cm = credman(key)
    assert cm.get_metadata() == {1: 3, 2: 97}
    rps = cm.enumerate_rps()
    assert [r[3]["id"] for r in rps] == ["example.com", "b.example"] and rps[0][5] == 2
    assert rps[1][3]["name"] == "B.EXAMPLE"
    creds = cm.enumerate_creds(sha256(b"example.com"))
    assert [c[7]["id"] for c in creds] == [a1, a2] and creds[0][9] == 2 and creds[0][10] == 2
    assert creds[0][6] == {"id": b"u1", "name": "n1", "displayName": "D1"}
    cm.update_user_info({"type": "public-key", "id": a1}, {"id": b"u1", "name": "renamed"})
    assert credman(key).enumerate_creds(sha256(b"example.com"))[0][6] == {"id": b"u1", "name": "renamed"}
    credman(key).delete_cred({"type": "public-key", "id": b1})
    assert credman(key).get_metadata() == {1: 2, 2: 98}
    with pytest.raises(CtapError) as e:  # deleted: no longer usable either
        key.ctap.get_assertion("b.example", CDH, allow_list=[{"type": "public-key", "id": b1}])
    assert code(e) == ERR.NO_CREDENTIALS
    assert a2


def test_credential_management_errors(key):
    cm = credman(key)
    assert cm.enumerate_rps() == []  # python-fido2 turns NO_CREDENTIALS into []
    with pytest.raises(CtapError) as e:
        cm._call(CredentialManagement.CMD.ENUMERATE_RPS_BEGIN)
    assert code(e) == ERR.NO_CREDENTIALS
    with pytest.raises(CtapError) as e:
        cm._call(CredentialManagement.CMD.ENUMERATE_CREDS_BEGIN, {1: sha256(b"example.com")})
    assert code(e) == ERR.NO_CREDENTIALS
    a1 = make(key)
    cm = credman(key)
    for call, err in (
        (lambda: cm.delete_cred({"type": "public-key", "id": b"\1" * 40}), ERR.NO_CREDENTIALS),
        (lambda: cm.update_user_info({"type": "public-key", "id": a1}, {"id": b"other"}), ERR.INVALID_PARAMETER),
        (lambda: cm._call(CredentialManagement.CMD.ENUMERATE_CREDS_BEGIN, {}), ERR.MISSING_PARAMETER),
        (lambda: cm._call(CredentialManagement.CMD.DELETE_CREDENTIAL, {}), ERR.MISSING_PARAMETER),
        (lambda: cm._call(0x20), ERR.INVALID_SUBCOMMAND),
        (lambda: key.ctap.credential_mgmt(CredentialManagement.CMD.ENUMERATE_RPS_NEXT), ERR.NOT_ALLOWED),
        (lambda: key.ctap.credential_mgmt(CredentialManagement.CMD.ENUMERATE_CREDS_NEXT), ERR.NOT_ALLOWED),
        (lambda: key.ctap.credential_mgmt(CredentialManagement.CMD.GET_CREDS_METADATA), ERR.PUAT_REQUIRED),
        (lambda: key.ctap.credential_mgmt(CredentialManagement.CMD.GET_CREDS_METADATA, None, None, b"x"),
         ERR.MISSING_PARAMETER),
        (lambda: key.ctap.credential_mgmt(CredentialManagement.CMD.GET_CREDS_METADATA, None, 2, b"\0" * 32),
         ERR.PIN_AUTH_INVALID),
    ):
        with pytest.raises(CtapError) as e:
            call()
        assert code(e) == err
    proto, token = key.token(PERM.MAKE_CREDENTIAL)
    with pytest.raises(CtapError) as e:  # no cm permission
        CredentialManagement(key.ctap, proto, token).get_metadata()
    assert code(e) == ERR.PIN_AUTH_INVALID


def test_rp_bound_credential_management_token(key):
    a1 = make(key)
    make(key, "b.example", n=2)
    cm = credman(key, "example.com")
    assert [c[7]["id"] for c in cm.enumerate_creds(sha256(b"example.com"))] == [a1]
    for call in (cm.get_metadata, cm.enumerate_rps, lambda: cm.enumerate_creds(sha256(b"b.example"))):
        with pytest.raises(CtapError) as e:
            call()
        assert code(e) == ERR.PIN_AUTH_INVALID


def test_credential_management_preview_on_5_4(new_key):
    key = new_key("yubikey-5-nfc-5.4", pin=PIN)
    make(key)
    proto, token = key.client_pin().protocol, key.client_pin().get_pin_token(PIN)  # legacy token
    cm = CredentialManagement(key.ctap, proto, token)
    assert cm.get_metadata() == {1: 1, 2: 24}


# -- authenticatorReset, authenticatorSelection --------------------------------------------------
def test_reset_wipes_everything(key):
    cred = make(key)
    config(key).set_min_pin_length(6, force_change_pin=True)
    key.ctap.reset()
    info = key.ctap.get_info()
    assert info.options["clientPin"] is False and info.min_pin_length == 4 and info.force_pin_change is False
    assert info.remaining_disc_creds == 100
    with pytest.raises(CtapError) as e:
        key.ctap.get_assertion("example.com", CDH, allow_list=[{"type": "public-key", "id": cred}])
    assert code(e) == ERR.NO_CREDENTIALS


def test_reset_window_and_presence(new_key):
    key = new_key(pin=PIN)
    assert key.authenticator.profile.reset_window == 5.0  # YubiKey: 5 s after power-up
    key.authenticator.powered_up -= 5.5
    with pytest.raises(CtapError) as e:
        key.ctap.reset()
    assert code(e) == ERR.NOT_ALLOWED
    key.authenticator.power_cycle()
    key.authenticator.powered_up -= 11
    with pytest.raises(CtapError) as e:
        key.ctap.reset()
    assert code(e) == ERR.NOT_ALLOWED
    key.authenticator.power_cycle()  # the window restarts at power-up
    key.authenticator.presence = PresencePolicy.never(0.1)
    with pytest.raises(CtapError) as e:
        key.ctap.reset()
    assert code(e) == ERR.USER_ACTION_TIMEOUT
    key.authenticator.presence = PresencePolicy.approve()
    key.ctap.reset()
    assert key.ctap.get_info().options["clientPin"] is False


def test_selection(new_key):
    key = new_key()
    key.ctap.selection()
    key.authenticator.presence = PresencePolicy.never(0.1)
    with pytest.raises(CtapError) as e:
        key.ctap.selection()
    assert code(e) == ERR.USER_ACTION_TIMEOUT

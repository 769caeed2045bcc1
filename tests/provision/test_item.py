"""The provisioning engine on virtual keys, through each python-fido2 transport."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
from counterfeit import self_signed_ca
from fido2.ctap import CtapError
from fido2.ctap2 import ClientPin, CredentialManagement
from fido2.utils import websafe_decode

from station.customer.verify import NotGenuine, customer_verifier, register_credential
from station.errors import StationError
from station.protocol.jose import open_response
from station.provision.item import provision_item
from station.provision.pin import pin_protocol_for

from .conftest import load_options

NOW = datetime.now(timezone.utc)


def run_item(device, sealed, keystore, trust, **kw):
    return provision_item(
        device=device,
        pin_request_jwe=sealed.pin_request_jwe,
        credential_request_jwes=sealed.credential_request_jwes,
        keystore=keystore,
        trust=trust,
        **kw,
    )


def open_all(product_data, sealed, keystore):
    jwks = keystore.jwks("signing")
    pin = open_response(product_data["fido_pin_response"], response_private_key=sealed.response_key,
                        signing_jwks=jwks, request_jwe=sealed.pin_request_jwe)
    creds = [
        open_response(jwe, response_private_key=sealed.response_key, signing_jwks=jwks, request_jwe=req)
        for jwe, req in zip(product_data["fido_credential_responses"], sealed.credential_request_jwes)
    ]
    return pin, creds


@pytest.mark.parametrize("transport", ["direct", "hid", "pcsc"])
def test_graph_and_okta_items_give_responses_the_customer_opens_and_verifies(transport, make_key, order, keystore, trust):
    device = make_key(transport=transport)
    sealed = order("graph", "okta", min_pin_length=6, length=8)
    steps = []
    result = run_item(device, sealed, keystore, trust, on_step=lambda name, data: steps.append(name))
    assert steps == ["opened", "preflight", "pin_set", "credential", "credential", "configured", "verified", "sealed"]

    pin, creds = open_all(result.product_data, sealed, keystore)
    assert pin.request_id == sealed.pin_request_id and len(pin.pin) == 8 and pin.pin.isdigit()
    assert pin.force_pin_change is True
    assert pin.aaguid == str(device.aaguid)
    assert result.product_data["serial_number"] == pin.serial_number == device.identity.serial
    assert pin.serial_number is not None and pin.firmware_version is not None

    for cred, options in zip(creds, sealed.options):
        registration = cred.credential.model_dump(mode="json", by_alias=True, exclude_none=True)
        client_data = json.loads(websafe_decode(registration["response"]["clientDataJSON"]))
        assert client_data == {"type": "webauthn.create", "challenge": options["challenge"],
                               "origin": f"https://{options['rp']['id']}", "crossOrigin": False}
        assert registration["clientExtensionResults"]["credProps"] == {"rk": True}
        registered = register_credential(registration, rp_id=options["rp"]["id"], rp_name=options["rp"]["name"],
                                         challenge=options["challenge"], verifier=customer_verifier(trust_test_ca=True))
        assert registered.user_verified
        with pytest.raises(NotGenuine):
            register_credential(registration, rp_id=options["rp"]["id"], rp_name=options["rp"]["name"],
                                challenge=options["challenge"], verifier=customer_verifier(trust_test_ca=False))
    graph_ext = creds[0].credential.client_extension_results
    assert graph_ext.get("hmacCreateSecret") is True


def test_the_pin_works_only_after_the_forced_change_and_credentials_are_discoverable(make_key, order, keystore, trust):
    device = make_key()
    sealed = order("graph", force_pin_change=True)
    result = run_item(device, sealed, keystore, trust)
    pin, _ = open_all(result.product_data, sealed, keystore)

    ctap2 = device.ctap2()
    client_pin = ClientPin(ctap2, pin_protocol_for(ctap2.info))
    assert ctap2.get_info().force_pin_change is True
    with pytest.raises(CtapError) as refused:
        client_pin.get_pin_token(pin.pin, ClientPin.PERMISSION.CREDENTIAL_MGMT)
    assert refused.value.code == CtapError.ERR.PIN_INVALID  # CTAP 2.1 §6.5.5.7.2: until changePIN
    assert ctap2.get_info().force_pin_change is True  # what tells it from a wrong PIN
    client_pin.change_pin(pin.pin, "73915284")
    assert ctap2.get_info().force_pin_change is False
    token = client_pin.get_pin_token("73915284", ClientPin.PERMISSION.CREDENTIAL_MGMT)
    credman = CredentialManagement(ctap2, client_pin.protocol, token)
    rps = credman.enumerate_rps()
    assert [rp[CredentialManagement.RESULT.RP]["id"] for rp in rps] == ["login.microsoft.com"]
    creds = credman.enumerate_creds(rps[0][CredentialManagement.RESULT.RP_ID_HASH])
    graph = load_options("graph")
    expected_level = {"userVerificationOptional": 1, "userVerificationOptionalWithCredentialIDList": 2,
                      "userVerificationRequired": 3}[graph["extensions"]["credentialProtectionPolicy"]]
    assert creds[0][CredentialManagement.RESULT.CRED_PROTECT] == expected_level


def _untouched(device) -> None:
    device.refresh()
    assert not device.pin_set


def test_a_54_key_asked_to_force_a_pin_change_is_unsupported_and_untouched(make_key, order, keystore, trust):
    device = make_key("yubikey-5-nfc-5.4")
    with pytest.raises(StationError) as failed:
        run_item(device, order("okta", force_pin_change=True), keystore, trust)
    assert failed.value.code == "device_unsupported" and not failed.value.key_touched
    _untouched(device)


def test_a_54_key_without_a_forced_change_is_programmed(make_key, order, keystore, trust):
    device = make_key("yubikey-5-nfc-5.4")
    sealed = order("okta", force_pin_change=False)
    pin, _ = open_all(run_item(device, sealed, keystore, trust).product_data, sealed, keystore)
    assert pin.force_pin_change is False


def test_a_key_with_a_pin_is_not_fresh(make_key, order, keystore, trust):
    device = make_key()
    ClientPin(device.ctap2()).set_pin("55512345")
    device.refresh()
    with pytest.raises(StationError) as failed:
        run_item(device, order("okta"), keystore, trust)
    assert failed.value.code == "device_not_fresh" and not failed.value.key_touched


def test_a_key_with_credentials_is_not_fresh(make_key, order, keystore, trust):
    device = make_key()
    sealed = order("okta", force_pin_change=False)
    run_item(device, sealed, keystore, trust)
    with pytest.raises(StationError) as failed:
        run_item(device, order("okta"), keystore, trust)
    assert failed.value.code == "device_not_fresh"


def test_an_expired_request_is_refused_before_the_key_is_touched(make_key, order, keystore, trust):
    device = make_key()
    sealed = order("okta", not_after=NOW - timedelta(minutes=1))
    with pytest.raises(StationError) as failed:
        run_item(device, sealed, keystore, trust)
    assert failed.value.code == "expired"
    _untouched(device)


def test_a_key_failing_midway_is_a_device_error_that_asks_for_a_reset(make_key, order, keystore, trust):
    device = make_key()
    real_call = device.ctap_device.call
    calls = {"n": 0}

    def pulled_out_after_the_pin(cmd, data=b"", *args, **kwargs):
        if data[:1] == b"\x01":  # authenticatorMakeCredential: the key is pulled out
            raise OSError("device disconnected")
        return real_call(cmd, data, *args, **kwargs)

    device.ctap_device.call = pulled_out_after_the_pin
    with pytest.raises(StationError) as failed:
        run_item(device, order("okta"), keystore, trust)
    assert failed.value.code == "device_error" and failed.value.key_touched
    assert "reset" in failed.value.message


def test_a_key_signed_by_an_unknown_ca_is_not_genuine(make_key, order, keystore, trust):
    device = make_key(attestation_ca=self_signed_ca("Counterfeit FIDO Root"))
    with pytest.raises(StationError) as failed:
        run_item(device, order("okta"), keystore, trust)
    assert failed.value.code == "device_error" and "not genuine" in failed.value.message


def test_a_key_whose_certificate_aaguid_differs_is_not_genuine(make_key, order, keystore, trust):
    device = make_key(cert_aaguid=bytes.fromhex("ee882879721c491397753dfcce97072a"))
    with pytest.raises(StationError) as failed:
        run_item(device, order("okta"), keystore, trust)
    assert "not genuine" in failed.value.message and "AAGUID" in failed.value.message


def test_without_the_test_ca_a_virtual_key_is_not_genuine(make_key, order, keystore):
    from station.provision.genuine import TrustStore

    with pytest.raises(StationError) as failed:
        run_item(make_key(), order("okta"), keystore, TrustStore.default())
    assert "not genuine" in failed.value.message


def test_no_pin_reaches_a_log_an_error_or_a_file(make_key, order, keystore, trust, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    device = make_key()
    sealed = order("graph", "okta", length=10)  # long enough never to match a timestamp by chance
    result = run_item(device, sealed, keystore, trust)
    pin, _ = open_all(result.product_data, sealed, keystore)
    assert pin.pin not in caplog.text
    assert pin.pin not in repr(pin)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert pin.pin.encode() not in path.read_bytes(), path
    # a failing item's error text carries no PIN either
    with pytest.raises(StationError) as failed:
        run_item(device, order("okta"), keystore, trust)
    assert pin.pin not in str(failed.value)


def test_a_key_nobody_touches_is_a_user_presence_timeout_and_needs_a_reset(tmp_path, order, keystore, trust):
    from station.device.discovery import open_device
    from station.virtual import PresencePolicy, new_virtual

    new_virtual(tmp_path / "slow.json", "yubikey-5-nfc-5.7").close()
    device = open_device(f"virtual:{tmp_path / 'slow.json'}", presence=PresencePolicy.never(timeout=1.0))
    touches = []
    try:
        with pytest.raises(StationError) as failed:
            run_item(device, order("okta"), keystore, trust, on_touch=lambda: touches.append(1))
    finally:
        device.close()
    assert failed.value.code == "user_presence_timeout" and failed.value.key_touched
    assert touches  # the technician was asked to touch the key


@pytest.mark.parametrize("transport", ["direct", "hid"])
def test_a_u2f_only_key_is_unsupported_not_a_crash(make_key, transport):
    """An old CTAP1-only key (no CBOR capability) is named as such before anything is written."""
    with pytest.raises(StationError) as failed:
        make_key("yubico-u2f-security-key", transport=transport)
    assert failed.value.code == "device_unsupported" and not failed.value.key_touched
    assert "U2F-only" in failed.value.message


def test_a_key_with_pin_complexity_on_is_programmed(make_key, order, keystore, trust):
    """The station's drawn PINs pass Yubico's PIN complexity (no repeats, no digit runs)."""
    device = make_key("yubikey-5-nfc-5.7-pin-complexity")
    sealed = order("okta", force_pin_change=True)
    pin, _ = open_all(run_item(device, sealed, keystore, trust).product_data, sealed, keystore)
    device.refresh()
    assert device.pin_set and pin.force_pin_change is True


def _drawn(monkeypatch, *pins):
    """draw_pin hands out `pins` first (as if the CSPRNG had drawn them), then draws as usual."""
    import station.provision.pin as pin_module
    from station.masked import Pin

    queue, real = list(pins), pin_module.draw_pin
    monkeypatch.setattr(pin_module, "draw_pin", lambda length: Pin(queue.pop(0)) if queue else real(length))


def test_a_pin_the_keys_complexity_policy_refuses_is_drawn_again(make_key, order, keystore, trust, monkeypatch):
    # "123123" passes our weak-shape check but a YubiKey 5.7 with PIN complexity refuses it
    # (PIN_POLICY_VIOLATION: nothing written); the station draws another PIN of the same length
    _drawn(monkeypatch, "123123")
    sealed = order("okta")
    device = make_key("yubikey-5-nfc-5.7-pin-complexity")
    result = run_item(device, sealed, keystore, trust)
    pin, _ = open_all(result.product_data, sealed, keystore)
    assert pin.pin != "123123" and len(pin.pin) == len("123123")


def test_a_key_refusing_every_drawn_pin_is_unsupported_and_untouched(make_key, order, keystore, trust, monkeypatch):
    _drawn(monkeypatch, *["123123"] * 5)
    device = make_key("yubikey-5-nfc-5.7-pin-complexity")
    with pytest.raises(StationError) as refused:
        run_item(device, order("okta"), keystore, trust)
    assert refused.value.code == "device_unsupported" and not refused.value.key_touched
    assert refused.value.key_action == "reuse" and "PIN policy" in refused.value.message
    _untouched(device)


def test_a_u2f_only_key_is_refused_at_discovery_and_set_aside(tmp_path, monkeypatch):
    from usb_hub import install

    from station.device.pool import KeyPool, Refusal

    monkeypatch.setenv("STATION_LOCK_DIR", str(tmp_path / "locks"))
    (tmp_path / "usb").mkdir()
    hub = install(monkeypatch, tmp_path / "usb")
    try:
        hub.plug("yubico-u2f-security-key")
        import threading

        got = KeyPool("hid", poll_seconds=0.01).take(threading.Event())
        assert isinstance(got, Refusal) and got.error.code == "device_unsupported"
        assert got.error.key_action == "set_aside" and "set it aside" in got.error.message
        got.device.close()
    finally:
        hub.close()

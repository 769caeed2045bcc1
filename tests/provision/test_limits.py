"""What an item asks the key to store, checked before the first write (issue 17, item 2):
duplicate accounts, CTAP's 64-byte strings (truncated as CTAP 2.1 §6.1 allows), makeCredential
over the key's maxMsgSize, and the station's replay check on requestId and on decoded content."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from station.errors import StationError
from station.protocol.jose import content_digest
from station.protocol.messages import CredentialRequest, truncate_ctap_string
from station.provision.item import provision_item
from station.provision.limits import make_credential_size
from station.virtual.state import StateFile

from .conftest import load_options


def run_item(device, sealed, keystore, trust, **kw):
    return provision_item(device=device, pin_request_jwe=sealed.pin_request_jwe,
                          credential_request_jwes=sealed.credential_request_jwes, keystore=keystore, trust=trust, **kw)


def untouched(device) -> None:
    device.refresh()
    assert not device.pin_set


def stored_credentials(statefile) -> list[dict]:
    """The key's discoverable credentials as its state (snapshot and journal) holds them."""
    return [asdict(c) for c in StateFile(statefile).read().credentials]


@pytest.mark.parametrize("value, limit_bytes", [
    ("plain", 5), ("x" * 64, 64), ("x" * 65, 64), ("é" * 40, 64), ("a" * 63 + "é", 63),
    ("a" * 62 + "e\u0301x", 62),   # never between e and its combining acute
    ("a" * 60 + "\U0001F44D\U0001F3FD", 60),   # nor between an emoji and its skin-tone modifier
    ("a" * 58 + "\U0001F468\u200d\U0001F469", 58),  # nor inside a ZWJ sequence
])
def test_truncation_keeps_at_most_64_bytes_of_whole_characters(value, limit_bytes):
    cut = truncate_ctap_string(value)
    assert len(cut.encode("utf-8")) == limit_bytes and value.startswith(cut)


def test_long_names_are_truncated_before_the_key_and_the_item_is_programmed(make_key, order, keystore, trust, tmp_path):
    """Before: a 300-byte displayName passed the door, got the PIN set, then REQUEST_TOO_LARGE."""
    options = load_options("okta")
    options["rp"] = dict(options["rp"], name="R" * 300)
    options["user"] = dict(options["user"], name="n" * 200 + "@example.com", displayName="Ünïcödé " * 60)
    device = make_key()
    result = run_item(device, order(options, force_pin_change=False), keystore, trust)
    assert len(result.product_data["fido_credential_responses"]) == 1
    (cred,) = stored_credentials(tmp_path / "key.json")
    assert cred["rp_name"] == "R" * 64
    assert len(cred["user"]["name"].encode()) == 64
    assert len(cred["user"]["displayName"].encode()) <= 64
    assert ("Ünïcödé " * 60).encode().startswith(cred["user"]["displayName"].encode())


def test_two_requests_for_one_account_are_refused_before_the_key_is_touched(make_key, order, keystore, trust):
    options = load_options("okta")
    device = make_key()
    with pytest.raises(StationError) as failed:
        run_item(device, order(options, dict(options, challenge="c2Vjb25kLWNoYWxsZW5nZS1ieXRlcw")), keystore, trust)
    assert failed.value.code == "invalid_request" and "same account" in failed.value.message
    assert not failed.value.key_touched
    untouched(device)


def test_one_user_id_on_two_rps_is_two_accounts(make_key, order, keystore, trust):
    options = load_options("okta")
    other = dict(options, rp={"id": "example.org", "name": "Org"})
    result = run_item(make_key(), order(options, other, force_pin_change=False), keystore, trust)
    assert len(result.product_data["fido_credential_responses"]) == 2


def test_a_make_credential_over_the_keys_max_msg_size_is_refused_before_the_key_is_touched(make_key, order, keystore, trust):
    options = load_options("okta")
    options["pubKeyCredParams"] = [{"type": "public-key", "alg": -7 - i} for i in range(80)]  # ~1.7 kB
    device = make_key()
    with pytest.raises(StationError) as failed:
        run_item(device, order(options), keystore, trust)
    assert failed.value.code == "device_unsupported" and "maxMsgSize" in failed.value.message
    assert not failed.value.key_touched
    untouched(device)


def test_the_size_estimate_is_not_below_what_python_fido2_sends(make_key, order, keystore, trust, monkeypatch):
    """Every makeCredential the station sends is at most make_credential_size of its request."""
    from fido2.ctap2 import base

    sent: list[int] = []
    original = base.Ctap2.send_cbor

    def recording(self, cmd, data=None, **kw):
        if cmd == base.Ctap2.CMD.MAKE_CREDENTIAL:
            from fido2 import cbor

            sent.append(1 + len(cbor.encode(data)))
        return original(self, cmd, data, **kw)

    monkeypatch.setattr(base.Ctap2, "send_cbor", recording)
    options = load_options("graph")
    options["rp"] = dict(options["rp"], name="R" * 100)
    options["excludeCredentials"] = [{"type": "public-key", "id": "QUFB" * 20}]
    sealed = order(options, force_pin_change=False)
    run_item(make_key(), sealed, keystore, trust)
    from station.protocol.jose import open_request

    request = open_request(sealed.credential_request_jwes[0], keystore=keystore)
    assert isinstance(request, CredentialRequest)
    assert sent and max(sent) <= make_credential_size(request)


def test_the_station_refuses_an_item_whose_decoded_content_it_fulfilled(make_key, order, keystore, trust):
    sealed = order("okta")
    seen = {f"content:{content_digest(sealed.credential_request_jwes[0])}"}
    device = make_key()
    with pytest.raises(StationError) as failed:
        run_item(device, sealed, keystore, trust, already_fulfilled=seen.__contains__)
    assert failed.value.code == "invalid_request" and not failed.value.key_touched
    untouched(device)


def test_a_fulfilled_item_reports_its_request_ids_and_content_keys(make_key, order, keystore, trust):
    sealed = order("okta", force_pin_change=False)
    result = run_item(make_key(), sealed, keystore, trust)
    jwes = [sealed.pin_request_jwe, *sealed.credential_request_jwes]
    assert result.request_ids == [sealed.pin_request_id, *sealed.credential_request_ids,
                                  *(f"content:{content_digest(j)}" for j in jwes)]

"""Hygiene (issue 17, item 5): database files 0600 in a 0700 folder, the customer side takes a
compact inner JWS only, the systemd units sandboxed without core dumps."""

from __future__ import annotations

import configparser
import json
import logging
import stat

import pytest
from jwcrypto.jws import JWS

from station.customer.orders import seal_item
from station.customer.verify import NotCompactJws, open_item_responses
from station.fulfillment.store import Role, Store
from station.protocol.backend import SIGNING_ALG
from station.protocol.jose import ResponseRejected, _encrypt, open_response, request_digest
from station.protocol.messages import PinResponse, ResponseKey

from .conftest import ROOT

OPTIONS = json.loads((ROOT / "fixtures" / "options" / "okta.json").read_text())


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_wal_are_owner_only_in_an_owner_only_folder(tmp_path):
    folder = tmp_path / "var" / "db"
    store = Store.open(f"sqlite:///{folder}/station.db")
    try:
        store.create_token(Role.CUSTOMER, "acme")  # a write: the WAL and shared-memory files exist now
        files = sorted(p.name for p in folder.iterdir())
        assert "station.db-wal" in files and "station.db-shm" in files
        assert _mode(folder) == 0o700
        for path in folder.iterdir():
            assert _mode(path) == 0o600, path
    finally:
        store.close()


def test_an_existing_loose_database_is_tightened_and_a_loose_folder_named(tmp_path, caplog):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    db = folder / "old.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    caplog.set_level(logging.WARNING)
    Store.open(f"sqlite:///{db}").close()
    assert _mode(db) == 0o600
    assert f"chmod 0700 {folder}" in caplog.text


def _response_with_inner(inner: str, sealed) -> str:
    response_key = ResponseKey.model_validate(sealed.response_key.export_public(as_dict=True))
    return _encrypt(inner.encode(), response_key.to_jwk(), {"kid": response_key.kid, "cty": "JWS"})


@pytest.fixture
def sealed_and_payload(tmp_path):
    from station.protocol.keys import KeyStore

    keystore = KeyStore.init(tmp_path / "keys")
    sealed = seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])
    payload = PinResponse.model_validate({
        "version": 1, "requestId": sealed.pin_request_id, "requestDigest": request_digest(sealed.pin_request_jwe),
        "serialNumber": None, "firmwareVersion": None, "aaguid": "00000000-0000-0000-0000-000000000000",
        "issuedAt": 0, "pin": "135792", "forcePINChange": True,
    })
    return keystore, sealed, payload


@pytest.mark.parametrize("form", ["general", "flattened", "two-parts", "padded"])
def test_the_customer_refuses_any_inner_jws_but_compact_by_name(sealed_and_payload, form):
    keystore, sealed, payload = sealed_and_payload
    signer = keystore.signing_key()
    jws = JWS(payload.to_json_bytes())
    jws.add_signature(signer, alg=SIGNING_ALG, protected={"alg": SIGNING_ALG, "kid": signer["kid"], "typ": "JOSE"})
    if form == "general":
        jws.add_signature(signer, alg=SIGNING_ALG, protected={"alg": SIGNING_ALG, "kid": signer["kid"]})
        inner = jws.serialize(compact=False)
    elif form == "flattened":
        inner = jws.serialize(compact=False)
    elif form == "two-parts":
        inner = ".".join(jws.serialize(compact=True).split(".")[:2])
    else:
        inner = jws.serialize(compact=True) + "=="
    response = _response_with_inner(inner, sealed)
    with pytest.raises(NotCompactJws) as refused:
        open_response(response, response_private_key=sealed.response_key, signing_jwks=keystore.jwks("signing"),
                      request_jwe=sealed.pin_request_jwe)
    assert refused.value.code == "response_not_compact_jws" and isinstance(refused.value, ResponseRejected)
    with pytest.raises(NotCompactJws):
        open_item_responses(sealed=sealed, pin_response_jwe=response, credential_response_jwes=[response],
                            signing_jwks=keystore.jwks("signing"))


def test_the_compact_form_still_opens(sealed_and_payload):
    keystore, sealed, payload = sealed_and_payload
    response = _response_with_inner(keystore.sign(payload.to_json_bytes()), sealed)
    opened = open_response(response, response_private_key=sealed.response_key,
                           signing_jwks=keystore.jwks("signing"), request_jwe=sealed.pin_request_jwe)
    assert opened.pin == "135792"


@pytest.mark.parametrize("unit", ["fido-station.service", "fido-fulfillment.service"])
def test_the_systemd_units_are_sandboxed_without_core_dumps(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(ROOT / "deploy" / "systemd" / unit)
    service = parser["Service"]
    assert service["LimitCORE"] == "0"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes" and service["PrivateTmp"] == "yes"
    assert service["UMask"] == "0077"


def test_the_service_unit_runs_on_public_keys():
    text = (ROOT / "deploy" / "systemd" / "fido-fulfillment.service").read_text()
    assert "--jwks " in text and "--keys" not in text and "allow-private-keys" not in text

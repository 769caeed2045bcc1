"""Keys split by role (issue 17, item 1): the service runs on public keys only, sees rotation,
retirement and revocation without a restart, and refuses to start on private keys unless told;
a station's private-key operations go through one small interface (`backend.KeyBackend`)."""

from __future__ import annotations

import json
import os
import stat
import time
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from station.cli import cli
from station.customer.orders import public_response_key, seal_item, shipment_body
from station.doctor import check_service_private_keys
from station.errors import DecryptFailed, KeyStoreError, UsageError
from station.fulfillment.api import create_app, load_service_keys
from station.fulfillment.store import Role, Store
from station.protocol.backend import KeyBackend, PublicKeys
from station.protocol.jose import ResponseRejected, open_request, open_response, seal_response
from station.protocol.keys import KeyStore, PublishedKeys
from station.protocol.messages import PinResponse

from .conftest import ROOT

OPTIONS = json.loads((ROOT / "fixtures" / "options" / "okta.json").read_text())


@pytest.fixture
def keystore(tmp_path) -> KeyStore:
    return KeyStore.init(tmp_path / "keys")


def _export(keystore: KeyStore, out) -> dict:
    result = CliRunner().invoke(cli, ["keys", "export-public", "--dir", str(keystore.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _touch_later(path) -> None:
    """Make sure the next write is seen as a change even on a coarse-mtime filesystem."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))


def test_export_public_holds_public_members_only(keystore, tmp_path):
    out = tmp_path / "published.jwks"
    document = _export(keystore, out)
    kinds = sorted(k["use"] for k in document["keys"])
    assert kinds == ["enc", "sig"]
    for key in document["keys"]:
        assert "d" not in key and set(key) <= {"kty", "crv", "x", "y", "use", "kid", "alg"}
    published = PublishedKeys.from_file(out)
    assert published.jwks("transport") == keystore.jwks("transport")
    assert published.jwks("signing") == keystore.jwks("signing")
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # public: readable by the service account


@pytest.mark.parametrize("change", [
    lambda k: dict(k, d="AAAA"),              # a private member
    lambda k: dict(k, p="AAAA"),              # an unknown (RSA private) member
    lambda k: dict(k, use="other"),           # neither enc nor sig
    lambda k: dict(k, crv="P-256"),           # not P-384
])
def test_a_published_file_with_anything_but_public_p384_keys_is_refused(keystore, tmp_path, change):
    document = keystore.export_public()
    document["keys"][0] = change(document["keys"][0])
    out = tmp_path / "bad.jwks"
    out.write_text(json.dumps(document))
    with pytest.raises(KeyStoreError):
        PublishedKeys.from_file(out)


def test_a_private_key_export_is_refused_even_when_named_jwks(keystore, tmp_path):
    out = tmp_path / "private.jwks"
    private = json.loads((keystore.path / f"{keystore.signing_kid}.jwk").read_text())
    out.write_text(json.dumps({"keys": [private]}))
    with pytest.raises(KeyStoreError, match="private key material"):
        load_service_keys(jwks_file=str(out), keys_dir=None)


def test_serve_refuses_a_private_key_store_unless_allowed(keystore, tmp_path):
    with pytest.raises(KeyStoreError, match="export-public"):
        load_service_keys(jwks_file=None, keys_dir=str(keystore.path))
    allowed = load_service_keys(jwks_file=None, keys_dir=str(keystore.path), allow_private_keys=True)
    assert isinstance(allowed, PublishedKeys) and allowed.jwks("signing") == keystore.jwks("signing")
    with pytest.raises(UsageError):
        load_service_keys(jwks_file=None, keys_dir=None)
    result = CliRunner().invoke(cli, ["serve", "--db", f"sqlite:///{tmp_path}/s.db", "--keys", str(keystore.path)])
    assert result.exit_code == 1
    assert result.output.startswith("key_store: ") and "--allow-private-keys" in result.output


def test_the_app_holds_public_keys_only(keystore, tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        app = create_app(store, keystore, purge_interval=None)
        held = app.state.keystore
        assert isinstance(held, PublishedKeys) and not isinstance(held, KeyBackend)
        assert not hasattr(held, "decrypt") and not hasattr(held, "sign")
        for kind in ("transport", "signing"):
            assert all("d" not in k for k in held.jwks(kind)["keys"])
    finally:
        store.close()


def test_rotation_retirement_and_revocation_reach_a_running_service(keystore, tmp_path):
    out = tmp_path / "published.jwks"
    _export(keystore, out)
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    token = store.create_token(Role.CUSTOMER, "acme")
    client = TestClient(create_app(store, PublishedKeys.from_file(out), purge_interval=None))
    try:
        old_transport = keystore.jwks("transport")["keys"][0]["kid"]
        old_signing = keystore.signing_kid
        old_item = seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])

        new_transport = keystore.rotate("transport")
        new_signing = keystore.rotate("signing")
        keystore.retire(old_transport)
        keystore.revoke(old_signing)
        _touch_later(out)
        _export(keystore, out)

        transport = client.get("/.well-known/transport-keys.jwks").json()
        signing = client.get("/.well-known/signing-keys.jwks").json()
        assert [k["kid"] for k in transport["keys"]] == [new_transport]
        assert [k["kid"] for k in signing["keys"]] == [new_signing]
        refused = client.post("/v1/fpr/shipments", json=shipment_body([old_item]),
                              headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 400 and refused.json()["error_code"] == "decrypt_failed"
        new_item = seal_item(transport_jwks=transport, options=[OPTIONS])
        accepted = client.post("/v1/fpr/shipments", json=shipment_body([new_item]),
                               headers={"Authorization": f"Bearer {token}"})
        assert accepted.status_code == 201, accepted.text
    finally:
        client.close()
        store.close()


def test_a_broken_export_keeps_the_last_good_keys(keystore, tmp_path):
    out = tmp_path / "published.jwks"
    _export(keystore, out)
    published = PublishedKeys.from_file(out)
    before = published.jwks("transport")
    out.write_text('{"keys": [')  # a half-copied file
    assert published.jwks("transport") == before
    published.check_transport_kid(before["keys"][0]["kid"])


def test_revoke_rules(keystore):
    with pytest.raises(KeyStoreError, match="rotate"):
        keystore.revoke(keystore.signing_kid)  # the only active signing key
    transport = keystore.jwks("transport")["keys"][0]["kid"]
    with pytest.raises(KeyStoreError, match="retire it instead"):
        keystore.revoke(transport)
    old = keystore.signing_kid
    keystore.rotate("signing")
    keystore.revoke(old)
    assert keystore.signing_kid != old
    assert old not in [k["kid"] for k in KeyStore.open(keystore.path).jwks("signing")["keys"]]


def test_a_response_signed_by_a_revoked_key_is_refused_but_a_retired_ones_is_read(keystore):
    item = seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])
    payload = PinResponse.model_validate({
        "version": 1, "requestId": item.pin_request_id,
        "requestDigest": "A" * 43, "serialNumber": None, "firmwareVersion": None,
        "aaguid": "00000000-0000-0000-0000-000000000000", "issuedAt": 0, "pin": "135792", "forcePINChange": True,
    })
    from station.protocol.jose import request_digest

    payload = payload.model_copy(update={"request_digest": request_digest(item.pin_request_jwe)})
    response_key = public_response_key(item.response_key)
    sealed_by_first = seal_response(payload, response_key=response_key, keystore=keystore)
    first = keystore.signing_kid
    keystore.rotate("signing")
    keystore.retire(first)
    opened = open_response(sealed_by_first, response_private_key=item.response_key,
                           signing_jwks=keystore.jwks("signing"), request_jwe=item.pin_request_jwe)
    assert opened.request_id == item.pin_request_id  # retired: still published, still read
    keystore.revoke(first)
    with pytest.raises(ResponseRejected, match="not in the signing JWKS"):
        open_response(sealed_by_first, response_private_key=item.response_key,
                      signing_jwks=keystore.jwks("signing"), request_jwe=item.pin_request_jwe)


class _CountingBackend:
    """Another backend (as an HSM would be): only the KeyBackend members, delegating."""

    def __init__(self, inner: KeyStore) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def jwks(self, kind):
        return self._inner.jwks(kind)

    def check_transport_kid(self, kid):
        self._inner.check_transport_kid(kid)

    def decrypt(self, compact, *, kid, max_plaintext):
        self.calls.append("decrypt")
        return self._inner.decrypt(compact, kid=kid, max_plaintext=max_plaintext)

    def sign(self, payload):
        self.calls.append("sign")
        return self._inner.sign(payload)


def test_open_and_seal_use_nothing_but_the_backend_interface(keystore):
    backend = _CountingBackend(keystore)
    assert isinstance(backend, KeyBackend) and isinstance(keystore, KeyBackend)
    assert isinstance(PublishedKeys.of_document(keystore.export_public()), PublicKeys)
    item = seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])
    request = open_request(item.pin_request_jwe, keystore=backend, now=datetime.now(timezone.utc))
    with pytest.raises(DecryptFailed):
        open_request(item.pin_request_jwe, keystore=_CountingBackend(KeyStore.init(keystore.path.parent / "other")))
    from station.protocol.jose import request_digest

    payload = PinResponse.model_validate({
        "version": 1, "requestId": request.request_id, "requestDigest": request_digest(item.pin_request_jwe),
        "serialNumber": "1", "firmwareVersion": "5.7.1", "aaguid": "00000000-0000-0000-0000-000000000000",
        "issuedAt": int(time.time()), "pin": "135792", "forcePINChange": True,
    })
    sealed = seal_response(payload, response_key=request.response_key, keystore=backend)
    assert backend.calls == ["decrypt", "sign"]
    assert open_response(sealed, response_private_key=item.response_key, signing_jwks=keystore.jwks("signing"),
                         request_jwe=item.pin_request_jwe).pin == "135792"


def test_doctor_warns_when_the_service_config_points_at_private_keys(keystore, tmp_path):
    config = tmp_path / "station.toml"
    config.write_text(f'[serve]\nkeys_dir = "{keystore.path}"\n')
    check = check_service_private_keys(config)
    assert not check.ok and not check.required and "export-public" in check.fix
    out = tmp_path / "published.jwks"
    _export(keystore, out)
    config.write_text(f'[serve]\njwks_file = "{out}"\n')
    assert check_service_private_keys(config).ok

"""station.protocol.keys: the key store folder, rotation, retirement, JWKS."""

from __future__ import annotations

import json
import stat

import pytest

from station.errors import DecryptFailed, KeyStoreError
from station.protocol.keys import METADATA_FILE, KeyStore


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore.init(tmp_path / "keys")


def test_init_makes_one_key_of_each_kind_owner_only(store):
    kinds = sorted(e.kind for e in store.entries)
    assert kinds == ["signing", "transport"]
    assert _mode(store.path) == 0o700
    files = sorted(p.name for p in store.path.iterdir())
    assert files == sorted([METADATA_FILE] + [f"{e.kid}.jwk" for e in store.entries])
    for path in store.path.iterdir():
        assert _mode(path) == 0o600, path


def test_init_refuses_existing_keys(store):
    with pytest.raises(KeyStoreError, match="refusing"):
        KeyStore.init(store.path)


def test_init_refuses_a_folder_with_a_stray_key_file(tmp_path):
    (tmp_path / "old.jwk").write_text("{}")
    with pytest.raises(KeyStoreError):
        KeyStore.init(tmp_path)


def test_open_needs_an_existing_store(tmp_path):
    with pytest.raises(KeyStoreError, match="station keys init"):
        KeyStore.open(tmp_path / "absent")


def test_open_refuses_unreadable_metadata(store):
    (store.path / METADATA_FILE).write_text("{not json")
    with pytest.raises(KeyStoreError, match="unreadable"):
        KeyStore.open(store.path)


def test_open_refuses_a_missing_key_file(store):
    kid = store.signing_kid
    (store.path / f"{kid}.jwk").unlink()
    with pytest.raises(KeyStoreError, match=kid):
        KeyStore.open(store.path).signing_key()


def test_reopened_store_holds_the_same_keys(store):
    again = KeyStore.open(store.path)
    assert again.entries == store.entries
    assert again.signing_key().thumbprint() == store.signing_key().thumbprint()


def test_rotate_adds_an_active_key_and_keeps_the_old_one_usable(store):
    old = store.jwks("transport")["keys"][0]["kid"]
    new = store.rotate("transport")
    reopened = KeyStore.open(store.path)
    assert [k["kid"] for k in reopened.jwks("transport")["keys"]] == [old, new]
    assert reopened.transport_key(old)["kid"] == old
    assert reopened.transport_key(new)["kid"] == new
    assert _mode(store.path / f"{new}.jwk") == 0o600


def test_signing_key_is_the_newest_active_one(store):
    first = store.signing_kid
    second = store.rotate("signing")
    assert store.signing_kid == second and store.signing_key()["kid"] == second
    store.retire(second)
    assert store.signing_kid == first


def test_retired_transport_key_no_longer_opens_nor_is_published(store):
    old = store.jwks("transport")["keys"][0]["kid"]
    store.rotate("transport")
    store.retire(old)
    reopened = KeyStore.open(store.path)
    with pytest.raises(DecryptFailed, match="retired"):
        reopened.transport_key(old)
    assert old not in [k["kid"] for k in reopened.jwks("transport")["keys"]]


def test_retired_signing_key_stays_in_the_signing_jwks(store):
    old = store.signing_kid
    store.rotate("signing")
    store.retire(old)
    assert old in [k["kid"] for k in store.jwks("signing")["keys"]]
    assert store.signing_kid != old


def test_the_last_active_key_of_a_kind_cannot_be_retired(store):
    with pytest.raises(KeyStoreError, match="rotate"):
        store.retire(store.signing_kid)
    with pytest.raises(KeyStoreError, match="rotate"):
        store.retire(store.jwks("transport")["keys"][0]["kid"])


def test_retire_is_idempotent_and_refuses_unknown_kids(store):
    old = store.signing_kid
    store.rotate("signing")
    store.retire(old)
    store.retire(old)
    assert [e.status for e in store.entries if e.kid == old] == ["retired"]
    with pytest.raises(KeyStoreError, match="no key"):
        store.retire("transport-unknown")


def test_transport_key_refuses_unknown_kids_and_signing_kids(store):
    with pytest.raises(DecryptFailed):
        store.transport_key("transport-unknown")
    with pytest.raises(DecryptFailed):
        store.transport_key(store.signing_kid)


def test_unknown_kind_is_refused(store):
    with pytest.raises(KeyStoreError, match="kind"):
        store.rotate("backup")
    with pytest.raises(KeyStoreError, match="kind"):
        store.jwks("backup")


def test_jwks_never_hold_private_members(store):
    store.rotate("transport")
    store.rotate("signing")
    for kind, use in (("transport", "enc"), ("signing", "sig")):
        keys = store.jwks(kind)["keys"]
        assert len(keys) == 2
        for key in keys:
            assert "d" not in key
            assert key["kty"] == "EC" and key["crv"] == "P-384" and key["use"] == use
            assert set(key) <= {"kty", "crv", "x", "y", "use", "kid", "alg"}
            assert (key.get("alg") == "ES384") == (kind == "signing")


def test_private_files_hold_the_private_key_and_no_temp_files_remain(store):
    store.rotate("transport")
    for entry in store.entries:
        private = json.loads((store.path / f"{entry.kid}.jwk").read_text())
        assert private["kid"] == entry.kid and "d" in private
    assert not [p for p in store.path.iterdir() if p.name.endswith(".tmp")]
    assert all(_mode(p) == 0o600 for p in store.path.iterdir())

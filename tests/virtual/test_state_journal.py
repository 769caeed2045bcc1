"""The key's state on disk (station.virtual.state): a snapshot and a journal of changes. Every
change is durable before its command answers; a crash or a pull at any byte of a write leaves
the state before or after that command, never a mixture; the signature counter never repeats.

A "crash" here is the files as they are while the key is open (copied aside before any close),
or those files with the journal cut at a given byte, opened as another key.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin

from station.virtual import VirtualAuthenticator, VirtualCtapDevice
from station.virtual import state as state_module
from station.virtual.authenticator import COUNTER_RESERVE
from station.virtual.state import StateFile

PIN = "123456"
RP = {"id": "example.com", "name": "Example"}
PARAMS = [{"type": "public-key", "alg": -7}]
HASH = b"\x11" * 32


class Key:
    def __init__(self, path: Path, pin: str | None) -> None:
        self.path = path
        self.authenticator = VirtualAuthenticator.create(path, "yubikey-5-nfc-5.7")
        self.device = VirtualCtapDevice(self.authenticator)
        if pin is not None:
            ClientPin(Ctap2(self.device)).set_pin(pin)


def make_key(path: Path, *, pin: str | None = None) -> Key:
    """A fresh YubiKey 5.7 profile key at `path` (its PIN set when given), open."""
    return Key(path, pin)


def journal(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def crash_copy(path: Path, folder: Path, *, journal_bytes: int | None = None) -> Path:
    """The key's files as a crash would leave them (the journal cut after `journal_bytes`)."""
    folder.mkdir(exist_ok=True)
    copy = folder / path.name
    shutil.copy(path, copy)
    if journal(path).exists():
        data = journal(path).read_bytes()
        journal(copy).write_bytes(data if journal_bytes is None else data[:journal_bytes])
    return copy


def make_rk(ctap: Ctap2, user_id: bytes):
    cp = ClientPin(ctap)
    token = cp.get_pin_token(PIN, ClientPin.PERMISSION.MAKE_CREDENTIAL, RP["id"])
    return ctap.make_credential(HASH, RP, {"id": user_id, "name": user_id.decode()}, PARAMS,
                                options={"rk": True}, pin_uv_param=cp.protocol.authenticate(token, HASH),
                                pin_uv_protocol=cp.protocol.VERSION)


def test_a_crash_at_any_byte_of_the_journal_leaves_a_whole_state(tmp_path):
    """setPIN, then two discoverable credentials, each one journal line: cut anywhere, the key
    opens with the PIN and the credentials of the lines that were whole, and nothing else."""
    path = tmp_path / "k.json"
    key = make_key(path)
    ctap = Ctap2(key.device)
    ClientPin(ctap).set_pin(PIN)
    make_rk(ctap, b"alice")
    make_rk(ctap, b"bob")
    data = journal(path).read_bytes()
    ends = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    assert len(ends) >= 3  # the PIN, each credential (a counter reservation may add one)
    outcomes = set()
    for cut in range(len(data) + 1):
        copy = crash_copy(path, tmp_path / f"cut{cut}", journal_bytes=cut)
        with VirtualAuthenticator.open(copy) as opened:
            s = opened.state
            whole_lines = sum(1 for end in ends if end <= cut)
            users = tuple(c.user["name"] for c in s.credentials)
            outcomes.add((s.pin_set, users))
            assert s.pin_set == (whole_lines >= 1)
            assert users in ((), ("alice",), ("alice", "bob"))
            assert not journal(copy).exists()  # folded into a fresh snapshot at power-up
        with VirtualAuthenticator.open(copy) as again:  # and that snapshot reads back the same
            assert (again.state.pin_set, tuple(c.user["name"] for c in again.state.credentials)) == (s.pin_set, users)
        shutil.rmtree(tmp_path / f"cut{cut}")
    assert outcomes == {(False, ()), (True, ()), (True, ("alice",)), (True, ("alice", "bob"))}
    key.authenticator.close()


def test_garbage_after_the_last_line_is_dropped_and_the_next_change_is_kept(tmp_path):
    path = tmp_path / "k.json"
    key = make_key(path, pin=PIN)
    copy = crash_copy(path, tmp_path / "crash")
    with open(journal(copy), "ab") as f:
        f.write(b"\x00" * 40 + b"3f2a {\"g\": 1, \"set\": {\"pin_hash\": null}}\n")  # torn / zeroed / forged
    with VirtualAuthenticator.open(copy) as opened:
        assert opened.state.pin_set
        ctap = Ctap2(VirtualCtapDevice(opened))
        with pytest.raises(CtapError):
            ClientPin(ctap).get_pin_token("999999")  # a wrong PIN: retries 8 -> 7, durable
    with VirtualAuthenticator.open(copy) as again:
        assert again.state.pin_set and again.state.pin_retries == 7
    key.authenticator.close()


def test_a_journal_of_an_earlier_snapshot_is_never_replayed(tmp_path):
    """A crash between writing a snapshot and removing the journal it folded in leaves that
    journal beside a newer snapshot: its lines name the old generation and are not replayed."""
    path = tmp_path / "k.json"
    key = make_key(path, pin=PIN)  # setPIN: a journal line of generation 1
    stale = journal(path).read_bytes()
    key.authenticator.close()
    with VirtualAuthenticator.open(path) as opened:  # folded: snapshot generation 2
        Ctap2(VirtualCtapDevice(opened)).reset()  # within the reset window: the PIN is gone
    with VirtualAuthenticator.open(path) as opened:
        assert not opened.state.pin_set
    journal(path).write_bytes(stale)  # the old journal back beside the newer snapshot
    with VirtualAuthenticator.open(path) as opened:
        assert not opened.state.pin_set


def test_the_signature_counter_never_repeats_after_a_crash_and_goes_on_by_one_after_a_close(tmp_path):
    path = tmp_path / "k.json"
    key = make_key(path)
    ctap = Ctap2(key.device)
    made = ctap.make_credential(HASH, RP, {"id": b"u", "name": "u"}, PARAMS)
    allow = [{"type": "public-key", "id": made.auth_data.credential_data.credential_id}]
    counters = [made.auth_data.counter] + [ctap.get_assertion(RP["id"], HASH, allow).auth_data.counter
                                           for _ in range(3)]
    assert counters == list(range(counters[0], counters[0] + 4))
    copy = crash_copy(path, tmp_path / "crash")
    with VirtualAuthenticator.open(copy) as crashed:
        after_crash = Ctap2(VirtualCtapDevice(crashed)).get_assertion(RP["id"], HASH, allow).auth_data.counter
    assert after_crash > counters[-1]
    key.authenticator.close()
    with VirtualAuthenticator.open(path) as reopened:
        after_close = Ctap2(VirtualCtapDevice(reopened)).get_assertion(RP["id"], HASH, allow).auth_data.counter
    assert after_close == counters[-1] + 1


def test_a_reserved_block_of_counter_values_runs_out_into_the_next_one(tmp_path):
    path = tmp_path / "k.json"
    key = make_key(path)
    ctap = Ctap2(key.device)
    made = ctap.make_credential(HASH, RP, {"id": b"u", "name": "u"}, PARAMS)
    allow = [{"type": "public-key", "id": made.auth_data.credential_data.credential_id}]
    last = made.auth_data.counter
    for _ in range(COUNTER_RESERVE + 2):
        counter = ctap.get_assertion(RP["id"], HASH, allow).auth_data.counter
        assert counter == last + 1
        last = counter
        assert key.authenticator.state.sign_count >= counter  # the ceiling is always above
    with VirtualAuthenticator.open(crash_copy(path, tmp_path / "crash")) as crashed:
        assert crashed.state.sign_count >= last
    key.authenticator.close()


def test_a_long_journal_is_folded_into_a_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(state_module, "JOURNAL_COMPACT_BYTES", 600)
    path = tmp_path / "k.json"
    key = make_key(path, pin=PIN)
    ctap = Ctap2(key.device)
    sizes = []
    for n in range(8):
        make_rk(ctap, f"user{n}".encode())
        sizes.append(journal(path).stat().st_size if journal(path).exists() else 0)
    assert json.loads(path.read_text())["generation"] > 1 and min(sizes) < 600  # folded, and begun again
    with VirtualAuthenticator.open(crash_copy(path, tmp_path / "crash")) as crashed:
        assert sorted(c.user["name"] for c in crashed.state.credentials) == [f"user{n}" for n in range(8)]
    key.authenticator.close()


def test_a_failed_append_leaves_no_half_line(tmp_path, monkeypatch):
    """A write that fails (a full disk) raises and is cut back, so the next line is still read."""
    path = tmp_path / "k.json"
    key = make_key(path, pin=PIN)
    file: StateFile = key.authenticator._file  # noqa: SLF001 - the key's own state file
    size = journal(path).stat().st_size
    calls = {"n": 0}
    real = os.fdatasync

    def full_disk(fd):
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full_disk)
    key.authenticator.state.min_pin_length = 6
    with pytest.raises(OSError):
        file.save(key.authenticator.state)
    assert calls["n"] == 1 and journal(path).stat().st_size == size
    monkeypatch.setattr(os, "fdatasync", real)
    key.authenticator.state.min_pin_length = 7
    file.save(key.authenticator.state)
    with VirtualAuthenticator.open(crash_copy(path, tmp_path / "crash")) as crashed:
        assert crashed.state.min_pin_length == 7 and crashed.state.pin_set
    key.authenticator.close()


def test_a_state_file_that_is_not_a_key_is_refused(tmp_path):
    path = tmp_path / "k.json"
    path.write_text("[1, 2]")
    from station.virtual import VirtualError

    with pytest.raises(VirtualError, match="not a virtual key state file"):
        VirtualAuthenticator.open(path)


def test_signatures_write_nothing_until_the_reserved_counter_values_run_out(tmp_path, monkeypatch):
    """The counter is the only state a non-discoverable makeCredential or a getAssertion
    changes: one durable write reserves COUNTER_RESERVE values, then nothing is written."""
    path = tmp_path / "k.json"
    key = make_key(path)
    ctap = Ctap2(key.device)
    made = ctap.make_credential(HASH, RP, {"id": b"u", "name": "u"}, PARAMS)  # reserves the block
    allow = [{"type": "public-key", "id": made.auth_data.credential_data.credential_id}]
    writes = []
    for name in ("_append", "_snapshot"):
        real = getattr(StateFile, name)
        monkeypatch.setattr(StateFile, name, lambda self, *a, _real=real, _name=name: (writes.append(_name), _real(self, *a))[1])
    for _ in range(20):
        ctap.make_credential(HASH, RP, {"id": b"u", "name": "u"}, PARAMS)
        ctap.get_assertion(RP["id"], HASH, allow)
    assert writes == []
    key.authenticator.close()
    assert writes == ["_snapshot"]  # the clean close writes the exact counter

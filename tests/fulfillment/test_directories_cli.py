"""`station directories ...` (issue 15) on the store directly, as an operator runs them: the
secret only from a file or stdin, delete only with the confirmation text, pre-flight findings
in plain words, enroll refusing on a blocking finding, register-pending."""

from __future__ import annotations

import json
import types

import pytest
from click.testing import CliRunner

from station.cli import cli
from station.fulfillment.store import Store
from station.standins import running
from tests.fulfillment.directories_helpers import ADDRESS, Station, attestation_roots, pin_delivery_key

YUBIKEY_5 = "a25342c0-3cdc-4414-8e46-f4807fca511c"


@pytest.fixture
def setup(tmp_path, keystore):
    with running("graph", attestation_roots=attestation_roots()) as (standin, url):
        users = [standin.add_user(f"{n.lower()}@contoso.com", f"{n} Example") for n in ("Ada", "Grace")]
        standin.add_group("Key pilots", [u.id for u in users])
        client_id, secret = standin.add_client()
        db = f"sqlite:///{tmp_path}/service.db"
        store = Store.open(db)
        tenant = store.create_tenant("Contoso")
        store.close()
        (tmp_path / "secret").write_text(secret + "\n")
        (tmp_path / "pin-key.json").write_text(json.dumps(pin_delivery_key().export_public(as_dict=True)))
        (tmp_path / "address.json").write_text(json.dumps(ADDRESS))
        jwks = tmp_path / "public.jwks"
        jwks.write_text(json.dumps(keystore.export_public()))
        common = ["--db", db, "--tenant", str(tenant.id), "--directory-key", str(tmp_path / "dir.key")]
        yield types.SimpleNamespace(standin=standin, url=url, users=users, client_id=client_id, secret=secret,
                                    db=db, common=common, tmp=tmp_path, jwks=jwks, tenant=tenant)


def _run(*args, input=None):
    return CliRunner().invoke(cli, ["directories", *args], input=input)


def _add(s, *extra):
    return _run("add", *s.common, "--kind", "entra", "--name", "Contoso", "--tenant-id", s.standin.tenant_id,
                "--client-id", s.client_id, "--secret-file", str(s.tmp / "secret"),
                "--pin-delivery-key", str(s.tmp / "pin-key.json"), "--default-address", str(s.tmp / "address.json"),
                "--graph-url", s.url, "--login-url", s.url, *extra)


def test_add_list_test_and_the_secret_never_on_screen(setup):
    added = _add(setup)
    assert added.exit_code == 0, added.output
    listed = _run("list", *setup.common, "--json")
    assert listed.exit_code == 0 and json.loads(listed.output)["directories"][0]["name"] == "Contoso"
    tested = _run("test", *setup.common, "Contoso")
    assert tested.exit_code == 0 and tested.output.startswith("success")
    for result in (added, listed, tested, _run("audit", *setup.common, "Contoso")):
        assert setup.secret not in result.output
    assert "--secret" not in " ".join(cli.commands["directories"].commands["add"].params[0].opts)  # sanity
    assert not any(p.name == "secret" for p in cli.commands["directories"].commands["add"].params)


def test_the_secret_comes_from_stdin_or_a_file_only(setup):
    both = _run("add", *setup.common, "--kind", "entra", "--name", "X", "--tenant-id", "t", "--client-id", "c",
                "--pin-delivery-key", str(setup.tmp / "pin-key.json"))
    assert both.exit_code == 1 and "--secret-file" in both.output
    stdin = _run("add", *setup.common, "--kind", "entra", "--name", "ViaStdin", "--tenant-id",
                 setup.standin.tenant_id, "--client-id", setup.client_id, "--secret-stdin",
                 "--pin-delivery-key", str(setup.tmp / "pin-key.json"), "--graph-url", setup.url,
                 "--login-url", setup.url, input=setup.secret + "\n")
    assert stdin.exit_code == 0, stdin.output


def test_a_wrong_secret_is_refused_with_the_directorys_words(setup):
    (setup.tmp / "secret").write_text("wrong")
    refused = _add(setup)
    assert refused.exit_code == 1 and "\ndirectory_credentials_refused: " in refused.output
    assert "Certificates & secrets" in refused.output  # what to change, and where
    assert _run("list", *setup.common, "--json").output.strip().endswith('"directories": []\n}') or \
        json.loads(_run("list", *setup.common, "--json").output) == {"directories": []}


def test_delete_without_the_confirmation_says_what_to_type_and_deletes_nothing(setup):
    _add(setup)
    refused = _run("delete", *setup.common, "Contoso")
    assert refused.exit_code == 1 and 'type "permanently delete"' in refused.output
    wrong = _run("delete", *setup.common, "Contoso", "--confirm", "yes")
    assert wrong.exit_code == 1
    assert json.loads(_run("list", *setup.common, "--json").output)["directories"]
    done = _run("delete", *setup.common, "Contoso", "--confirm", "permanently delete")
    assert done.exit_code == 0
    assert json.loads(_run("list", *setup.common, "--json").output) == {"directories": []}


def test_enroll_refuses_on_a_block_and_prints_every_finding(setup):
    _add(setup)
    setup.standin.set_fido2_policy(state="disabled")
    preflight = _run("preflight", *setup.common, "Contoso", "--group", "Key pilots")
    assert preflight.exit_code == 1 and "BLOCK" in preflight.output
    enroll = _run("enroll", *setup.common, "--jwks", str(setup.jwks), "Contoso", "--group", "Key pilots")
    assert enroll.exit_code == 1 and "BLOCK" in enroll.output and "nothing was enrolled" in enroll.output
    store = Store.open(setup.db)
    try:
        assert store.counts()["queued"] == 0
    finally:
        store.close()


def test_enroll_then_register_pending_and_ship_refuses_a_refused_key(setup, keystore, tmp_path):
    _add(setup, "--challenge-timeout-minutes", "5", "--aaguid", YUBIKEY_5)
    enroll = _run("enroll", *setup.common, "--jwks", str(setup.jwks), "Contoso", "--user", "ada@contoso.com")
    assert enroll.exit_code == 0, enroll.output
    assert "enrolled" in enroll.output
    store = Store.open(setup.db)
    try:
        Station(store, keystore, tmp_path).program_all()
    finally:
        store.close()
    setup.standin.throttle.arm(1, retry_after=3600)
    throttled = _run("register-pending", "--db", setup.db, "--directory-key", str(setup.tmp / "dir.key"),
                     "--jwks", str(setup.jwks))
    assert throttled.exit_code == 0 and "retried later 1" in throttled.output
    audit = _run("audit", *setup.common, "Contoso")
    assert "throttled" in audit.output and "429" in audit.output


def test_station_ship_refuses_a_key_its_directory_refused(setup, keystore, tmp_path, monkeypatch):
    import time

    import station.standins.graph as graph_standin

    _add(setup, "--challenge-timeout-minutes", "5")
    _run("enroll", *setup.common, "--jwks", str(setup.jwks), "Contoso", "--user", "grace@contoso.com")
    store = Store.open(setup.db)
    try:
        Station(store, keystore, tmp_path).program_all()
    finally:
        store.close()
    monkeypatch.setattr(graph_standin, "time", types.SimpleNamespace(time=lambda: time.time() + 3600,
                                                                    monotonic=time.monotonic, sleep=time.sleep))
    refused = _run("register-pending", "--db", setup.db, "--directory-key", str(setup.tmp / "dir.key"),
                   "--jwks", str(setup.jwks))
    assert refused.exit_code == 0 and "refused 1" in refused.output and "station reset" in refused.output
    shipment_id = _run("enrollments", *setup.common, "Contoso").output.split("\t")[1]
    shipped = CliRunner().invoke(cli, ["ship", shipment_id, "--tracking", "1Z999AA10123456784", "--db", setup.db])
    assert shipped.exit_code == 1
    assert shipped.output.startswith("directory_refused:") and "station reset" in shipped.output
    assert "Do not ship" in shipped.output


def test_station_serve_registers_in_the_background_and_stops_cleanly(setup, keystore, tmp_path):
    """`station serve`'s registration thread: the key programmed, the service registers it in the
    directory on its own; SIGTERM stops the service (and the thread) cleanly; the secret is in
    neither the log nor the database."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from station.fulfillment.pgcluster import free_port
    from station.fulfillment.store import Role

    store = Store.open(setup.db)
    token = store.create_token(Role.CUSTOMER, "contoso", tenant_id=setup.tenant.id)
    store.close()
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("station")), "serve", "--db", setup.db, "--jwks", str(setup.jwks),
         "--port", str(port), "--directory-key", str(setup.tmp / "dir.key"), "--registration-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/.well-known/signing-keys.jwks", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        body = {"kind": "entra", "name": "Contoso", "tenant_id": setup.standin.tenant_id, "client_id": setup.client_id,
                "client_secret": setup.secret, "aaguids": [YUBIKEY_5], "default_address": ADDRESS,
                "pin_delivery_key": json.loads((setup.tmp / "pin-key.json").read_text()),
                "endpoints": {"graph_url": setup.url, "login_url": setup.url}}
        assert httpx.post(f"{base}/v1/directories", json=body, headers=headers, timeout=60).status_code == 201
        enrolled = httpx.post(f"{base}/v1/directories/Contoso/enrollments", json={"users": ["ada@contoso.com"]},
                              headers=headers, timeout=60)
        assert enrolled.json()["users"][0]["outcome"] == "enrolled"
        store = Store.open(setup.db)
        try:
            Station(store, keystore, tmp_path).program_all()
        finally:
            store.close()
        deadline = time.monotonic() + 60
        while True:
            state = httpx.get(f"{base}/v1/directories/Contoso/enrollments", headers=headers).json()["enrollments"][0]
            if state["state"] != "pending" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert state["state"] == "registered" and state["method_id"]
    finally:
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=30)
    log = server.stdout.read().decode()
    assert status in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log
    assert setup.secret not in log and token not in log
    assert setup.secret.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("service.db*"))

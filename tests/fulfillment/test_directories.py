"""Directory-connected provisioning (issue 15), the service side, against the Graph and PingOne
stand-ins on loopback through the customer package's real clients: configurations (verified on
ADD, sealed at rest), pre-flight, enrollment (one shipment per user), registration after the
station's submit, the refusal state, audit and tenant isolation."""

from __future__ import annotations

import json
import os
import stat
import time
import types

import pytest

from station.errors import StationError
from station.fulfillment.directories.models import DirectoryCreate, DirectoryEdit
from station.fulfillment.directories.sealing import SealingError, open_box
from station.fulfillment.directories.service import (
    ConfirmationRequired,
    Directories,
    DirectoryRefused,
    PreflightBlocked,
)
from station.fulfillment.errors import BadRequest, Conflict, NotFound
from station.fulfillment.store import ShipmentState, Store
from station.protocol.keys import PublishedKeys
from station.standins import running
from station.vendors import catalogue
from tests.fulfillment.directories_helpers import (
    PING_RP,
    Station,
    attestation_roots,
    entra_body,
    open_pin,
    pin_delivery_key,
    pingone_body,
    sign_in,
)

OWNER, OTHER = "tenant:1", "tenant:2"
ACTOR = "token 7 (contoso)"
YUBIKEY_5 = "a25342c0-3cdc-4414-8e46-f4807fca511c"  # the virtual keys' profile (yubikey-5-nfc-5.7)


@pytest.fixture
def store(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/service.db")
    yield store
    store.close()


@pytest.fixture
def dirs(store, keystore, tmp_path):
    return Directories(store, open_box(tmp_path / "state" / "directory-secrets.key"),
                       PublishedKeys.of_store(keystore.path))


@pytest.fixture
def entra():
    with running("graph", attestation_roots=attestation_roots()) as (standin, url):
        users = [standin.add_user(f"{n.lower()}@contoso.com", f"{n} Example") for n in ("Ada", "Grace", "Alan")]
        group = standin.add_group("Key pilots", [u.id for u in users])
        client_id, secret = standin.add_client()
        yield types.SimpleNamespace(standin=standin, url=url, users=users, group=group, client_id=client_id,
                                    secret=secret)


@pytest.fixture
def ping():
    with running("pingone", attestation_roots=attestation_roots()) as (standin, url):
        users = [standin.add_user(f"{n.lower()}@example.org") for n in ("Lee", "Kim")]
        policy = standin.add_policy(PING_RP)
        client_id, secret = standin.add_client()
        yield types.SimpleNamespace(standin=standin, url=url, users=users, policy=policy, client_id=client_id,
                                    secret=secret)


def _add_entra(dirs, entra, pin_key, owner=OWNER, **extra):
    return dirs.add(owner, DirectoryCreate.model_validate(
        entra_body(entra.standin, entra.url, entra.client_id, entra.secret, pin_key, **extra)), actor=ACTOR)


# -- the secret at rest -------------------------------------------------------------------------


def test_the_key_file_is_made_0600_on_first_use_and_a_wider_one_is_refused(tmp_path):
    path = tmp_path / "state" / "directory-secrets.key"
    box = open_box(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealed = box.seal("s3cr3t-value", "tenant:1\x00Contoso\x00secret")
    assert open_box(path).open(sealed, "tenant:1\x00Contoso\x00secret") == "s3cr3t-value"  # same key again
    with pytest.raises(SealingError, match="another key|moved"):
        box.open(sealed, "tenant:2\x00Contoso\x00secret")  # copied to another tenant's row
    with pytest.raises(SealingError):
        open_box(tmp_path / "other.key").open(sealed, "tenant:1\x00Contoso\x00secret")
    os.chmod(path, 0o644)
    with pytest.raises(SealingError, match="chmod 600"):
        open_box(path)
    assert "s3cr3t" not in repr(box)


def test_add_verifies_seals_and_never_shows_the_secret(dirs, entra, store, tmp_path):
    config = _add_entra(dirs, entra, pin_delivery_key())
    assert config.view().client_id == entra.client_id
    view = json.dumps(config.view().model_dump(mode="json"))
    assert entra.secret not in view and '"d"' not in view
    assert entra.secret not in repr(config) and entra.secret not in repr(dirs)
    store.close()
    raw = (tmp_path / "service.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("service.db-*"))
    assert entra.secret.encode() not in raw
    response_private = dirs._response_key(dirs._found(OWNER, "Contoso")).export_private(as_dict=True)["d"]
    assert response_private.encode() not in raw
    audit = dirs.audit(OWNER, "Contoso")
    assert [(a["action"], a["outcome"]) for a in audit] == [("add", "ok")]
    assert audit[0]["correlation_id"]


def test_a_wrong_secret_stores_nothing_and_says_what_the_directory_said(dirs, entra):
    body = entra_body(entra.standin, entra.url, entra.client_id, "not-the-secret", pin_delivery_key())
    with pytest.raises(DirectoryRefused) as refused:
        dirs.add(OWNER, DirectoryCreate.model_validate(body), actor=ACTOR)
    assert refused.value.code == "directory_credentials_refused" and refused.value.status == 422
    assert "AADSTS7000215" in refused.value.message or "invalid_client" in refused.value.message
    assert dirs.list(OWNER) == []
    audit = dirs.audit(OWNER, "Contoso")  # the attempt is audited, without the secret
    assert audit[-1]["outcome"] == "refused" and "not-the-secret" not in json.dumps(audit)


def test_a_missing_permission_is_403_in_the_directory_and_refused_on_add(dirs, entra):
    client_id, secret = entra.standin.add_client(roles=["Group.Read.All"])
    body = entra_body(entra.standin, entra.url, client_id, secret, pin_delivery_key())
    with pytest.raises(DirectoryRefused) as refused:
        dirs.add(OWNER, DirectoryCreate.model_validate(body), actor=ACTOR)
    assert refused.value.code == "directory_permission_missing"
    assert refused.value.error_data["http_status"] == 403
    assert dirs.list(OWNER) == []


def test_a_pin_delivery_key_with_a_private_part_is_refused(dirs, entra):
    key = pin_delivery_key()
    body = entra_body(entra.standin, entra.url, entra.client_id, entra.secret, key)
    body["pin_delivery_key"] = key.export_private(as_dict=True)
    with pytest.raises(BadRequest, match="private member"):
        dirs.add(OWNER, DirectoryCreate.model_validate(body), actor=ACTOR)
    assert dirs.list(OWNER) == []


def test_names_are_unique_per_tenant_and_other_tenants_do_not_see_them(dirs, entra):
    key = pin_delivery_key()
    _add_entra(dirs, entra, key)
    with pytest.raises(Conflict):
        _add_entra(dirs, entra, key)
    _add_entra(dirs, entra, key, owner=OTHER)  # the same name in another tenant
    with pytest.raises(NotFound):
        dirs.get("tenant:3", "Contoso")
    with pytest.raises(NotFound):
        dirs.test("tenant:3", "Contoso", actor=ACTOR)
    with pytest.raises(NotFound):
        dirs.audit("tenant:3", "Contoso")


def test_test_connection_reports_success_and_the_directorys_failure(dirs, entra):
    _add_entra(dirs, entra, pin_delivery_key())
    assert dirs.test(OWNER, "Contoso", actor=ACTOR)["ok"] is True
    entra.standin.clients.pop(entra.client_id)  # the customer deleted our app registration
    failed = dirs.test(OWNER, "Contoso", actor=ACTOR)
    assert failed["ok"] is False and failed["message"]
    assert [a["outcome"] for a in dirs.audit(OWNER, "Contoso")][-1] in ("refused", "error")


def test_edit_needs_the_secret_with_a_new_client_id_and_verifies_it(dirs, entra):
    _add_entra(dirs, entra, pin_delivery_key())
    with pytest.raises(ValueError, match="client_secret"):
        DirectoryEdit.model_validate({"client_id": "new"})
    client_id, secret = entra.standin.add_client()
    with pytest.raises(DirectoryRefused):
        dirs.edit(OWNER, "Contoso", DirectoryEdit.model_validate({"client_id": client_id, "client_secret": "wrong"}),
                  actor=ACTOR)
    assert dirs.get(OWNER, "Contoso").client_id == entra.client_id  # unchanged
    edited = dirs.edit(OWNER, "Contoso", DirectoryEdit.model_validate(
        {"name": "Contoso EU", "client_id": client_id, "client_secret": secret}), actor=ACTOR)
    assert edited.name == "Contoso EU" and edited.client_id == client_id
    assert dirs.test(OWNER, "Contoso EU", actor=ACTOR)["ok"]  # the secret re-sealed under the new name
    with pytest.raises(NotFound):
        dirs.get(OWNER, "Contoso")


def test_delete_demands_the_confirmation_text(dirs, entra):
    _add_entra(dirs, entra, pin_delivery_key())
    for wrong in (None, "", "delete", "Permanently Delete"):
        with pytest.raises(ConfirmationRequired, match="permanently delete"):
            dirs.delete(OWNER, "Contoso", wrong, actor=ACTOR)
        assert dirs.get(OWNER, "Contoso")
    dirs.delete(OWNER, "Contoso", "permanently delete", actor=ACTOR)
    with pytest.raises(NotFound):
        dirs.get(OWNER, "Contoso")
    assert dirs.audit(OWNER, "Contoso")[-1]["action"] == "delete"  # the audit stays


# -- pre-flight ----------------------------------------------------------------------------------


def test_preflight_of_a_clean_policy_finds_nothing_to_block(dirs, entra):
    _add_entra(dirs, entra, pin_delivery_key(), aaguids=[YUBIKEY_5])
    findings = dirs.preflight(OWNER, "Contoso", group="Key pilots", actor=ACTOR)
    assert not [f for f in findings if f.level == "block"]


def test_a_disabled_policy_blocks_the_enrollment_and_nothing_is_queued(dirs, entra, store):
    _add_entra(dirs, entra, pin_delivery_key(), aaguids=[YUBIKEY_5])
    entra.standin.set_fido2_policy(state="disabled")
    with pytest.raises(PreflightBlocked) as blocked:
        dirs.enroll(OWNER, "Contoso", group="Key pilots", actor=ACTOR)
    assert any(f["level"] == "block" for f in blocked.value.error_data)
    assert store.counts()["queued"] == 0 and dirs.enrollments(OWNER, "Contoso") == []


def test_an_aaguid_not_allowed_blocks_the_enrollment(dirs, entra, store):
    _add_entra(dirs, entra, pin_delivery_key(), aaguids=[YUBIKEY_5])
    entra.standin.set_fido2_policy(keyRestrictions={"isEnforced": True, "enforcementType": "allow",
                                                    "aaGuids": ["2a55aee6-27cb-42c0-bc6e-04efe999e88a"]})
    with pytest.raises(PreflightBlocked) as blocked:
        dirs.enroll(OWNER, "Contoso", users=["ada@contoso.com"], actor=ACTOR)
    assert YUBIKEY_5 in blocked.value.message
    assert store.counts()["queued"] == 0


def test_the_factory_ships_the_catalogue_by_default(dirs):
    assert set(dirs.shipped_aaguids) == {str(a) for a in catalogue()} and YUBIKEY_5 in dirs.shipped_aaguids


# -- enrollment, registration, sign-in ----------------------------------------------------------------


def test_entra_group_enrollment_registers_and_every_user_signs_in(dirs, entra, store, keystore, tmp_path):
    pin_key = pin_delivery_key()
    _add_entra(dirs, entra, pin_key, aaguids=[YUBIKEY_5])
    findings, outcomes = dirs.enroll(OWNER, "Contoso", group="Key pilots", actor=ACTOR)
    assert [o.outcome for o in outcomes] == ["enrolled"] * 3
    again = dirs.enroll(OWNER, "Contoso", users=["ada@contoso.com"], actor=ACTOR)[1]
    assert [o.outcome for o in again] == ["already_pending"]  # not enrolled twice
    station = Station(store, keystore, tmp_path)
    assert station.program_all() == 3
    done = dirs.register_pending()
    assert len(done.registered) == 3 and not done.refused
    enrollments = {e["user_name"]: e for e in dirs.enrollments(OWNER, "Contoso")}
    for user in entra.users:
        enrollment = enrollments[user.upn]
        assert enrollment["state"] == "registered" and enrollment["method_id"]
        methods = entra.standin.methods[user.id]
        assert [m["id"] for m in methods] == [enrollment["method_id"]]
        assert methods[0]["displayName"].startswith("YubiKey 5") and methods[0]["displayName"].split()[-1].isdigit()
        shipment = store.get_shipment(OWNER, enrollment["shipment_id"])
        assert shipment.state is ShipmentState.PROGRAMMED
        product = shipment.items[0].result
        pin = open_pin(product, pin_key, enrollment["pin_request"], keystore.jwks("signing"))
        result = sign_in(station.keys[enrollment["shipment_id"]], entra.url, user.id, "https://login.microsoft.com", pin)
        assert result.user_verified and result.pin_change_forced
    audit = dirs.audit(OWNER, "Contoso")
    registered = [a for a in audit if a["action"] == "register"]
    assert len(registered) == 3 and all(a["outcome"] == "ok" and a["method_id"] for a in registered)
    assert {a["action"] for a in audit} >= {"add", "resolve", "preflight", "options", "register"}
    assert dirs.register_pending().total == 0  # nothing left to do


def test_throttling_on_register_keeps_it_pending_until_the_retry_after(dirs, entra, store, keystore, tmp_path):
    _add_entra(dirs, entra, pin_delivery_key(), aaguids=[YUBIKEY_5])
    dirs.enroll(OWNER, "Contoso", users=["ada@contoso.com"], actor=ACTOR)
    Station(store, keystore, tmp_path).program_all()
    entra.standin.throttle.arm(1, retry_after=30)
    now = time.time()
    first = dirs.register_pending(now=now)
    assert len(first.throttled) == 1 and not first.registered
    assert dirs.enrollments(OWNER, "Contoso")[0]["state"] == "pending"
    assert dirs.register_pending(now=now + 5).total == 0  # before the Retry-After: not tried
    assert len(dirs.register_pending(now=now + 31).registered) == 1
    outcomes = [a["outcome"] for a in dirs.audit(OWNER, "Contoso") if a["action"] == "register"]
    assert outcomes == ["throttled", "ok"]


def test_an_expired_challenge_on_register_leaves_the_item_refused_and_unshippable(
        dirs, entra, store, keystore, tmp_path, monkeypatch):
    import station.standins.graph as graph_standin

    _add_entra(dirs, entra, pin_delivery_key(), aaguids=[YUBIKEY_5], challenge_timeout_minutes=5)
    dirs.enroll(OWNER, "Contoso", users=["grace@contoso.com"], actor=ACTOR)
    Station(store, keystore, tmp_path).program_all()
    later = types.SimpleNamespace(time=lambda: time.time() + 3600, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(graph_standin, "time", later)  # an hour later, at the directory
    done = dirs.register_pending()
    assert len(done.refused) == 1
    enrollment = dirs.enrollments(OWNER, "Contoso")[0]
    assert enrollment["state"] == "refused" and "expired" in enrollment["message"]
    shipment = store.get_shipment(OWNER, enrollment["shipment_id"])
    assert shipment.state is ShipmentState.PROCESSING_ERROR
    assert shipment.items[0].result["error_code"] == "directory_refused"
    assert "expired" in shipment.items[0].result["error_message"]
    with pytest.raises(Conflict, match="station reset") as refused:
        store.set_state(enrollment["shipment_id"], ShipmentState.SHIPPED, tracking_number="1Z999")
    assert refused.value.code == "directory_refused"
    assert [f.error_code for f in store.failed_items()] == ["directory_refused"]


def test_a_user_without_an_address_is_skipped_and_nothing_is_half_made(dirs, entra, store):
    body = entra_body(entra.standin, entra.url, entra.client_id, entra.secret, pin_delivery_key(),
                      aaguids=[YUBIKEY_5])
    body.pop("default_address")
    dirs.add(OWNER, DirectoryCreate.model_validate(body), actor=ACTOR)
    outcomes = dirs.enroll(OWNER, "Contoso", users=["alan@contoso.com"], actor=ACTOR)[1]
    assert [o.outcome for o in outcomes] == ["skipped"] and "address" in outcomes[0].message
    assert store.counts()["queued"] == 0 and dirs.enrollments(OWNER, "Contoso") == []


def test_pingone_enrollment_activates_the_device_and_the_user_signs_in(dirs, ping, store, keystore, tmp_path):
    pin_key = pin_delivery_key()
    dirs.add(OWNER, DirectoryCreate.model_validate(
        pingone_body(ping.standin, ping.url, ping.client_id, ping.secret, pin_key, ping.policy.id,
                     aaguids=[YUBIKEY_5])), actor=ACTOR)
    outcomes = dirs.enroll(OWNER, "Example", users=[u.username for u in ping.users], actor=ACTOR)[1]
    assert [o.outcome for o in outcomes] == ["enrolled", "enrolled"]
    station = Station(store, keystore, tmp_path)
    station.program_all()
    assert len(dirs.register_pending().registered) == 2
    for enrollment, user in zip(dirs.enrollments(OWNER, "Example"), ping.users):
        assert enrollment["state"] == "registered"
        assert ping.standin.devices[enrollment["method_id"]].status == "ACTIVE"
        product = store.get_shipment(OWNER, enrollment["shipment_id"]).items[0].result
        pin = open_pin(product, pin_key, enrollment["pin_request"], keystore.jwks("signing"))
        result = sign_in(station.keys[enrollment["shipment_id"]], ping.url, user.id, f"https://{PING_RP}", pin)
        assert result.user_verified


def test_pingone_expired_activation_is_a_directory_refusal(dirs, ping, store, keystore, tmp_path):
    dirs.add(OWNER, DirectoryCreate.model_validate(
        pingone_body(ping.standin, ping.url, ping.client_id, ping.secret, pin_delivery_key(), ping.policy.id,
                     aaguids=[YUBIKEY_5])), actor=ACTOR)
    dirs.enroll(OWNER, "Example", users=[ping.users[0].username], actor=ACTOR)
    Station(store, keystore, tmp_path).program_all()
    for device in ping.standin.devices.values():
        device.expires_at = 0
    assert len(dirs.register_pending().refused) == 1
    enrollment = dirs.enrollments(OWNER, "Example")[0]
    assert store.get_shipment(OWNER, enrollment["shipment_id"]).state is ShipmentState.PROCESSING_ERROR


def test_deleting_a_configuration_withdraws_its_queued_keys_and_refuses_programmed_ones(
        dirs, entra, store, keystore, tmp_path):
    _add_entra(dirs, entra, pin_delivery_key(), aaguids=[YUBIKEY_5])
    dirs.enroll(OWNER, "Contoso", users=["ada@contoso.com"], actor=ACTOR)
    programmed = dirs.enrollments(OWNER, "Contoso")[0]["shipment_id"]
    Station(store, keystore, tmp_path).program_all()
    dirs.enroll(OWNER, "Contoso", users=["grace@contoso.com"], actor=ACTOR)
    queued = dirs.enrollments(OWNER, "Contoso")[1]["shipment_id"]
    dirs.delete(OWNER, "Contoso", "permanently delete", actor=ACTOR)
    with pytest.raises(NotFound):
        store.get_shipment(OWNER, queued)  # no station will program a key nobody can register
    assert store.counts()["queued"] == 0
    assert dirs.register_pending().refused == [programmed]
    shipment = store.get_shipment(OWNER, programmed)
    assert shipment.state is ShipmentState.PROCESSING_ERROR and "deleted" in shipment.items[0].result["error_message"]


def test_no_secret_token_or_pin_in_the_audit_or_the_logs(dirs, entra, store, keystore, tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    pin_key = pin_delivery_key()
    _add_entra(dirs, entra, pin_key, aaguids=[YUBIKEY_5])
    dirs.enroll(OWNER, "Contoso", users=["ada@contoso.com"], actor=ACTOR)
    Station(store, keystore, tmp_path).program_all()
    dirs.register_pending()
    enrollment = dirs.enrollments(OWNER, "Contoso")[0]
    product = store.get_shipment(OWNER, enrollment["shipment_id"]).items[0].result
    pin = open_pin(product, pin_key, enrollment["pin_request"], keystore.jwks("signing")).reveal()
    text = json.dumps(dirs.audit(OWNER, "Contoso")) + caplog.text
    assert entra.secret not in text and pin not in text and "Bearer" not in text


def test_configurations_enrollments_and_registration_on_both_backends(db_url, keystore, entra, tmp_path):
    """The same round on SQLite and PostgreSQL (the tables come from the migration step on an
    older database, test_migrations.py)."""
    store = Store.open(db_url)
    try:
        dirs = Directories(store, open_box(tmp_path / "k.key"), PublishedKeys.of_store(keystore.path))
        _add_entra(dirs, entra, pin_delivery_key(), aaguids=[YUBIKEY_5])
        assert [o.outcome for o in dirs.enroll(OWNER, "Contoso", users=["ada@contoso.com"], actor=ACTOR)[1]] == [
            "enrolled"]
        Station(store, keystore, tmp_path).program_all()
        assert len(dirs.register_pending().registered) == 1
        assert dirs.enrollments(OWNER, "Contoso")[0]["state"] == "registered"
    finally:
        store.close()


def test_the_background_pass_registers_and_stops_cleanly(dirs, entra, store, keystore, tmp_path):
    """`station serve`'s thread: it finds the programmed key, registers it, and stops when asked."""
    from station.fulfillment.directories.service import RegistrationLoop

    _add_entra(dirs, entra, pin_delivery_key(), aaguids=[YUBIKEY_5])
    dirs.enroll(OWNER, "Contoso", users=["ada@contoso.com"], actor=ACTOR)
    loop = RegistrationLoop(store, lambda: dirs, interval=0.05).start()
    try:
        Station(store, keystore, tmp_path).program_all()
        deadline = time.monotonic() + 60
        while dirs.enrollments(OWNER, "Contoso")[0]["state"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.stop()
    assert not loop._thread.is_alive()
    assert dirs.enrollments(OWNER, "Contoso")[0]["state"] == "registered"


def test_the_recipient_and_address_come_from_the_directory_user_where_complete():
    from station.fulfillment.directories.service import shipping_envelope

    graph_user = {"id": "1", "userPrincipalName": "kim@contoso.com", "displayName": "Kim Cook", "givenName": "Kim",
                  "surname": "Cook", "mail": "kim.cook@contoso.com", "mobilePhone": "+1 555 0199",
                  "streetAddress": "9 Elm St", "city": "Austin", "state": "TX", "postalCode": "73301", "country": "US"}
    default = {"recipient_company": "Contoso", "recipient_telephone": "+1 555 0100", "street_line1": "1 Main St",
               "street_line2": "", "city": "Springfield", "region": "IL", "postal_code": "62701",
               "country_code_2": "US"}
    own = shipping_envelope(graph_user, default)
    assert own["mailing_address"]["city"] == "Austin" and own["recipient"]["recipient_email"] == "kim.cook@contoso.com"
    assert own["recipient"]["recipient_telephone"] == "+1 555 0199"
    partial = shipping_envelope({**graph_user, "city": None}, default)  # incomplete: the default address
    assert partial["mailing_address"]["city"] == "Springfield" and partial["recipient"]["recipient_lastname"] == "Cook"
    plain = shipping_envelope({"id": "2", "username": "lee@example.org", "displayName": "Lee Park"}, default)
    assert (plain["recipient"]["recipient_firstname"], plain["recipient"]["recipient_lastname"]) == ("Lee", "Park")
    assert shipping_envelope({"id": "3", "userPrincipalName": "x@contoso.com"}, None) is None

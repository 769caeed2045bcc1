"""Issue 15, the directory's own addresses and the one-pending-enrollment guarantee: the real
clients read the users' postal addresses from the Graph and PingOne stand-ins over loopback, and
enrollment ships to them where complete (a country name mapped to ISO 3166 alpha-2), to the
configuration's default address where not (saying why), or skips the user when neither; two
concurrent enrolls of one user queue one key, on SQLite and PostgreSQL."""

from __future__ import annotations

import types

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError

from station.customer.graph import GraphClient
from station.customer.pingone import PingOneClient
from station.customer.settings import GraphSettings, PingOneSettings
from station.errors import UsageError
from station.fulfillment.directories.countries import alpha2
from station.fulfillment.directories.models import DirectoryCreate
from station.fulfillment.directories.sealing import open_box
from station.fulfillment.directories.service import Directories, plan_envelope
from station.fulfillment.store import Store, directory_enrollments
from station.protocol.keys import PublishedKeys
from station.standins import running
from tests.fulfillment.directories_helpers import (
    ADDRESS,
    PING_RP,
    attestation_roots,
    entra_body,
    pin_delivery_key,
    pingone_body,
)

OWNER = "tenant:1"
ACTOR = "token 7 (contoso)"
YUBIKEY_5 = "a25342c0-3cdc-4414-8e46-f4807fca511c"
AUSTIN = {"streetAddress": "500 Congress Ave\nSuite 200", "city": "Austin", "state": "TX", "postalCode": "78701",
          "country": "United States", "mobilePhone": "+1 512 555 0101", "companyName": "Contoso Texas",
          "givenName": "Ada", "surname": "Lovelace", "mail": "ada.lovelace@contoso.com"}


@pytest.fixture
def entra():
    with running("graph", attestation_roots=attestation_roots()) as (standin, url):
        people = {
            "ada": standin.add_user("ada@contoso.com", "Ada Lovelace", **AUSTIN),  # complete
            "grace": standin.add_user("grace@contoso.com", "Grace Hopper", city="Arlington", country="US",
                                      businessPhones=["+1 703 555 0102"]),  # no street: incomplete
            "alan": standin.add_user("alan@contoso.com", "Alan Turing", streetAddress="1 Bletchley Park",
                                     city="Milton Keynes", postalCode="MK3 6EB", country="Narnia"),  # no such country
            "edsger": standin.add_user("edsger@contoso.com", "Edsger Dijkstra"),  # nothing at all
        }
        client_id, secret = standin.add_client()
        yield types.SimpleNamespace(standin=standin, url=url, people=people, client_id=client_id, secret=secret)


@pytest.fixture
def ping():
    with running("pingone", attestation_roots=attestation_roots()) as (standin, url):
        people = {
            "lee": standin.add_user("lee@example.org", given="Lee", family="Park", mobile_phone="+47 555 01 234",
                                    address={"streetAddress": "Karl Johans gate 1", "locality": "Oslo",
                                             "postalCode": "0154", "countryCode": "NO"}),
            "kim": standin.add_user("kim@example.org", given="Kim", family="Cook",
                                    address={"locality": "Bergen", "countryCode": "NO"}),  # no street
        }
        policy = standin.add_policy(PING_RP)
        client_id, secret = standin.add_client()
        yield types.SimpleNamespace(standin=standin, url=url, people=people, policy=policy, client_id=client_id,
                                    secret=secret)


@pytest.fixture
def store(tmp_path):
    opened = Store.open(f"sqlite:///{tmp_path}/service.db")
    yield opened
    opened.close()


def _dirs(store, keystore, tmp_path) -> Directories:
    return Directories(store, open_box(tmp_path / "state" / "directory-secrets.key"),
                       PublishedKeys.of_store(keystore.path))


# -- the clients read what the directory holds, over loopback --------------------------------------

def test_the_graph_client_reads_the_users_address_by_select(entra):
    settings = GraphSettings.from_values(tenant_id=entra.standin.tenant_id, client_id=entra.client_id,
                                         client_secret=entra.secret, url=entra.url, login_url=entra.url)
    with GraphClient(settings) as client:
        ada = client.get_user("ada@contoso.com")
        assert (ada["streetAddress"], ada["city"], ada["state"], ada["postalCode"], ada["country"]) == (
            "500 Congress Ave\nSuite 200", "Austin", "TX", "78701", "United States")
        assert (ada["givenName"], ada["surname"], ada["mail"], ada["mobilePhone"], ada["companyName"]) == (
            "Ada", "Lovelace", "ada.lovelace@contoso.com", "+1 512 555 0101", "Contoso Texas")
        edsger = client.get_user("edsger@contoso.com")
        assert edsger["streetAddress"] is None and edsger["country"] is None and edsger["businessPhones"] == []
        group = entra.standin.add_group("Key pilots", [p.id for p in entra.people.values()])
        members = {m["userPrincipalName"]: m for m in client.group_members(group.display_name)}
        assert members["grace@contoso.com"]["businessPhones"] == ["+1 703 555 0102"]
        assert members["ada@contoso.com"]["city"] == "Austin"


def test_the_graph_standin_returns_the_address_only_on_select(entra):
    """As Graph: the postal members are "returned only on $select"; an unknown one is a 400."""
    import httpx

    standin, ada = entra.standin, entra.people["ada"]
    token = httpx.post(f"{entra.url}/{standin.tenant_id}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": entra.client_id, "client_secret": entra.secret,
        "scope": "https://graph.microsoft.com/.default"}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    plain = httpx.get(f"{entra.url}/v1.0/users/{ada.id}", headers=auth).json()
    assert plain["mobilePhone"] == "+1 512 555 0101" and "city" not in plain and "streetAddress" not in plain
    chosen = httpx.get(f"{entra.url}/v1.0/users/{ada.id}", headers=auth, params={"$select": "id,city"}).json()
    assert {k for k in chosen if not k.startswith("@odata")} == {"id", "city"} and chosen["city"] == "Austin"
    wrong = httpx.get(f"{entra.url}/v1.0/users/{ada.id}", headers=auth, params={"$select": "id,homeAddress"})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "Request_BadRequest"


def test_the_pingone_client_reads_the_users_address(ping):
    settings = PingOneSettings.from_values(environment_id=ping.standin.environment_id, client_id=ping.client_id,
                                           client_secret=ping.secret, url=ping.url, auth_url=ping.url)
    with PingOneClient(settings) as client:
        lee = client.get_user("lee@example.org")
        assert lee["address"] == {"streetAddress": "Karl Johans gate 1", "locality": "Oslo", "region": None,
                                  "postalCode": "0154", "countryCode": "NO"}
        assert lee["mobilePhone"] == "+47 555 01 234" and lee["name"] == {"given": "Lee", "family": "Park"}
        assert client.get_user(ping.people["kim"].id)["address"]["streetAddress"] is None


def test_the_pingone_standin_leaves_unset_attributes_out_and_wants_alpha2(ping):
    assert "address" not in ping.standin.add_user("nobody@example.org").resource("env")
    with pytest.raises(ValueError, match="alpha-2"):
        ping.standin.add_user("x@example.org", address={"countryCode": "Norway"})


# -- mapping a directory user to the shipment ---------------------------------------------------

def test_country_names_become_iso_3166_alpha_2():
    assert [alpha2(v) for v in ("US", "us", "USA", "United States", "United States of America", "UK",
                                "United Kingdom", "Deutschland", "Côte d'Ivoire", "South Korea")] == [
        "US", "US", "US", "US", "US", "GB", "GB", "DE", "CI", "KR"]
    assert [alpha2(v) for v in ("Narnia", "XX", "", None, "U", "840")] == [None] * 6


def test_the_envelope_says_why_the_directory_address_was_not_used():
    ada = {"id": "1", "userPrincipalName": "ada@contoso.com", "displayName": "Ada Lovelace", **AUSTIN}
    envelope, note = plan_envelope(ada, ADDRESS)
    assert note == "" and envelope["mailing_address"] == {
        "street_line1": "500 Congress Ave", "street_line2": "Suite 200", "city": "Austin", "region": "TX",
        "postal_code": "78701", "country_code_2": "US"}
    assert envelope["recipient"]["recipient_company"] == "Contoso Texas"
    cases = {
        "no street": ({**ada, "streetAddress": None}, "has no street"),
        "Narnia": ({**ada, "country": "Narnia"}, "'Narnia' is not an ISO 3166 country"),
        "no state in the US": ({**ada, "state": ""}, "no state/region (required for US)"),
        "too long": ({**ada, "city": "x" * 61}, "city over 60 characters"),
        "control characters": ({**ada, "city": "Aus\x00tin"}, "control characters"),
        "nothing": ({"id": "2", "userPrincipalName": "e@contoso.com", "displayName": "E D"}, "holds no address"),
    }
    for label, (user, reason) in cases.items():
        envelope, note = plan_envelope(user, ADDRESS)
        assert envelope["mailing_address"]["city"] == "Springfield", label
        assert note.startswith("shipped to the configuration's default address") and reason in note, (label, note)
        envelope, note = plan_envelope(user, None)
        assert envelope is None and reason in note and "nothing was created" in note, label


# -- enrollment through the service ----------------------------------------------------------------

def test_entra_enrollment_ships_to_the_directory_address_where_complete(entra, store, keystore, tmp_path):
    dirs = _dirs(store, keystore, tmp_path)
    dirs.add(OWNER, DirectoryCreate.model_validate(entra_body(
        entra.standin, entra.url, entra.client_id, entra.secret, pin_delivery_key(), aaguids=[YUBIKEY_5])),
        actor=ACTOR)
    outcomes = {o.user: o for o in dirs.enroll(OWNER, "Contoso", users=[
        "ada@contoso.com", "grace@contoso.com", "alan@contoso.com"], actor=ACTOR)[1]}
    assert {u: o.outcome for u, o in outcomes.items()} == dict.fromkeys(outcomes, "enrolled")
    ada = store.get_shipment(OWNER, outcomes["ada@contoso.com"].shipment_id).envelope
    assert ada["mailing_address"]["city"] == "Austin" and ada["mailing_address"]["country_code_2"] == "US"
    assert ada["mailing_address"]["street_line2"] == "Suite 200"
    assert ada["recipient"]["recipient_telephone"] == "+1 512 555 0101"
    assert outcomes["ada@contoso.com"].message is None
    grace = store.get_shipment(OWNER, outcomes["grace@contoso.com"].shipment_id).envelope
    assert grace["mailing_address"]["city"] == "Springfield"  # incomplete in the directory: the default
    assert grace["recipient"]["recipient_telephone"] == "+1 703 555 0102"  # her own phone still
    assert "default address" in outcomes["grace@contoso.com"].message and "no street" in outcomes[
        "grace@contoso.com"].message
    assert "'Narnia' is not an ISO 3166" in outcomes["alan@contoso.com"].message


def test_a_user_with_neither_address_is_reported_and_skipped(entra, store, keystore, tmp_path):
    dirs = _dirs(store, keystore, tmp_path)
    body = entra_body(entra.standin, entra.url, entra.client_id, entra.secret, pin_delivery_key(),
                      aaguids=[YUBIKEY_5])
    body.pop("default_address")
    dirs.add(OWNER, DirectoryCreate.model_validate(body), actor=ACTOR)
    outcomes = {o.user: o for o in dirs.enroll(OWNER, "Contoso", users=["ada@contoso.com", "edsger@contoso.com"],
                                               actor=ACTOR)[1]}
    assert outcomes["ada@contoso.com"].outcome == "enrolled"  # her own address needs no default
    assert outcomes["edsger@contoso.com"].outcome == "skipped"
    assert "holds no address" in outcomes["edsger@contoso.com"].message
    assert [e["user_name"] for e in dirs.enrollments(OWNER, "Contoso")] == ["ada@contoso.com"]
    assert store.counts()["queued"] == 1


def test_pingone_enrollment_ships_to_the_directory_address(ping, store, keystore, tmp_path):
    dirs = _dirs(store, keystore, tmp_path)
    dirs.add(OWNER, DirectoryCreate.model_validate(pingone_body(
        ping.standin, ping.url, ping.client_id, ping.secret, pin_delivery_key(), ping.policy.id,
        aaguids=[YUBIKEY_5])), actor=ACTOR)
    outcomes = {o.user: o for o in dirs.enroll(OWNER, "Example", users=["lee@example.org", "kim@example.org"],
                                               actor=ACTOR)[1]}
    lee = store.get_shipment(OWNER, outcomes["lee@example.org"].shipment_id).envelope
    assert {k: v for k, v in lee["mailing_address"].items() if k != "street_line3"} == {"street_line1": "Karl Johans gate 1", "street_line2": "", "city": "Oslo",
                                      "region": "", "postal_code": "0154", "country_code_2": "NO"}
    assert lee["recipient"]["recipient_telephone"] == "+47 555 01 234"
    kim = store.get_shipment(OWNER, outcomes["kim@example.org"].shipment_id).envelope
    assert kim["mailing_address"]["city"] == "Springfield" and "no street" in outcomes["kim@example.org"].message


# -- one pending enrollment per user ---------------------------------------------------------------

def _race(dirs, name: str, user: str) -> list:
    """Enroll `user` while, between this enroll's already-pending check and its insert, a second
    enroll of the same user runs to its end (the window two concurrent requests share)."""
    ship, second, raced = dirs._ship, [], []

    def racing(*args, **kwargs):
        if not raced:
            raced.append(True)  # the second enroll's own _ship goes straight through
            second.extend(dirs.enroll(OWNER, name, users=[user], actor="token 8 (contoso)")[1])
        return ship(*args, **kwargs)

    dirs._ship = racing
    try:
        first = dirs.enroll(OWNER, name, users=[user], actor=ACTOR)[1]
    finally:
        dirs._ship = ship
    return [*second, *first]


def test_two_racing_pingone_enrolls_queue_one_key_and_delete_the_losers_device(ping, store, keystore, tmp_path):
    dirs = _dirs(store, keystore, tmp_path)
    dirs.add(OWNER, DirectoryCreate.model_validate(pingone_body(
        ping.standin, ping.url, ping.client_id, ping.secret, pin_delivery_key(), ping.policy.id,
        aaguids=[YUBIKEY_5])), actor=ACTOR)
    won, lost = _race(dirs, "Example", "lee@example.org")
    assert (won.outcome, lost.outcome) == ("enrolled", "already_pending")
    assert lost.shipment_id == won.shipment_id
    assert [e["shipment_id"] for e in dirs.enrollments(OWNER, "Example")] == [won.shipment_id]
    assert store.counts()["queued"] == 1  # the loser's shipment went again
    devices = [d for d in ping.standin.devices.values() if d.user_id == ping.people["lee"].id]
    enrollment = dirs.enrollments(OWNER, "Example")[0]
    assert len(devices) == 1  # the loser's FIDO2 device was deleted in PingOne
    with store._tx() as conn:
        device_id = conn.execute(text("SELECT device_id FROM directory_enrollments")).scalar()
    assert devices[0].id == device_id and enrollment["state"] == "pending"


def test_two_racing_entra_enrolls_queue_one_key(entra, store, keystore, tmp_path):
    dirs = _dirs(store, keystore, tmp_path)
    dirs.add(OWNER, DirectoryCreate.model_validate(entra_body(
        entra.standin, entra.url, entra.client_id, entra.secret, pin_delivery_key(), aaguids=[YUBIKEY_5])),
        actor=ACTOR)
    outcomes = _race(dirs, "Contoso", "ada@contoso.com")
    assert [o.outcome for o in outcomes] == ["enrolled", "already_pending"]
    assert store.counts()["queued"] == 1 and len(dirs.enrollments(OWNER, "Contoso")) == 1


def _enrollment(config_id=1, user_id="u-1", state="pending", shipment="s-1") -> dict:
    return {"config_id": config_id, "owner": OWNER, "user_id": user_id, "user_name": "u", "shipment_id": shipment,
            "item_id": 1, "state": state, "origin": "https://login.microsoft.com", "credential_request": "x",
            "credential_request_id": "r", "pin_request": "y", "pin_request_id": "p", "created": 0.0, "updated": 0.0}


def test_the_store_refuses_a_second_pending_enrollment_on_both_backends(db_url):
    store = Store.open(db_url)
    try:
        with store._tx() as conn:
            conn.execute(insert(directory_enrollments).values(_enrollment()))
            conn.execute(insert(directory_enrollments).values(_enrollment(state="registered", shipment="s-0")))
            conn.execute(insert(directory_enrollments).values(_enrollment(user_id="u-2", shipment="s-2")))
            conn.execute(insert(directory_enrollments).values(_enrollment(config_id=2, shipment="s-3")))
        with pytest.raises(IntegrityError):
            with store._tx() as conn:
                conn.execute(insert(directory_enrollments).values(_enrollment(shipment="s-4")))
        with store._tx() as conn:  # once the first is no longer pending, a new one may be
            conn.execute(text("UPDATE directory_enrollments SET state = 'registered' WHERE shipment_id = 's-1'"))
            conn.execute(insert(directory_enrollments).values(_enrollment(shipment="s-5")))
    finally:
        store.close()


def test_the_migration_step_adds_the_index_and_names_older_duplicates(db_url):
    store = Store.open(db_url)
    step = "directories: one pending enrollment per user"
    with store._tx() as conn:  # a database from before the step, holding a duplicate a race made
        conn.execute(text("DROP INDEX directory_enrollments_one_pending"))
        conn.execute(text("DELETE FROM schema_migrations WHERE name = :n"), {"n": step})
        conn.execute(insert(directory_enrollments).values(_enrollment()))
        conn.execute(insert(directory_enrollments).values(_enrollment(shipment="s-2")))
    store.close()
    with pytest.raises(UsageError, match="configuration 1 user 'u-1' \\(2 pending\\)"):
        Store.open(db_url)
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    engine = create_engine(url.set(drivername="postgresql+psycopg") if url.get_backend_name() == "postgresql"
                           else url)
    with engine.begin() as conn:  # the operator cancels one, as the message says
        conn.execute(text("UPDATE directory_enrollments SET state = 'cancelled' WHERE shipment_id = 's-2'"))
    engine.dispose()
    store = Store.open(db_url)
    try:
        with pytest.raises(IntegrityError):
            with store._tx() as conn:
                conn.execute(insert(directory_enrollments).values(_enrollment(shipment="s-3")))
    finally:
        store.close()

"""PingOneClient's directory reads against the PingOne stand-in over loopback HTTP: verify (a
wrong secret, a missing role), users, groups with paging, FIDO policies and their enforcement at
activation, throttling and correlation ids."""

from __future__ import annotations

import uuid

import httpx
import pytest

from station.customer.http import TokenRefused
from station.customer.pingone import PingOneClient, PingOneError, PingOneForbidden, PingOneThrottled
from station.customer.settings import PingOneSettings
from station.standins.pingone import ENVIRONMENT_ADMIN, IDENTITY_DATA_ADMIN, IDENTITY_DATA_READ_ONLY

from tests.customer.conftest import PING_RP
from tests.customer.test_graph_directory import Recording
from tests.customer.test_pingone_client import programmed


def client_for(pingone, *, transport=None, **worker) -> PingOneClient:
    client_id, secret = pingone.standin.add_client(**worker)
    settings = PingOneSettings.from_values(url=pingone.url, auth_url=pingone.url,
                                           environment_id=pingone.standin.environment_id, client_id=client_id,
                                           client_secret=secret, policy_id=pingone.settings.policy_id, rp_id=PING_RP)
    return PingOneClient(settings, transport=transport, sleep=pingone.sleeps)


def bearer(pingone, **worker) -> dict:
    client_id, secret = pingone.standin.add_client(**worker)
    answer = httpx.post(f"{pingone.url}/{pingone.standin.environment_id}/as/token", data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def api(pingone, path: str) -> str:
    return f"{pingone.url}/v1/environments/{pingone.standin.environment_id}{path}"


# -- verify ---------------------------------------------------------------------------------------------

def test_verify_obtains_a_worker_token_and_reads_one_user(pingone):
    pingone.standin.add_user("second@example.org")
    assert pingone.client.verify() == {"ok": True, "users_readable": 1}


def test_a_wrong_secret_is_token_refused_401_invalid_client(pingone):
    settings = PingOneSettings.from_values(url=pingone.url, auth_url=pingone.url,
                                           environment_id=pingone.standin.environment_id,
                                           client_id=pingone.settings.client_id, client_secret="wrong-secret-5678")
    with PingOneClient(settings) as client, pytest.raises(TokenRefused) as refused:
        client.verify()
    assert refused.value.status == 401 and refused.value.provider_code == "invalid_client"
    assert "wrong-secret-5678" not in f"{refused.value} {refused.value!r} {client!r}"


def test_a_missing_role_is_403_access_failed(pingone):
    with client_for(pingone, roles=[ENVIRONMENT_ADMIN]) as client:
        with pytest.raises(PingOneForbidden) as forbidden:
            client.verify()
        assert forbidden.value.status == 403 and forbidden.value.provider_code == "ACCESS_FAILED"
        assert client.fido_policy()["id"] == pingone.settings.policy_id  # policies need only Environment Admin
    with client_for(pingone, roles=[IDENTITY_DATA_ADMIN]) as client:
        assert client.verify()["ok"]
        with pytest.raises(PingOneForbidden):
            client.fido_policy()


def test_read_only_identity_data_reads_users_but_creates_no_device(pingone):
    with client_for(pingone, roles=[IDENTITY_DATA_READ_ONLY]) as client:
        assert client.get_user(pingone.user_id)["username"] == "lee@example.org"
        with pytest.raises(PingOneForbidden):
            client.create_fido2_device(pingone.user_id)


def test_a_worker_without_role_assignments_gets_a_token_and_403s(pingone):
    with client_for(pingone, consented=False) as client:
        with pytest.raises(PingOneForbidden, match="You do not have access"):
            client.verify()
        assert client.tokens.fetches == 1


# -- users and groups -------------------------------------------------------------------------------------

def test_get_user_by_id_or_username(pingone):
    user = pingone.standin.add_user("jo@example.org", given="Jo", family="March")
    expected = {"id": user.id, "username": "jo@example.org", "displayName": "Jo March"}
    assert pingone.client.get_user(user.id) == expected
    assert pingone.client.get_user("JO@example.org") == expected
    assert pingone.client.get_user(pingone.user_id)["displayName"] == "lee@example.org"  # no name: the username


def test_an_unknown_user_is_a_plain_error(pingone):
    with pytest.raises(PingOneError, match="no user with username 'ghost@example.org'"):
        pingone.client.get_user("ghost@example.org")
    with pytest.raises(PingOneError) as missing:
        pingone.client.get_user(str(uuid.uuid4()))
    assert missing.value.status == 404 and missing.value.provider_code == "NOT_FOUND"


def test_group_members_follow_every_next_link(pingone):
    recorder = Recording()
    people = [pingone.standin.add_user(f"u{n}@example.org") for n in range(5)]
    pingone.standin.add_group("Key users", [p.id for p in people])
    pingone.standin.add_group("Others", [pingone.user_id])
    pingone.standin.page_size = 2
    with client_for(pingone, transport=recorder) as client:
        members = client.group_members("Key users")
    assert [m["id"] for m in members] == [p.id for p in people]
    pages = [r for r, _ in recorder.exchanges if r.url.path.endswith("/users")]
    assert len(pages) == 3 and pages[0].url.params["filter"].startswith("memberOfGroups[id eq ")


def test_no_group_or_two_groups_of_that_name_is_a_plain_error(pingone):
    with pytest.raises(PingOneError, match="no group named 'Nobody'") as missing:
        pingone.client.group_members("Nobody")
    assert missing.value.code == "pingone_group_not_found"
    pingone.standin.add_group("Twice")
    pingone.standin.add_group("Twice")
    with pytest.raises(PingOneError, match="2 groups are named 'Twice'"):
        pingone.client.group_members("Twice")


def test_a_group_name_with_a_double_quote_is_a_filter_literal(pingone):
    pingone.standin.add_group('The "A" team', [pingone.user_id])
    assert [m["id"] for m in pingone.client.group_members('The "A" team')] == [pingone.user_id]


def test_unknown_filters_and_parameters_are_refused(pingone):
    headers = bearer(pingone)
    bad = httpx.get(api(pingone, "/users"), params={"filter": 'email sw "a"'}, headers=headers)
    assert bad.status_code == 400 and bad.json()["details"][0]["code"] == "INVALID_FILTER"
    bad = httpx.get(api(pingone, "/users"), params={"expand": "groups"}, headers=headers)
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_REQUEST"


# -- FIDO policies --------------------------------------------------------------------------------------------

def test_fido_policy_by_id_or_the_environment_s_default(pingone):
    second = pingone.standin.add_policy(PING_RP, name="Second", discoverable_credentials="PREFERRED")
    by_id = pingone.client.fido_policy(second.id)
    assert by_id["name"] == "Second" and by_id["discoverableCredentials"] == "PREFERRED" and by_id["default"] is False
    default = pingone.client.fido_policy()
    assert default["id"] == pingone.settings.policy_id and default["default"] is True
    for member in ("discoverableCredentials", "authenticatorAttachment", "userVerification", "backupEligibility",
                   "attestationRequirements", "mdsAuthenticatorsRequirements", "relyingPartyId"):
        assert member in default, member
    assert default["mdsAuthenticatorsRequirements"]["option"] == "GLOBAL"


def test_a_specific_authenticators_list_is_published_and_enforced(pingone, factory):
    pingone.standin.set_policy(pingone.settings.policy_id, allowed_aaguids=["ee882879-721c-4913-9775-3dfcce97072a"])
    mds = pingone.client.fido_policy()["mdsAuthenticatorsRequirements"]
    assert mds["option"] == "SPECIFIC" and mds["allowedAuthenticators"] == [{"id": "ee882879-721c-4913-9775-3dfcce97072a"}]
    device, credential, opened, _ = programmed(pingone, factory)
    with pytest.raises(PingOneError, match=f"{opened.aaguid} is not allowed"):
        pingone.client.activate_fido2_device(pingone.user_id, device["id"], origin=f"https://{PING_RP}",
                                             credential=credential)
    pingone.standin.set_policy(pingone.settings.policy_id, allowed_aaguids=[opened.aaguid])
    active = pingone.client.activate_fido2_device(pingone.user_id, device["id"], origin=f"https://{PING_RP}",
                                                  credential=credential)
    assert active["status"] == "ACTIVE"


def test_a_platform_only_policy_refuses_a_security_key(pingone, factory):
    pingone.standin.set_policy(pingone.settings.policy_id, authenticator_attachment="PLATFORM")
    device, credential, _, _ = programmed(pingone, factory)
    assert credential["authenticatorAttachment"] == "cross-platform"
    with pytest.raises(PingOneError, match="only platform authenticators"):
        pingone.client.activate_fido2_device(pingone.user_id, device["id"], origin=f"https://{PING_RP}",
                                             credential=credential)


def test_an_expired_activation_is_refused(pingone, factory, monkeypatch):
    device, credential, _, _ = programmed(pingone, factory)
    pingone.standin.devices[device["id"]].expires_at = 0
    with pytest.raises(PingOneError, match="expired"):
        pingone.client.activate_fido2_device(pingone.user_id, device["id"], origin=f"https://{PING_RP}",
                                             credential=credential)


def test_no_default_policy_is_a_plain_error(pingone):
    pingone.standin.policies[pingone.settings.policy_id].default = False
    with pytest.raises(PingOneError, match="no default FIDO policy"):
        pingone.client.fido_policy()


def test_an_unknown_policy_is_404(pingone):
    with pytest.raises(PingOneError) as missing:
        pingone.client.fido_policy(str(uuid.uuid4()))
    assert missing.value.status == 404


# -- throttling and correlation ids ---------------------------------------------------------------------------

def test_directory_reads_wait_out_throttling_then_give_up(pingone):
    pingone.standin.throttle.arm(1, retry_after=4)
    assert pingone.client.verify()["ok"]
    assert pingone.sleeps == [4]
    pingone.standin.throttle.arm(10, retry_after=1)
    with pytest.raises(PingOneThrottled):
        pingone.client.group_members("Anything")


def test_the_correlation_id_is_pingone_s_answer_header(pingone):
    recorder = Recording()
    with client_for(pingone, transport=recorder) as client:
        client.get_user(pingone.user_id)
        request, response = recorder.exchanges[-1]
        assert uuid.UUID(request.headers["client-request-id"]).version == 4
        assert client.last_correlation_id == response.headers["correlation-id"] != request.headers["client-request-id"]
        with pytest.raises(PingOneError) as missing:
            client.get_user("ghost@example.org")
        assert missing.value.correlation_id == recorder.exchanges[-1][1].headers["correlation-id"]


@pytest.mark.parametrize("kind", ["graph", "pingone"])
def test_the_demo_seed_has_a_group_of_all_its_users(kind):
    from station.standins import DEMO_GROUP, demo_users, running, seed

    with running(kind) as (standin, url):
        seed(kind, standin, 3)
        seed(kind, standin, 4)  # a second seed keeps one group, with every user
        client_id, secret = standin.add_client()
        if kind == "graph":
            from station.customer.graph import GraphClient
            from station.customer.settings import GraphSettings

            client = GraphClient(GraphSettings.from_values(url=url, login_url=url, tenant_id=standin.tenant_id,
                                                           client_id=client_id, client_secret=secret))
        else:
            client = PingOneClient(PingOneSettings.from_values(url=url, auth_url=url, client_id=client_id,
                                                               environment_id=standin.environment_id,
                                                               client_secret=secret))
        with client:
            members = client.group_members(DEMO_GROUP)
    assert [m["id"] for m in members] == [p["id"] for p in demo_users(kind, 4)]

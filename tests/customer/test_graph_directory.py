"""GraphClient's directory reads against the Graph stand-in over loopback HTTP: verify (a wrong
secret, a missing permission, no admin consent), users, groups with paging, group ids, the FIDO2
method policy and its enforcement at registration, throttling and correlation ids."""

from __future__ import annotations

import uuid

import httpx
import pytest

from station.customer.graph import GraphClient, GraphError, GraphForbidden, GraphThrottled, display_name
from station.customer.http import TokenRefused
from station.customer.settings import GraphSettings
from station.standins.graph import POLICY_PATH

from tests.customer.test_graph_client import registration

OTHER_AAGUID = "ee882879-721c-4913-9775-3dfcce97072a"


class Recording(httpx.HTTPTransport):
    """The real transport, keeping each request and response (to see the headers sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[httpx.Request, httpx.Response]] = []

    def handle_request(self, request):
        response = super().handle_request(request)
        self.exchanges.append((request, response))
        return response


def client_for(graph, *, transport=None, **app) -> GraphClient:
    client_id, secret = graph.standin.add_client(**app)
    settings = GraphSettings.from_values(url=graph.url, login_url=graph.url, tenant_id=graph.standin.tenant_id,
                                         client_id=client_id, client_secret=secret)
    return GraphClient(settings, transport=transport, sleep=graph.sleeps)


def token(graph, **app) -> str:
    client_id, secret = graph.standin.add_client(**app)
    answer = httpx.post(f"{graph.url}/{graph.standin.tenant_id}/oauth2/v2.0/token", data={
        "client_id": client_id, "client_secret": secret, "scope": "https://graph.microsoft.com/.default",
        "grant_type": "client_credentials"})
    return answer.json()["access_token"]


# -- verify: the check of a new directory configuration --------------------------------------------

def test_verify_obtains_a_token_and_reads_one_user(graph):
    assert graph.client.verify() == {"ok": True, "users_readable": 1}
    graph.standin.add_user("ann@contoso.com", "Ann Lee")
    assert graph.client.verify()["users_readable"] == 1  # $top=1


def test_a_wrong_secret_is_token_refused_401_without_the_secret(graph):
    settings = GraphSettings.from_values(url=graph.url, login_url=graph.url, tenant_id=graph.standin.tenant_id,
                                         client_id=graph.settings.client_id, client_secret="not-the-secret-1234")
    with GraphClient(settings) as client, pytest.raises(TokenRefused) as refused:
        client.verify()
    error = refused.value
    assert error.status == 401 and error.provider_code == "invalid_client" and "AADSTS7000215" in error.message
    assert "not-the-secret-1234" not in f"{error} {error!r} {client!r}"
    assert uuid.UUID(error.correlation_id)  # the token endpoint's correlation_id


def test_an_unknown_application_is_token_refused_400(graph):
    settings = GraphSettings.from_values(url=graph.url, login_url=graph.url, tenant_id=graph.standin.tenant_id,
                                         client_id=str(uuid.uuid4()), client_secret="x")
    with GraphClient(settings) as client, pytest.raises(TokenRefused) as refused:
        client.verify()
    assert refused.value.status == 400 and "AADSTS700016" in refused.value.message


def test_a_missing_permission_is_403_authorization_request_denied(graph):
    with client_for(graph, roles=["UserAuthenticationMethod.ReadWrite.All"]) as client:
        with pytest.raises(GraphForbidden) as forbidden:
            client.verify()
        assert forbidden.value.status == 403 and forbidden.value.provider_code == "Authorization_RequestDenied"
        assert forbidden.value.code == "graph_forbidden"
        # the same app may still create methods: only the user read is missing
        assert client.creation_options(graph.user_id, 60)["publicKey"]["challenge"]


def test_each_read_needs_its_own_permission(graph):
    graph.standin.add_group("Keys", [graph.user_id])
    with client_for(graph, roles=["User.Read.All"]) as client:
        assert client.get_user(graph.user_id)["id"] == graph.user_id
        with pytest.raises(GraphForbidden):
            client.group_members("Keys")
        with pytest.raises(GraphForbidden):
            client.fido2_policy()
        with pytest.raises(GraphForbidden):
            client.creation_options(graph.user_id, 60)


def test_without_admin_consent_the_token_comes_but_every_call_is_403(graph):
    with client_for(graph, consented=False) as client:
        with pytest.raises(GraphForbidden, match="Insufficient privileges"):
            client.verify()
        assert client.tokens.fetches == 1  # a token was issued, with no roles


# -- users and groups --------------------------------------------------------------------------------

def test_get_user_by_id_or_user_principal_name(graph):
    by_id = graph.client.get_user(graph.user_id)
    assert by_id == {"id": graph.user_id, "userPrincipalName": "kim@contoso.com", "displayName": "Kim Cook"}
    assert graph.client.get_user("KIM@contoso.com") == by_id


def test_an_unknown_user_is_a_graph_error_404(graph):
    with pytest.raises(GraphError) as missing:
        graph.client.get_user("nobody@contoso.com")
    assert missing.value.status == 404 and missing.value.provider_code == "Request_ResourceNotFound"


def test_group_members_follow_every_next_link_and_leave_out_non_users(graph):
    recorder = Recording()
    people = [graph.standin.add_user(f"user{n}@contoso.com", f"User {n}") for n in range(5)]
    nested = graph.standin.add_group("Nested", [people[0].id])
    graph.standin.add_group("Key users", [p.id for p in people[:3]] + [nested.id] + [p.id for p in people[3:]])
    graph.standin.page_size = 2
    with client_for(graph, transport=recorder) as client:
        members = client.group_members("Key users")
    assert [m["id"] for m in members] == [p.id for p in people]
    assert members[1] == {"id": people[1].id, "userPrincipalName": "user1@contoso.com", "displayName": "User 1"}
    pages = [r for r, _ in recorder.exchanges if r.url.path.endswith("/members")]
    assert len(pages) == 3 and "$skiptoken" in pages[1].url.params


def test_a_page_token_cannot_be_replayed(graph):
    people = [graph.standin.add_user(f"p{n}@contoso.com", f"P {n}") for n in range(3)]
    group = graph.standin.add_group("G", [p.id for p in people])
    graph.standin.page_size = 2
    bearer = {"Authorization": f"Bearer {token(graph)}"}
    first = httpx.get(f"{graph.url}/v1.0/groups/{group.id}/members", headers=bearer).json()
    assert httpx.get(first["@odata.nextLink"], headers=bearer).status_code == 200
    again = httpx.get(first["@odata.nextLink"], headers=bearer)
    assert again.status_code == 400 and again.json()["error"]["code"] == "Directory_ExpiredPageToken"


def test_a_group_name_with_a_quote_is_an_odata_literal(graph):
    graph.standin.add_group("O'Brien's team", [graph.user_id])
    assert [m["id"] for m in graph.client.group_members("O'Brien's team")] == [graph.user_id]


def test_no_group_or_two_groups_of_that_name_is_a_plain_error(graph):
    with pytest.raises(GraphError, match="no group named 'Nobody'") as missing:
        graph.client.group_members("Nobody")
    assert missing.value.code == "graph_group_not_found"
    graph.standin.add_group("Twice")
    graph.standin.add_group("Twice")
    with pytest.raises(GraphError, match="2 groups are named 'Twice'") as ambiguous:
        graph.client.group_members("Twice")
    assert ambiguous.value.code == "graph_group_ambiguous"


def test_a_next_link_to_another_host_is_not_followed():
    """A directory answering with a next link elsewhere would get our bearer token sent there."""
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})
        if request.url.path == "/v1.0/groups":
            return httpx.Response(200, json={"value": [{"id": "g1", "displayName": "G"}]})
        assert request.url.host == "graph.test", "the token went to another host"
        return httpx.Response(200, json={"value": [], "@odata.nextLink": "https://evil.test/v1.0/groups/g1/members"})

    settings = GraphSettings.from_values(url="https://graph.test", login_url="https://login.test", tenant_id="t",
                                         client_id="c", client_secret="s")
    with GraphClient(settings, transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(GraphError, match="another host"):
            client.group_members("G")


def test_user_group_ids_are_transitive(graph):
    inner = graph.standin.add_group("Inner", [graph.user_id])
    outer = graph.standin.add_group("Outer", [inner.id])
    graph.standin.add_group("Elsewhere")
    assert graph.client.user_group_ids(graph.user_id) == {inner.id, outer.id}


def test_get_member_groups_refuses_unknown_parameters(graph):
    answer = httpx.post(f"{graph.url}/v1.0/users/{graph.user_id}/getMemberGroups",
                        headers={"Authorization": f"Bearer {token(graph)}"},
                        json={"securityEnabledOnly": False, "extra": 1})
    assert answer.status_code == 400 and "extra" in answer.json()["error"]["message"]


def test_unknown_query_options_and_properties_are_refused(graph):
    bearer = {"Authorization": f"Bearer {token(graph)}"}
    assert httpx.get(f"{graph.url}/v1.0/users", params={"$expand": "memberOf"}, headers=bearer).status_code == 400
    bad = httpx.get(f"{graph.url}/v1.0/users", params={"$select": "id,shoeSize"}, headers=bearer)
    assert bad.status_code == 400 and "shoeSize" in bad.json()["error"]["message"]
    assert httpx.get(f"{graph.url}/v1.0/users", params={"$top": "1000"}, headers=bearer).status_code == 400
    bad = httpx.get(f"{graph.url}/v1.0/groups", params={"$filter": "startswith(displayName,'K')"}, headers=bearer)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "Request_UnsupportedQuery"


# -- the Passkey (FIDO2) policy ------------------------------------------------------------------------

def test_fido2_policy_is_the_configuration_graph_returns(graph):
    policy = graph.client.fido2_policy()
    assert policy["@odata.type"] == "#microsoft.graph.fido2AuthenticationMethodConfiguration"
    assert policy["state"] == "enabled" and policy["isAttestationEnforced"] is True
    assert policy["includeTargets"] == [{"targetType": "group", "id": "all_users", "isRegistrationRequired": False}]
    assert set(policy["keyRestrictions"]) == {"isEnforced", "enforcementType", "aaGuids"}


def test_patch_needs_policy_readwrite_and_refuses_unknown_members(graph):
    url = f"{graph.url}/v1.0/{POLICY_PATH}"
    reader = {"Authorization": f"Bearer {token(graph)}"}
    assert httpx.patch(url, headers=reader, json={"state": "disabled"}).status_code == 403
    writer = {"Authorization": f"Bearer {token(graph, roles=['Policy.ReadWrite.AuthenticationMethod'])}"}
    bad = httpx.patch(url, headers=writer, json={"state": "enabled", "colour": "red"})
    assert bad.status_code == 400 and "colour" in bad.json()["error"]["message"]
    bad = httpx.patch(url, headers=writer, json={"keyRestrictions": {"enforcementType": "maybe"}})
    assert bad.status_code == 400
    assert httpx.patch(url, headers=writer, json={"state": "disabled"}).status_code == 204
    assert graph.client.fido2_policy()["state"] == "disabled"


def register(graph, factory):
    credential, opened, _ = registration(graph, factory)
    return lambda: graph.client.register(graph.user_id, display_name(opened.serial_number), credential), opened


def test_a_disabled_fido2_policy_refuses_the_registration(graph, factory):
    attempt, _ = register(graph, factory)
    graph.standin.set_fido2_policy(state="disabled")
    with pytest.raises(GraphError, match="disabled") as refused:
        attempt()
    assert refused.value.status == 400 and graph.client.list_methods(graph.user_id) == []


def test_an_aaguid_outside_the_allow_list_is_refused_then_allowed(graph, factory):
    attempt, opened = register(graph, factory)
    graph.standin.set_fido2_policy(keyRestrictions={"isEnforced": True, "enforcementType": "allow",
                                                    "aaGuids": [OTHER_AAGUID]})
    with pytest.raises(GraphError, match=f"AAGUID {opened.aaguid} is not allowed"):
        attempt()
    graph.standin.set_fido2_policy(keyRestrictions={"aaGuids": [OTHER_AAGUID, opened.aaguid]})
    assert attempt()["id"]  # the same credential registers once the policy allows it


def test_a_blocked_aaguid_is_refused(graph, factory):
    attempt, opened = register(graph, factory)
    graph.standin.set_fido2_policy(keyRestrictions={"isEnforced": True, "enforcementType": "block",
                                                    "aaGuids": [opened.aaguid.upper()]})
    with pytest.raises(GraphError, match="blocked"):
        attempt()


def test_users_outside_the_targets_or_excluded_are_refused(graph, factory):
    attempt, _ = register(graph, factory)
    pilots = graph.standin.add_group("Pilots")
    graph.standin.set_fido2_policy(includeTargets=[{"id": pilots.id}])
    with pytest.raises(GraphError, match="not enabled for this user"):
        attempt()
    pilots.members.append(graph.user_id)
    excluded = graph.standin.add_group("No keys", [pilots.id])  # nested: the user is in it through Pilots
    graph.standin.set_fido2_policy(excludeTargets=[{"id": excluded.id}])
    with pytest.raises(GraphError, match="excluded"):
        attempt()
    graph.standin.set_fido2_policy(excludeTargets=[])
    assert attempt()["id"]


def test_attestation_enforced_refuses_an_unverified_key(factory):
    """A tenant trusting no root (here: the stand-in given none) cannot verify the attestation."""
    from station.standins import running

    from tests.customer.conftest import Provider, Waits

    with running("graph") as (standin, url):
        user = standin.add_user("pat@contoso.com", "Pat Doe")
        client_id, secret = standin.add_client()
        settings = GraphSettings.from_values(url=url, login_url=url, tenant_id=standin.tenant_id,
                                             client_id=client_id, client_secret=secret)
        with GraphClient(settings) as client:
            graph = Provider(standin, url, client, Waits(), user.id, settings)
            attempt, _ = register(graph, factory)
            with pytest.raises(GraphError, match="Attestation is enforced"):
                attempt()
            standin.set_fido2_policy(isAttestationEnforced=False)
            assert attempt()["attestationLevel"] == "notAttested"


# -- throttling and correlation ids ------------------------------------------------------------------------

def test_directory_reads_wait_out_throttling_then_give_up(graph):
    graph.standin.throttle.arm(2, retry_after=3)
    assert graph.client.get_user(graph.user_id)["id"] == graph.user_id
    assert graph.sleeps == [3, 3]
    graph.standin.throttle.arm(10, retry_after=2)
    with pytest.raises(GraphThrottled) as throttled:
        graph.client.group_members("Anything")
    assert throttled.value.retry_after == 2 and throttled.value.correlation_id


def test_every_call_sends_a_fresh_client_request_id_and_keeps_graph_s_request_id(graph):
    recorder = Recording()
    with client_for(graph, transport=recorder) as client:
        assert client.last_correlation_id is None
        client.get_user(graph.user_id)
        request, response = recorder.exchanges[-1]
        assert client.last_correlation_id == response.headers["request-id"]
        assert response.headers["client-request-id"] == request.headers["client-request-id"]
        first = request.headers["client-request-id"]
        assert uuid.UUID(first).version == 4
        with pytest.raises(GraphError) as missing:
            client.get_user("nobody@contoso.com")
        request, response = recorder.exchanges[-1]
        assert request.headers["client-request-id"] != first
        assert missing.value.correlation_id == response.headers["request-id"] == client.last_correlation_id
        assert response.json()["error"]["innerError"]["request-id"] == response.headers["request-id"]
    token_request = next(r for r, _ in recorder.exchanges if r.url.path.endswith("/token"))
    assert uuid.UUID(token_request.headers["client-request-id"])


def test_settings_from_values_ignore_the_environment(graph, monkeypatch):
    monkeypatch.setenv("STATION_GRAPH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STATION_GRAPH_CLIENT_SECRET", "from-the-environment")
    settings = GraphSettings.from_values(tenant_id="t", client_id="c", client_secret="given")
    assert settings.url == "https://graph.microsoft.com" and settings.secret() == "given"
    assert "given" not in repr(settings)

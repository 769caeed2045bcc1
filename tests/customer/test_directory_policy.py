"""The pre-flight's findings: every finding of each directory, the clean case, and the policy as
the stand-ins return it through the real clients."""

from __future__ import annotations

import copy

import pytest

from station.customer.directory_policy import Finding, blocks, entra_findings, pingone_findings
from station.standins.graph import default_fido2_policy

CRESCENDO = "2a55aee6-27cb-42c0-bc6e-04efe999e88a"  # HID's example: the Crescendo 4000
YUBIKEY = "ee882879-721c-4913-9775-3dfcce97072a"
OTHER = "cb69481e-8ff7-4039-93ec-0a2729a154a8"
PILOTS = "0b5e3f0c-1111-4a4a-9f9f-000000000001"


def entra(**changes) -> dict:
    policy = copy.deepcopy(default_fido2_policy())
    policy.update(changes)
    return policy


def codes(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.level, f.code) for f in findings]


# -- Entra --------------------------------------------------------------------------------------------

def test_entra_clean_policy_has_no_finding():
    assert entra_findings(entra(), [CRESCENDO, YUBIKEY], {"kim@contoso.com": set()}) == []
    assert entra_findings(entra(), [CRESCENDO]) == []


def test_entra_disabled_blocks_and_says_where():
    [finding] = entra_findings(entra(state="disabled"), [CRESCENDO])
    assert (finding.level, finding.code) == ("block", "fido2_disabled")
    assert "Entra admin center → Protection → Authentication methods" in finding.message
    assert "Passkey (FIDO2)" in finding.message and "Enable" in finding.message
    assert blocks([finding])


def test_entra_users_not_in_the_targets_block_with_their_names():
    policy = entra(includeTargets=[{"targetType": "group", "id": PILOTS}])
    findings = entra_findings(policy, [CRESCENDO], {"kim@contoso.com": {PILOTS}, "ann@contoso.com": {"other"}})
    assert codes(findings) == [("block", "users_not_targeted")]
    assert "'ann@contoso.com'" in findings[0].message and "kim@" not in findings[0].message


def test_entra_excluded_users_block_naming_the_group():
    policy = entra(excludeTargets=[{"targetType": "group", "id": PILOTS}])
    findings = entra_findings(policy, [CRESCENDO], {"kim@contoso.com": {PILOTS}, "ann@contoso.com": set()},
                              group_names={PILOTS: "Pilots"})
    assert codes(findings) == [("block", "users_excluded")]
    assert "'kim@contoso.com'" in findings[0].message and "'Pilots'" in findings[0].message
    assert "ann@" not in findings[0].message


def test_entra_many_users_are_counted_not_all_listed():
    policy = entra(includeTargets=[{"targetType": "group", "id": PILOTS}])
    users = {f"u{n}@contoso.com": set() for n in range(8)}
    [finding] = entra_findings(policy, [CRESCENDO], users)
    assert "and 3 more" in finding.message and "'u7@contoso.com'" not in finding.message


def test_entra_no_targets_blocks():
    assert codes(entra_findings(entra(includeTargets=[]), [CRESCENDO])) == [("block", "no_targets")]


def test_entra_group_targets_without_users_to_check_warn():
    findings = entra_findings(entra(includeTargets=[{"targetType": "group", "id": PILOTS}]), [CRESCENDO],
                              group_names={PILOTS: "Pilots"})
    assert codes(findings) == [("warn", "targets_not_checked")] and "'Pilots'" in findings[0].message
    assert not blocks(findings)


def test_entra_attestation_not_enforced_warns():
    findings = entra_findings(entra(isAttestationEnforced=False), [CRESCENDO])
    assert codes(findings) == [("warn", "attestation_not_enforced")]
    assert "Enforce attestation" in findings[0].message and not blocks(findings)


def test_entra_allow_list_without_a_shipped_aaguid_blocks_naming_aaguid_and_model():
    policy = entra(keyRestrictions={"isEnforced": True, "enforcementType": "allow", "aaGuids": [YUBIKEY.upper()]})
    [finding] = entra_findings(policy, [CRESCENDO, YUBIKEY])
    assert (finding.level, finding.code) == ("block", "aaguid_not_allowed")
    assert f"{CRESCENDO} (HID Crescendo 4000)" in finding.message and YUBIKEY not in finding.message
    assert "Key restriction" in finding.message


def test_entra_allow_list_not_enforced_is_no_finding():
    policy = entra(keyRestrictions={"isEnforced": False, "enforcementType": "allow", "aaGuids": []})
    assert entra_findings(policy, [CRESCENDO]) == []


def test_entra_block_list_with_a_shipped_aaguid_blocks():
    policy = entra(keyRestrictions={"isEnforced": True, "enforcementType": "block", "aaGuids": [OTHER, CRESCENDO]})
    [finding] = entra_findings(policy, [CRESCENDO, YUBIKEY])
    assert (finding.level, finding.code) == ("block", "aaguid_blocked") and CRESCENDO in finding.message
    assert entra_findings(entra(keyRestrictions={"isEnforced": True, "enforcementType": "block", "aaGuids": [OTHER]}),
                          [CRESCENDO]) == []


def test_an_uncatalogued_aaguid_is_named_so():
    policy = entra(keyRestrictions={"isEnforced": True, "enforcementType": "allow", "aaGuids": []})
    [finding] = entra_findings(policy, ["00000000-0000-0000-0000-0000000000aa"])
    assert "a model not in our catalogue" in finding.message


def test_a_shipped_value_that_is_no_aaguid_is_refused():
    with pytest.raises(ValueError, match="not an AAGUID"):
        entra_findings(entra(), ["crescendo"])


def test_every_entra_finding_at_once():
    policy = entra(state="disabled", isAttestationEnforced=False,
                   keyRestrictions={"isEnforced": True, "enforcementType": "allow", "aaGuids": []})
    assert codes(entra_findings(policy, [CRESCENDO])) == [
        ("block", "fido2_disabled"), ("warn", "attestation_not_enforced"), ("block", "aaguid_not_allowed")]


# -- PingOne ---------------------------------------------------------------------------------------------

def ping(**changes) -> dict:
    policy = {"id": "p1", "name": "Keys", "default": True, "discoverableCredentials": "REQUIRED",
              "authenticatorAttachment": "BOTH", "userVerification": {"option": "REQUIRED",
                                                                       "enforceDuringAuthentication": True},
              "backupEligibility": {"allow": False, "enforceDuringAuthentication": True},
              "attestationRequirements": "DIRECT",
              "mdsAuthenticatorsRequirements": {"option": "GLOBAL", "enforceDuringAuthentication": True},
              "relyingPartyId": "example.org"}
    policy.update(changes)
    return policy


def test_pingone_clean_policy_has_no_finding():
    assert pingone_findings(ping(), [CRESCENDO, YUBIKEY]) == []
    specific = {"option": "SPECIFIC", "allowedAuthenticators": [{"id": CRESCENDO}, {"id": YUBIKEY}]}
    assert pingone_findings(ping(mdsAuthenticatorsRequirements=specific), [CRESCENDO, YUBIKEY]) == []


def test_pingone_discoverable_discouraged_blocks_and_says_where():
    [finding] = pingone_findings(ping(discoverableCredentials="DISCOURAGED"), [CRESCENDO])
    assert (finding.level, finding.code) == ("block", "discoverable_discouraged")
    assert "PingOne admin console → Authentication → FIDO → the policy 'Keys'" in finding.message
    assert pingone_findings(ping(discoverableCredentials="PREFERRED"), [CRESCENDO]) == []


@pytest.mark.parametrize("changes", [{"attestationRequirements": "NONE",
                                      "mdsAuthenticatorsRequirements": {"option": "NONE"}},
                                     {"mdsAuthenticatorsRequirements": {"option": "AUDIT_ONLY"}}])
def test_pingone_attestation_not_required_warns(changes):
    findings = pingone_findings(ping(**changes), [CRESCENDO])
    assert codes(findings) == [("warn", "attestation_not_required")] and not blocks(findings)


def test_pingone_specific_authenticators_without_a_shipped_aaguid_block():
    mds = {"option": "SPECIFIC", "allowedAuthenticators": [{"id": YUBIKEY}]}
    [finding] = pingone_findings(ping(mdsAuthenticatorsRequirements=mds), [CRESCENDO, YUBIKEY])
    assert (finding.level, finding.code) == ("block", "aaguid_not_allowed")
    assert f"{CRESCENDO} (HID Crescendo 4000)" in finding.message and YUBIKEY not in finding.message


def test_pingone_older_model_specific_list_is_read_too():
    policy = ping(attestationRequirements="SPECIFIC", allowedAuthenticators=[{"id": YUBIKEY}])
    policy.pop("mdsAuthenticatorsRequirements")
    assert codes(pingone_findings(policy, [CRESCENDO])) == [("block", "aaguid_not_allowed")]


def test_pingone_platform_only_blocks():
    [finding] = pingone_findings(ping(authenticatorAttachment="PLATFORM"), [CRESCENDO])
    assert (finding.level, finding.code) == ("block", "platform_only")
    assert pingone_findings(ping(authenticatorAttachment="CROSS_PLATFORM"), [CRESCENDO]) == []


def test_pingone_user_verification_discouraged_warns():
    findings = pingone_findings(ping(userVerification={"option": "DISCOURAGED"}), [CRESCENDO])
    assert codes(findings) == [("warn", "user_verification_discouraged")]


# -- through the clients, against the stand-ins -------------------------------------------------------------

def test_entra_findings_on_the_policy_graph_returns(graph):
    assert entra_findings(graph.client.fido2_policy(), [CRESCENDO],
                          {graph.user_id: graph.client.user_group_ids(graph.user_id)}) == []
    pilots = graph.standin.add_group("Pilots")
    graph.standin.set_fido2_policy(includeTargets=[{"id": pilots.id}], keyRestrictions={
        "isEnforced": True, "enforcementType": "allow", "aaGuids": [YUBIKEY]})
    findings = entra_findings(graph.client.fido2_policy(), [CRESCENDO],
                              {"kim@contoso.com": graph.client.user_group_ids(graph.user_id)})
    assert codes(findings) == [("block", "users_not_targeted"), ("block", "aaguid_not_allowed")]


def test_pingone_findings_on_the_policy_pingone_returns(pingone):
    assert pingone_findings(pingone.client.fido_policy(), [CRESCENDO]) == []
    pingone.standin.set_policy(pingone.settings.policy_id, discoverable_credentials="DISCOURAGED",
                               allowed_aaguids=[YUBIKEY], authenticator_attachment="PLATFORM")
    assert codes(pingone_findings(pingone.client.fido_policy(pingone.settings.policy_id), [CRESCENDO])) == [
        ("block", "discoverable_discouraged"), ("block", "aaguid_not_allowed"), ("block", "platform_only")]


# -- a refused connection -----------------------------------------------------------------------------------

def test_refusals_are_explained_with_where_to_fix_them(graph, pingone):
    from station.customer.directory_policy import explain_refusal
    from station.customer.graph import GraphClient
    from station.customer.http import ProviderUnreachable, TokenRefused
    from station.customer.pingone import PingOneClient
    from station.customer.settings import GraphSettings, PingOneSettings

    def refusal(client):
        with client, pytest.raises(Exception) as caught:
            client.verify()
        return caught.value

    g = graph.settings.model_dump()
    wrong = refusal(GraphClient(GraphSettings.from_values(**{**g, "client_secret": "nope"})))
    assert isinstance(wrong, TokenRefused) and "Certificates & secrets" in explain_refusal("entra", wrong)
    unknown = refusal(GraphClient(GraphSettings.from_values(**{**g, "client_secret": "x",
                                                                 "client_id": "00000000-0000-0000-0000-000000000001"})))
    assert "Application (client) ID" in explain_refusal("entra", unknown)
    client_id, secret = graph.standin.add_client(roles=[])
    forbidden = refusal(GraphClient(GraphSettings.from_values(**{**g, "client_id": client_id, "client_secret": secret})))
    assert "Grant admin consent" in explain_refusal("entra", forbidden)

    p = pingone.settings.model_dump()
    wrong = refusal(PingOneClient(PingOneSettings.from_values(**{**p, "client_secret": "nope"})))
    assert "Client Secret Post" in explain_refusal("pingone", wrong)
    client_id, secret = pingone.standin.add_client(roles=[])
    forbidden = refusal(PingOneClient(PingOneSettings.from_values(**{**p, "client_id": client_id,
                                                                      "client_secret": secret})))
    assert "Identity Data Admin and Environment Admin" in explain_refusal("pingone", forbidden)

    down = ProviderUnreachable("Graph at http://127.0.0.1:9 cannot be reached (ConnectError)")
    assert explain_refusal("entra", down).startswith("The directory could not be reached")

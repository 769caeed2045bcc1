"""Pre-flight against a customer's directory: its passkey policy, as the directory's API returns
it, → findings in plain words for the customer's administrator, before any key is programmed.

- `entra_findings(policy, aaguids, user_groups)`: Graph's fido2AuthenticationMethodConfiguration
  ("fido2AuthenticationMethodConfiguration resource type", v1.0: `state`, `isAttestationEnforced`,
  `keyRestrictions` {isEnforced, enforcementType allow | block, aaGuids}, `includeTargets` and
  `excludeTargets` of targetType group, id "all_users" or a group id).
- `pingone_findings(policy, aaguids)`: a PingOne FIDO policy ("FIDO Policies" data model:
  `discoverableCredentials`, `attestationRequirements`, `mdsAuthenticatorsRequirements`
  {option, allowedAuthenticators [{id}]}, `authenticatorAttachment`, `userVerification`; the
  older model's top-level `allowedAuthenticators` with `attestationRequirements` SPECIFIC too).

A finding is `block` when the directory would refuse the keys we ship (the registration fails
after the key is made: it must then be reset, not shipped), `warn` when the keys would register
but the setting weakens what the customer bought (attestation not checked). Each message says
what to change and where in the admin portal.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict

from station.vendors import lookup

ENTRA_FIDO2 = "In the Microsoft Entra admin center → Protection → Authentication methods → Policies → Passkey (FIDO2)"
PINGONE_FIDO = "In the PingOne admin console → Authentication → FIDO"
ALL_USERS = "all_users"
NAMED_AT_MOST = 5


class Finding(BaseModel):
    """One thing the administrator must (block) or should (warn) change in the directory."""

    model_config = ConfigDict(frozen=True)

    level: Literal["block", "warn"]
    code: str
    message: str


def blocks(findings: Iterable[Finding]) -> bool:
    """Whether any finding stops provisioning."""
    return any(f.level == "block" for f in findings)


def _aaguid(value: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not an AAGUID") from None


def _model(aaguid: str) -> str:
    entry = lookup(aaguid)
    return entry.name if entry is not None else "a model not in our catalogue"


def _keys(aaguids: Iterable[str]) -> str:
    return ", ".join(f"{a} ({_model(a)})" for a in aaguids)


def _listed(values) -> set[str]:
    out = set()
    for value in values or []:
        try:
            out.add(_aaguid(value))
        except ValueError:
            continue  # a malformed entry in the directory matches no key
    return out


def _names(users: list[str]) -> str:
    shown = ", ".join(repr(u) for u in users[:NAMED_AT_MOST])
    return shown + (f" and {len(users) - NAMED_AT_MOST} more" if len(users) > NAMED_AT_MOST else "")


def _group(group_id: str, group_names: Mapping[str, str]) -> str:
    return f"'{group_names[group_id]}'" if group_id in group_names else f"with id {group_id}"


# -- Entra ID ------------------------------------------------------------------------------------------

def entra_findings(policy: dict, aaguids: list[str], user_groups: dict[str, set[str]] | None = None, *,
                   group_names: Mapping[str, str] | None = None) -> list[Finding]:
    """Findings on Entra's Passkey (FIDO2) policy for keys of `aaguids`, and, when `user_groups`
    (user → the ids of every group it is in, `GraphClient.user_group_ids`) is given, for those
    users. `group_names` (id → display name) lets messages name the groups."""
    shipped = [_aaguid(a) for a in aaguids]
    names = dict(group_names or {})
    findings: list[Finding] = []
    if policy.get("state") != "enabled":
        findings.append(Finding(level="block", code="fido2_disabled", message=(
            f"{ENTRA_FIDO2}: the method is disabled. Under Enable and target, turn Enable on and target All users "
            "or the group of the users who get keys; until then Entra refuses every key we register.")))
    include = {t.get("id") for t in policy.get("includeTargets") or [] if isinstance(t, dict)}
    exclude = {t.get("id") for t in policy.get("excludeTargets") or [] if isinstance(t, dict)}
    if not include:
        findings.append(Finding(level="block", code="no_targets", message=(
            f"{ENTRA_FIDO2}: the method targets nobody. Under Enable and target, add All users or the group "
            "of the users who get keys.")))
    elif user_groups is not None:
        outside = [u for u, groups in user_groups.items() if ALL_USERS not in include and not (include & set(groups))]
        if outside:
            findings.append(Finding(level="block", code="users_not_targeted", message=(
                f"{ENTRA_FIDO2}: the method is not enabled for {_names(outside)}. Under Enable and target, add "
                "their group (or All users) to the targets.")))
        excluded: dict[str, list[str]] = {}
        for user, groups in user_groups.items():
            for group_id in sorted(exclude & (set(groups) | {ALL_USERS})):
                excluded.setdefault(group_id, []).append(user)
        for group_id, users in excluded.items():
            findings.append(Finding(level="block", code="users_excluded", message=(
                f"{ENTRA_FIDO2}: {_names(users)} are excluded by the group {_group(group_id, names)}. Under Enable "
                "and target → Exclude, remove that group, or take these users out of it.")))
    elif ALL_USERS not in include:
        findings.append(Finding(level="warn", code="targets_not_checked", message=(
            f"{ENTRA_FIDO2}: the method is enabled for some groups only "
            f"({', '.join(_group(g, names) for g in sorted(include))}). Make sure every user who gets a key is "
            "in one of them, under Enable and target.")))
    if not policy.get("isAttestationEnforced"):
        findings.append(Finding(level="warn", code="attestation_not_enforced", message=(
            f"{ENTRA_FIDO2} → Configure: set Enforce attestation to Yes, so that Entra accepts only genuine keys "
            "of a known model (ours are attested by their vendor).")))
    restrictions = policy.get("keyRestrictions") or {}
    if restrictions.get("isEnforced"):
        listed = _listed(restrictions.get("aaGuids"))
        if restrictions.get("enforcementType") == "allow":
            missing = [a for a in shipped if a not in listed]
            if missing:
                findings.append(Finding(level="block", code="aaguid_not_allowed", message=(
                    f"{ENTRA_FIDO2} → Configure → Key restriction policy: the allowed keys lack "
                    f"{_keys(missing)}. Add {'this AAGUID' if len(missing) == 1 else 'these AAGUIDs'} to the list, "
                    "or Entra refuses these keys.")))
        elif restrictions.get("enforcementType") == "block":
            blocked = [a for a in shipped if a in listed]
            if blocked:
                findings.append(Finding(level="block", code="aaguid_blocked", message=(
                    f"{ENTRA_FIDO2} → Configure → Key restriction policy: the blocked keys include "
                    f"{_keys(blocked)}. Remove {'it' if len(blocked) == 1 else 'them'} from the list, or Entra "
                    "refuses these keys.")))
    return findings


# -- PingOne -------------------------------------------------------------------------------------------------

def pingone_findings(policy: dict, aaguids: list[str]) -> list[Finding]:
    """Findings on a PingOne FIDO policy for keys of `aaguids`."""
    shipped = [_aaguid(a) for a in aaguids]
    where = f"{PINGONE_FIDO} → the policy '{policy.get('name') or policy.get('id')}'"
    findings: list[Finding] = []
    if policy.get("discoverableCredentials") == "DISCOURAGED":
        findings.append(Finding(level="block", code="discoverable_discouraged", message=(
            f"{where}: set Discoverable credentials to Required (or Preferred). Our keys carry a discoverable "
            "passkey, and with Discouraged the users cannot sign in without typing their username.")))
    attestation = policy.get("attestationRequirements")
    mds = policy.get("mdsAuthenticatorsRequirements") or {}
    if attestation == "NONE" or mds.get("option") in ("NONE", "AUDIT_ONLY"):
        findings.append(Finding(level="warn", code="attestation_not_required", message=(
            f"{where}: set Attestation to Direct and the authenticator requirement to the specific authenticators "
            "you buy (or Global), so that PingOne accepts only genuine keys of a known model.")))
    allowed = None
    if mds.get("option") == "SPECIFIC":
        allowed = mds.get("allowedAuthenticators")
    elif attestation == "SPECIFIC":  # the older model: the list at the top level
        allowed = policy.get("allowedAuthenticators")
    if allowed is not None:
        listed = _listed(a.get("id") if isinstance(a, dict) else a for a in allowed)
        missing = [a for a in shipped if a not in listed]
        if missing:
            findings.append(Finding(level="block", code="aaguid_not_allowed", message=(
                f"{where} → Allowed authenticators: the list lacks {_keys(missing)}. Add "
                f"{'it' if len(missing) == 1 else 'them'}, or PingOne refuses these keys.")))
    if policy.get("authenticatorAttachment") == "PLATFORM":
        findings.append(Finding(level="block", code="platform_only", message=(
            f"{where}: set Authenticator attachment to Both (or Cross-platform). With Platform only, PingOne "
            "refuses every security key.")))
    verification = policy.get("userVerification") or {}
    if verification.get("option") == "DISCOURAGED":
        findings.append(Finding(level="warn", code="user_verification_discouraged", message=(
            f"{where}: set User verification to Required (or Preferred), so that signing in asks for the key's "
            "PIN that we send the user.")))
    return findings


# -- a refused connection, in plain words ---------------------------------------------------------------

ENTRA_PERMISSIONS = ("User.Read.All", "Group.Read.All", "UserAuthenticationMethod.ReadWrite.All",
                     "Policy.Read.AuthenticationMethod")
PINGONE_ROLES = ("Identity Data Admin", "Environment Admin")


def explain_refusal(kind: str, error: Exception) -> str:
    """What the administrator must change when the directory refused our application (Test
    Connection, ADD): a wrong id or secret, a missing permission or role. `kind` is "entra" or
    "pingone"; any other error keeps its own message."""
    from station.customer.http import Forbidden, ProviderUnreachable, TokenRefused

    if isinstance(error, ProviderUnreachable) or getattr(error, "code", None) == "idp_unreachable":
        return f"The directory could not be reached: {getattr(error, 'message', error)}"
    if kind == "entra":
        if isinstance(error, TokenRefused):
            if error.status == 401:
                return ("Entra refused the client secret. In the Microsoft Entra admin center → App registrations → "
                        "the application → Certificates & secrets, create a new client secret and enter its Value "
                        "(not its Secret ID) here.")
            return ("Entra does not know this tenant ID or client ID. In the Microsoft Entra admin center → App "
                    "registrations → the application → Overview, copy the Directory (tenant) ID and the "
                    "Application (client) ID.")
        if isinstance(error, Forbidden):
            return ("The application lacks a Microsoft Graph permission, or its admin consent. In the Microsoft Entra "
                    "admin center → App registrations → the application → API permissions, add the Application "
                    f"permissions {', '.join(ENTRA_PERMISSIONS)}, then select Grant admin consent.")
    elif kind == "pingone":
        if isinstance(error, TokenRefused):
            return ("PingOne refused the worker application's credentials. In the PingOne admin console → "
                    "Applications → the worker application → Configuration, check the Client ID, that the token "
                    "endpoint authentication method is Client Secret Post, and copy the Client Secret again.")
        if isinstance(error, Forbidden):
            return ("The worker application lacks a role. In the PingOne admin console → Applications → the worker "
                    f"application → Roles, grant {' and '.join(PINGONE_ROLES)} for this environment.")
    return getattr(error, "message", None) or str(error)

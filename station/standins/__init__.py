"""station.standins: strict loopback stand-ins of Okta, Microsoft Graph and PingOne.

Each is written from the provider's public documentation (the module docstrings name the
pages): the same paths, member names, content types, status codes and error bodies; unknown or
missing members refused as the real API refuses them; access tokens that expire; 429 on demand
(`standin.throttle.arm(count, retry_after)`). Each holds the relying-party side, as the real
identity provider does: it verifies the attestation at activation/registration and, later,
sign-in assertions (`/_standin/signin/...`, playing the provider's sign-in page).

They import nothing of the station (tests/test_layering.py checks it): `station.customer`
reaches them only over HTTP. `serve(standin_app)` runs one on loopback (port 0 for a free port);
`station standin okta|graph|pingone --port N` runs one in the foreground.
"""

from __future__ import annotations

from contextlib import contextmanager

from station.standins._common import LoopbackServer, StandinError

KINDS = ("okta", "graph", "pingone")


def make(kind: str, **options):
    """→ (the stand-in's state object, its FastAPI app)."""
    if kind == "okta":
        from station.standins.okta import OktaStandin, create_app
        standin = OktaStandin(**options)
    elif kind == "graph":
        from station.standins.graph import GraphStandin, create_app
        standin = GraphStandin(**options)
    elif kind == "pingone":
        from station.standins.pingone import PingOneStandin, create_app
        standin = PingOneStandin(**options)
    else:
        raise StandinError(f"no stand-in {kind!r}: one of {', '.join(KINDS)}")
    return standin, create_app(standin)


@contextmanager
def running(kind: str, *, host: str = "127.0.0.1", port: int = 0, **options):
    """`with running("graph") as (standin, url):` — served on loopback until the block ends."""
    standin, app = make(kind, **options)
    with LoopbackServer(app, host=host, port=port) as server:
        yield standin, server.url


__all__ = ["KINDS", "LoopbackServer", "StandinError", "make", "running"]


# -- the demo's people (deterministic, so a `station standin` process and `station demo
# --okta-url ...` agree on who exists) ----------------------------------------------------------

NAMES = ["Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Ken", "Radia", "Tim", "Margaret"]
OKTA_DOMAIN = "acme.okta.com"
PINGONE_RP_ID = "example.org"


def demo_users(kind: str, count: int) -> list[dict]:
    """`count` users of the demo for `kind`: `{id, login, first_name, last_name}`."""
    import uuid

    people = []
    for n in range(count):
        first = NAMES[n % len(NAMES)] + (str(n // len(NAMES) + 1) if n >= len(NAMES) else "")
        last = "Example"
        if kind == "okta":
            person = {"id": f"00u{n:017d}", "login": f"{first.lower()}@acme.com"}
        elif kind == "graph":
            person = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"graph-demo-{n}")), "login": f"{first.lower()}@contoso.com"}
        else:
            person = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pingone-demo-{n}")), "login": f"{first.lower()}@example.org"}
        people.append({**person, "first_name": first, "last_name": last})
    return people


def seed(kind: str, standin, count: int) -> None:
    """Give a stand-in the demo's users (for Graph and PingOne also the group DEMO_GROUP of all
    of them; for PingOne its FIDO2 policy)."""
    for person in demo_users(kind, count):
        if person["id"] in standin.users:
            continue
        if kind == "okta":
            standin.add_user(person["login"], user_id=person["id"], first_name=person["first_name"],
                             last_name=person["last_name"])
        elif kind == "graph":
            standin.add_user(person["login"], f"{person['first_name']} {person['last_name']}", user_id=person["id"])
        else:
            standin.add_user(person["login"], user_id=person["id"])
    if kind in ("graph", "pingone"):
        members = [p["id"] for p in demo_users(kind, count)]
        group = next((g for g in standin.groups.values() if g.id == DEMO_GROUP_IDS[kind]), None)
        if group is None:
            standin.add_group(DEMO_GROUP, members, group_id=DEMO_GROUP_IDS[kind])
        else:
            group.members[:] = members
    if kind == "pingone" and not standin.policies:
        policy = standin.add_policy(PINGONE_RP_ID)
        standin.policies.pop(policy.id)
        policy.id = DEMO_PINGONE_POLICY
        standin.policies[policy.id] = policy


DEMO_PINGONE_POLICY = "6b7c9a52-9d7e-4a52-8e0b-2f0c5d0f1a11"
DEMO_GROUP = "Security key users"
DEMO_GROUP_IDS = {"graph": "5f0c2b1e-3d4a-4c6b-9e8f-7a1b2c3d4e5f", "pingone": "8a7b6c5d-4e3f-4a2b-9c1d-0e9f8a7b6c5d"}

"""Directory-connected provisioning (HID Customer Central's model, issue 15): the customer
registers our application in its Entra ID or PingOne directory and gives us its values; we
verify them, run the pre-flight, fetch creation options per user, queue one shipment per user
(its credential request answered to a response key of ours, its PIN request sealed to the
customer's PIN-delivery key), and once a station has programmed the key, register the
credential in the directory ourselves.

`Directories` is the one place that does it, for the API (directories/api.py) and the CLI
(station/cli_directories.py) alike. It talks to the directories only through the customer
package's clients (GraphClient, PingOneClient), never through a stand-in, and never touches a
factory key: it seals requests to the published transport key and checks responses against the
published signing keys. Every directory call is audited (`directory_audit`) without a secret,
token or PIN.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from jwcrypto.jwk import JWK
from pydantic import ValidationError
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from station import vendors
from station.customer.graph import GraphClient, display_name
from station.customer.http import ProviderError, ProviderUnreachable, Throttled, TokenRefused
from station.customer.pingone import PingOneClient
from station.customer.settings import GraphSettings, PingOneSettings
from station.errors import StationError
from station.fulfillment.directories.models import (
    CONFIRMATION,
    DirectoryCreate,
    DirectoryEdit,
    DirectoryView,
    EnrollOutcome,
    FindingView,
)
from station.fulfillment.directories.sealing import SecretBox
from station.fulfillment.errors import BadRequest, Conflict, NotFound, ServiceError
from station.fulfillment.store import (
    ItemState,
    Store,
    directory_audit,
    directory_configs,
    directory_enrollments,
    items,
)
from station.protocol.backend import PublicKeys
from station.protocol.jose import ResponseRejected, open_response, seal_request
from station.protocol.messages import (
    CredentialRequest,
    PinRequest,
    ResponseKey,
    ShipmentOrder,
    describe_validation_error,
)

log = logging.getLogger("station.directories")

#: Graph's FIDO2 provisioning writes this origin into clientDataJSON (Microsoft's documented
#: sample for provisioning passkeys on behalf of users: "origin": "https://login.microsoft.com")
GRAPH_ORIGIN = "https://login.microsoft.com"
#: the challenge must outlive the station's queue and the programming (beta: 5..43200 minutes)
DEFAULT_CHALLENGE_MINUTES = 7 * 24 * 60
PIN_LENGTH = 6
#: when a directory could not be reached or answered 5xx, the pass tries again this much later
RETRY_UNREACHABLE_SECONDS = 60.0
#: how long one pass holds an enrollment it is registering
REGISTRATION_LEASE_SECONDS = 120.0
PRODUCT = {"product_id": 29, "inventory_product_id": 18, "product_quantity": 1, "customization_id": "DIRECTORY"}


class DirectoryRefused(ServiceError):
    """The directory refused what we asked (wrong secret, missing permission, policy, ...):
    422 with the directory's own words; `error_data` says which HTTP status, code and
    correlation id it answered with."""

    code = "directory_refused"
    status = 422


class ConfirmationRequired(BadRequest):
    code = "confirmation_required"


class PreflightBlocked(ServiceError):
    """A pre-flight finding blocks the enrollment: nothing was programmed, nothing queued."""

    code = "preflight_blocked"
    status = 422


def refusal(exc: ProviderError, client: Any, kind: str) -> DirectoryRefused:
    """A provider's refusal as the API answers it, with a code telling a wrong secret from a
    missing permission."""
    if isinstance(exc, TokenRefused) or exc.status == 401:
        code = "directory_credentials_refused"
    elif exc.status == 403:
        code = "directory_permission_missing"
    elif isinstance(exc, Throttled):
        code = "directory_throttled"
    elif isinstance(exc, ProviderUnreachable):
        code = "directory_unreachable"
    else:
        code = "directory_refused"
    from station.customer.directory_policy import explain_refusal

    return DirectoryRefused(exc.message, code=code, error_data={
        "directory": kind, "http_status": exc.status, "directory_code": exc.provider_code,
        "correlation_id": correlation_id(client), "what_to_do": explain_refusal(kind, exc)})


def correlation_id(client: Any) -> str | None:
    return getattr(client, "last_correlation_id", None)


@dataclass(frozen=True)
class Config:
    """One stored configuration (its sealed members stay in the row: not here, not in a repr)."""

    id: int
    owner: str
    name: str
    kind: str
    directory_id: str
    client_id: str
    settings: dict[str, Any]
    pin_delivery_key: dict[str, Any]
    response_key_public: dict[str, Any]
    created: float
    updated: float

    def view(self) -> DirectoryView:
        s = self.settings
        return DirectoryView(
            name=self.name, kind=self.kind, client_id=self.client_id,
            tenant_id=self.directory_id if self.kind == "entra" else None,
            environment_id=self.directory_id if self.kind == "pingone" else None,
            region=s.get("region"), pin_delivery_key=self.pin_delivery_key,
            response_key=self.response_key_public, default_address=s.get("default_address"),
            endpoints=s.get("endpoints"), rp_id=s.get("rp_id"), policy_id=s.get("policy_id"),
            challenge_timeout_minutes=s.get("challenge_timeout_minutes"), aaguids=s.get("aaguids"),
            created_at=self.created, updated_at=self.updated)


def _aad(owner: str, name: str, what: str) -> str:
    return f"{owner}\x00{name}\x00{what}"


def default_client(kind: str, directory_id: str, client_id: str, secret: str, settings: dict[str, Any], *,
                   max_retries: int = 0) -> GraphClient | PingOneClient:
    """The customer package's client for one configuration (429s are not waited out here: the
    caller reports them or retries at the Retry-After)."""
    endpoints = settings.get("endpoints") or {}
    common = {"client_id": client_id, "client_secret": secret, "max_retries": max_retries}
    if kind == "entra":
        graph = {k: v for k, v in {"url": endpoints.get("graph_url"), "login_url": endpoints.get("login_url"),
                                   "challenge_timeout_minutes": settings.get("challenge_timeout_minutes")}.items()
                 if v is not None}
        return GraphClient(GraphSettings.from_values(tenant_id=directory_id, **common, **graph))
    ping = {k: v for k, v in {"url": endpoints.get("api_url"), "auth_url": endpoints.get("auth_url"),
                              "region": settings.get("region"), "rp_id": settings.get("rp_id"),
                              "policy_id": settings.get("policy_id")}.items() if v is not None}
    return PingOneClient(PingOneSettings.from_values(environment_id=directory_id, **common, **ping))


ClientFactory = Callable[..., Any]


@dataclass
class RegistrationPass:
    """What one pass over the pending registrations did."""

    registered: list[str] = field(default_factory=list)  # shipment ids
    refused: list[str] = field(default_factory=list)
    throttled: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # the factory failed the item: nothing to register

    @property
    def total(self) -> int:
        return len(self.registered) + len(self.refused) + len(self.throttled) + len(self.failed)


class Directories:
    """Directory configurations, pre-flight, enrollment and registration over one Store.

    `box` seals the secrets; `keys` are the factory's published keys (the service's
    PublishedKeys: requests are sealed to its transport keys, responses checked against its
    signing keys); `clients` builds a directory client (tests may pass
    one that points at stand-ins; the default is the customer package's)."""

    def __init__(self, store: Store, box: SecretBox, keys: PublicKeys, *, clients: ClientFactory = default_client,
                 shipped_aaguids: Iterable[str] | None = None, clock: Callable[[], float] = time.time,
                 quota: Any = None) -> None:
        self.store = store
        #: the service's per-tenant shipment quota (door.TenantQuota), as POST /v1/fpr/shipments
        #: meets it; None from the operator's CLI
        self.quota = quota
        self.box = box
        self.keys = keys
        self.clients = clients
        self.shipped_aaguids = sorted(shipped_aaguids) if shipped_aaguids is not None else sorted(
            str(a) for a in vendors.catalogue())
        self.clock = clock

    def __repr__(self) -> str:
        return f"Directories({self.box!r})"

    # -- configurations --------------------------------------------------------------------
    def add(self, owner: str, body: DirectoryCreate, *, actor: str) -> Config:
        """ADD: verify the values by obtaining a token and reading one user, then store them
        (the secret and the new response key sealed). A refusal stores nothing."""
        pin_key = pin_delivery_key(body.pin_delivery_key)
        if self._find(owner, body.name) is not None:
            raise Conflict(f"a directory configuration named {body.name!r} exists already", code="directory_exists")
        settings = {k: v for k, v in {
            "region": body.region, "rp_id": body.rp_id, "policy_id": body.policy_id,
            "challenge_timeout_minutes": body.challenge_timeout_minutes, "aaguids": body.aaguids,
            "default_address": body.default_address.model_dump() if body.default_address else None,
            "endpoints": body.endpoints.model_dump(exclude_none=True) if body.endpoints else None,
        }.items() if v is not None}
        directory_id = body.tenant_id or body.environment_id
        secret = body.client_secret.get_secret_value()
        self._verify(owner, body.name, body.kind, directory_id, body.client_id, secret, settings,
                     actor=actor, action="add")
        response_key = JWK.generate(kty="EC", crv="P-384", use="enc", kid=f"dir-{uuid.uuid4().hex[:20]}")
        now = self.clock()
        try:
            with self.store._tx() as conn:
                conn.execute(insert(directory_configs).values(
                    owner=owner, name=body.name, kind=body.kind, directory_id=directory_id,
                    client_id=body.client_id, secret_sealed=self.box.seal(secret, _aad(owner, body.name, "secret")),
                    settings=json.dumps(settings), pin_delivery_key=json.dumps(pin_key),
                    response_key_public=json.dumps(response_key.export_public(as_dict=True)),
                    response_key_sealed=self.box.seal(response_key.export_private(),
                                                      _aad(owner, body.name, "response-key")),
                    created=now, updated=now))
        except IntegrityError:
            raise Conflict(f"a directory configuration named {body.name!r} exists already",
                           code="directory_exists") from None
        return self.get(owner, body.name)

    def list(self, owner: str) -> list[Config]:
        with self.store._tx() as conn:
            rows = conn.execute(select(directory_configs).where(directory_configs.c.owner == owner)
                                .order_by(directory_configs.c.name)).all()
        return [_config(r) for r in rows]

    def get(self, owner: str, name: str) -> Config:
        row = self._find(owner, name)
        if row is None:  # another tenant's configuration answers as one that does not exist
            raise NotFound(f"no directory configuration {name!r}")
        return _config(row)

    def _find(self, owner: str, name: str):
        with self.store._tx() as conn:
            return conn.execute(select(directory_configs).where(
                directory_configs.c.owner == owner, directory_configs.c.name == name)).first()

    def _secret(self, row) -> str:
        return self.box.open(row.secret_sealed, _aad(row.owner, row.name, "secret"))

    def _response_key(self, row) -> JWK:
        return JWK.from_json(self.box.open(row.response_key_sealed, _aad(row.owner, row.name, "response-key")))

    def _client(self, row, *, max_retries: int = 0):
        return self.clients(row.kind, row.directory_id, row.client_id, self._secret(row), json.loads(row.settings),
                            max_retries=max_retries)

    def test(self, owner: str, name: str, *, actor: str) -> dict[str, Any]:
        """Test Connection: {ok, message, http_status, correlation_id} in the directory's words."""
        row = self._found(owner, name)
        try:
            answer = self._verify(owner, name, row.kind, row.directory_id, row.client_id, self._secret(row),
                                  json.loads(row.settings), actor=actor, action="test")
        except DirectoryRefused as exc:
            data = exc.error_data or {}
            return {"ok": False, "message": exc.message, "http_status": data.get("http_status"),
                    "correlation_id": data.get("correlation_id"), "what_to_do": data.get("what_to_do")}
        return {"ok": True, "message": answer["message"], "http_status": 200,
                "correlation_id": answer["correlation_id"], "what_to_do": None}

    def _found(self, owner: str, name: str):
        row = self._find(owner, name)
        if row is None:
            raise NotFound(f"no directory configuration {name!r}")
        return row

    def _verify(self, owner, name, kind, directory_id, client_id, secret, settings, *, actor, action) -> dict:
        client = self.clients(kind, directory_id, client_id, secret, settings, max_retries=0)
        try:
            result = self._audited(client, owner, name, actor, action, None, lambda: client.verify())
        except ProviderError as exc:
            raise refusal(exc, client, kind) from None
        finally:
            client.close()
        readable = result.get("users_readable") if isinstance(result, dict) else None
        message = f"connected: a token was issued and {readable if readable is not None else 'the'} user(s) read"
        return {"message": message, "correlation_id": correlation_id(client)}

    def edit(self, owner: str, name: str, body: DirectoryEdit, *, actor: str) -> Config:
        """Edit: rename, or new credentials (verified like ADD before they replace the old)."""
        row = self._found(owner, name)
        new_name = body.name or row.name
        client_id = body.client_id or row.client_id
        secret = body.client_secret.get_secret_value() if body.client_secret else self._secret(row)
        if new_name != row.name and self._find(owner, new_name) is not None:
            raise Conflict(f"a directory configuration named {new_name!r} exists already", code="directory_exists")
        if body.client_secret is not None:
            self._verify(owner, name, row.kind, row.directory_id, client_id, secret, json.loads(row.settings),
                         actor=actor, action="edit")
        response_key = self.box.open(row.response_key_sealed, _aad(owner, row.name, "response-key"))
        try:
            with self.store._tx() as conn:
                conn.execute(update(directory_configs).where(directory_configs.c.id == row.id).values(
                    name=new_name, client_id=client_id,
                    secret_sealed=self.box.seal(secret, _aad(owner, new_name, "secret")),
                    response_key_sealed=self.box.seal(response_key, _aad(owner, new_name, "response-key")),
                    updated=self.clock()))
                if new_name != row.name:
                    self._audit(conn, owner, actor, row.name, "edit", outcome="ok", message=f"renamed to {new_name}")
        except IntegrityError:
            raise Conflict(f"a directory configuration named {new_name!r} exists already",
                           code="directory_exists") from None
        return self.get(owner, new_name)

    def delete(self, owner: str, name: str, confirm: str | None, *, actor: str) -> None:
        """Delete, once the customer typed the confirmation text. Its enrollments whose key no
        station has taken yet go with it (their shipments are deleted); a key already being
        programmed can no longer be registered: the next pass fails its item
        `directory_refused`, so it is reset, not shipped."""
        if confirm != CONFIRMATION:
            raise ConfirmationRequired(f'type "{CONFIRMATION}" to delete the directory configuration {name!r}; '
                                       "nothing was deleted", error_data={"confirm": CONFIRMATION})
        row = self._found(owner, name)
        with self.store._tx() as conn:
            pending = conn.execute(select(directory_enrollments.c.id, directory_enrollments.c.shipment_id).where(
                directory_enrollments.c.config_id == row.id, directory_enrollments.c.state == "pending")).all()
            conn.execute(delete(directory_configs).where(directory_configs.c.id == row.id))
            self._audit(conn, owner, actor, name, "delete", outcome="ok")
        for enrollment in pending:
            try:
                self.store.delete_shipment(owner, enrollment.shipment_id)
            except (Conflict, NotFound):
                continue  # a station has it: the pass refuses it once programmed
            with self.store._tx() as conn:
                conn.execute(update(directory_enrollments).where(directory_enrollments.c.id == enrollment.id)
                             .values(state="cancelled", message="the directory configuration was deleted",
                                     next_attempt=None, updated=self.clock()))

    # -- pre-flight --------------------------------------------------------------------------
    def preflight(self, owner: str, name: str, *, users: list[str] | None = None, group: str | None = None,
                  actor: str) -> list[FindingView]:
        """The directory's policy against what this factory ships, in plain words."""
        row = self._found(owner, name)
        client = self._client(row)
        try:
            targets = self._resolve(client, row, users, group, actor) if (users or group) else []
            return self._findings(client, row, targets, actor)
        except ProviderError as exc:
            raise refusal(exc, client, row.kind) from None
        finally:
            client.close()

    def _aaguids(self, row) -> list[str]:
        return json.loads(row.settings).get("aaguids") or self.shipped_aaguids

    def _findings(self, client, row, targets: list[dict], actor: str) -> list[FindingView]:
        from station.customer.directory_policy import entra_findings, pingone_findings

        settings = json.loads(row.settings)
        if row.kind == "entra":
            policy = self._audited(client, row.owner, row.name, actor, "preflight", None, client.fido2_policy)
            groups = None
            # the findings name the users by their keys here: UPNs read better than object ids
            if targets:
                groups = {_user_name(u): self._audited(client, row.owner, row.name, actor, "preflight", _user_name(u),
                                                 lambda u=u: client.user_group_ids(u["id"])) for u in targets}
            found = entra_findings(policy, self._aaguids(row), groups)
        else:
            policy = self._audited(client, row.owner, row.name, actor, "preflight", None,
                                   lambda: client.fido_policy(settings.get("policy_id")))
            found = pingone_findings(policy, self._aaguids(row))
        return [FindingView(level=f.level, code=f.code, message=f.message) for f in found]

    def _resolve(self, client, row, users: list[str] | None, group: str | None, actor: str) -> list[dict]:
        if group is not None:
            found = self._audited(client, row.owner, row.name, actor, "resolve", f"group {group}",
                                  lambda: client.group_members(group))
        else:
            found = [self._audited(client, row.owner, row.name, actor, "resolve", ref,
                                   lambda ref=ref: client.get_user(ref)) for ref in users or []]
        unique: dict[str, dict] = {}
        for user in found:
            unique.setdefault(user["id"], user)
        return list(unique.values())

    # -- enrollment --------------------------------------------------------------------------
    def enroll(self, owner: str, name: str, *, users: list[str] | None = None, group: str | None = None,
               actor: str) -> tuple[list[FindingView], list[EnrollOutcome]]:
        """Pre-flight (refused on a blocking finding: PreflightBlocked, nothing queued), then
        per user: creation options, one shipment of one item. A user already pending is not
        enrolled twice; one without an address (theirs or the configuration's default) is
        skipped."""
        row = self._found(owner, name)
        client = self._client(row)
        try:
            try:
                targets = self._resolve(client, row, users, group, actor)
                findings = self._findings(client, row, targets, actor)
            except ProviderError as exc:
                raise refusal(exc, client, row.kind) from None
            blocking = [f for f in findings if f.level == "block"]
            if blocking:
                raise PreflightBlocked(
                    "the directory's policy must change before keys are programmed: "
                    + " ".join(f.message for f in blocking),
                    error_data=[f.model_dump() for f in findings])
            outcomes = [self._enroll_one(client, row, user, actor) for user in targets]
        finally:
            client.close()
        return findings, outcomes

    def _enroll_one(self, client, row, user: dict, actor: str) -> EnrollOutcome:
        who = _user_name(user)
        with self.store._tx() as conn:
            pending = conn.execute(select(directory_enrollments.c.shipment_id).where(
                directory_enrollments.c.config_id == row.id, directory_enrollments.c.user_id == user["id"],
                directory_enrollments.c.state == "pending")).first()
        if pending is not None:
            return EnrollOutcome(user=who, user_id=user["id"], outcome="already_pending",
                                 shipment_id=pending.shipment_id, message="a key for this user is already on its way")
        if self.quota is not None:
            try:  # before the directory is asked for anything on this user's behalf
                self.quota.check(row.owner, 0)
            except ServiceError as exc:
                return EnrollOutcome(user=who, user_id=user["id"], outcome="failed", message=exc.message)
        settings = json.loads(row.settings)
        envelope = shipping_envelope(user, settings.get("default_address"))
        if envelope is None:
            return EnrollOutcome(user=who, user_id=user["id"], outcome="skipped",
                                 message="no complete mailing address in the directory and no default address "
                                         "on the configuration: nothing was created for this user")
        device_id = None
        try:
            if row.kind == "entra":
                minutes = settings.get("challenge_timeout_minutes") or DEFAULT_CHALLENGE_MINUTES
                options = self._audited(client, row.owner, row.name, actor, "options", who,
                                        lambda: client.creation_options(user["id"], minutes))
                public_key = options["publicKey"]
                not_after = options["challengeTimeoutDateTime"]
                origin = GRAPH_ORIGIN
            else:
                device, public_key = self._audited(
                    client, row.owner, row.name, actor, "options", who,
                    lambda: client.create_fido2_device(user["id"], rp_id=settings.get("rp_id"),
                                                       policy_id=settings.get("policy_id")),
                    method=lambda answer: answer[0].get("id"), status=201)
                device_id = device["id"]
                not_after = None
                origin = f"https://{public_key['rp']['id']}"  # PingOne: the FIDO2 policy's relying party
        except ProviderError as exc:
            return EnrollOutcome(user=who, user_id=user["id"], outcome="failed", message=exc.message)
        try:
            return self._ship(row, user, who, envelope, public_key, origin, not_after, device_id)
        except StationError as exc:
            if device_id is not None:  # nothing half-created: the device we made goes again
                with _suppressed():
                    client.delete_device(user["id"], device_id)
            return EnrollOutcome(user=who, user_id=user["id"], outcome="failed", message=exc.message)

    def _ship(self, row, user, who, envelope, public_key, origin, not_after, device_id) -> EnrollOutcome:
        from station.fulfillment.api import accept_shipment

        transport = pick_transport_key(self.keys.jwks("transport"))
        pin_request = {"version": 1, "requestId": str(uuid.uuid4()), "type": "generate", "length": PIN_LENGTH,
                       "minPINLength": PIN_LENGTH, "forcePINChange": True,
                       "responseKey": json.loads(row.pin_delivery_key)}
        cred_request = {"version": 1, "requestId": str(uuid.uuid4()), "origin": origin,
                        "responseKey": json.loads(row.response_key_public), "publicKey": public_key}
        if not_after is not None:
            cred_request["notAfter"] = not_after
        try:
            PinRequest.model_validate(pin_request)
            CredentialRequest.model_validate(cred_request)
        except ValidationError as exc:
            raise BadRequest(f"the directory's creation options do not make a credential request: "
                             f"{describe_validation_error(exc)}") from None
        pin_jwe = seal_request(pin_request, transport_jwk=transport, kid=transport["kid"])
        cred_jwe = seal_request(cred_request, transport_jwk=transport, kid=transport["kid"])
        order = {**envelope, "shipment_items": [{**PRODUCT, "product_customizations": [
            {"fido_pin_request": pin_jwe, "fido_credential_requests": [cred_jwe]}]}]}
        try:
            body = ShipmentOrder.model_validate(order)
        except ValidationError as exc:
            raise BadRequest(f"the shipment for {who} is refused: {describe_validation_error(exc)}") from None
        shipment_id = accept_shipment(self.store, self.keys, row.owner, body)
        if self.quota is not None:
            self.quota.record(row.owner, len(json.dumps(order)))
        now = self.clock()
        try:
            with self.store._tx() as conn:
                item_id = conn.execute(select(items.c.id).where(items.c.shipment_id == shipment_id)).scalar_one()
                conn.execute(insert(directory_enrollments).values(
                    config_id=row.id, owner=row.owner, user_id=user["id"], user_name=who, shipment_id=shipment_id,
                    item_id=item_id, state="pending", device_id=device_id, origin=origin,
                    not_after=_epoch(not_after), credential_request=cred_jwe,
                    credential_request_id=cred_request["requestId"], pin_request=pin_jwe,
                    pin_request_id=pin_request["requestId"], next_attempt=now, created=now, updated=now))
        except BaseException:
            with _suppressed():  # the shipment alone would be programmed and never registered
                self.store.delete_shipment(row.owner, shipment_id)
            raise
        return EnrollOutcome(user=who, user_id=user["id"], outcome="enrolled", shipment_id=shipment_id)

    def enrollments(self, owner: str, name: str) -> list[dict[str, Any]]:
        row = self._found(owner, name)
        with self.store._tx() as conn:
            rows = conn.execute(select(directory_enrollments).where(directory_enrollments.c.config_id == row.id)
                                .order_by(directory_enrollments.c.id)).all()
        return [{"user_id": r.user_id, "user_name": r.user_name, "shipment_id": r.shipment_id, "state": r.state,
                 "method_id": r.method_id, "message": r.message, "pin_request": r.pin_request,
                 "created_at": r.created, "updated_at": r.updated} for r in rows]

    # -- registration after the station's submit ----------------------------------------------
    def register_pending(self, *, now: float | None = None) -> RegistrationPass:
        """One pass: every pending enrollment whose item a station has finished and whose retry
        time has come. Registered → the method/device id recorded; throttled → stays pending
        until the Retry-After; refused → the item fails `directory_refused` (shipment 8) with
        the directory's message, and the technician resets the key instead of shipping it."""
        now = self.clock() if now is None else now
        done = RegistrationPass()
        query = (select(directory_enrollments, items.c.state.label("item_state"), items.c.result.label("item_result"))
                 .join(items, items.c.id == directory_enrollments.c.item_id)
                 .where(directory_enrollments.c.state == "pending",
                        items.c.state.in_([ItemState.FULFILLED.value, ItemState.FAILED.value]),
                        (directory_enrollments.c.next_attempt.is_(None)) | (directory_enrollments.c.next_attempt <= now))
                 .order_by(directory_enrollments.c.id))
        with self.store._tx() as conn:
            pending = conn.execute(query).all()
        for enrollment in pending:
            with self.store._tx() as conn:
                config = conn.execute(select(directory_configs).where(
                    directory_configs.c.id == enrollment.config_id)).first()
            if config is None:  # deleted while its key was being programmed
                self._refuse(enrollment, "the directory configuration was deleted before the key was registered")
                done.refused.append(enrollment.shipment_id)
                continue
            if enrollment.item_state == ItemState.FAILED.value:  # the factory could not make the key
                self._settle(enrollment, "failed", message="the factory could not program this key")
                done.failed.append(enrollment.shipment_id)
                continue
            if not self._take(enrollment, now):
                continue  # another pass (`station serve`'s, a CLI's) has it
            outcome = self._register_one(config, enrollment, now)
            getattr(done, outcome).append(enrollment.shipment_id)
        return done

    def _register_one(self, config, enrollment, now: float) -> str:
        product = json.loads(enrollment.item_result)
        who = enrollment.user_name or enrollment.user_id
        try:
            opened = open_response(product["fido_credential_responses"][0],
                                   response_private_key=self._response_key(config),
                                   signing_jwks=self.keys.jwks("signing"), request_jwe=enrollment.credential_request)
            if opened.request_id != enrollment.credential_request_id:
                raise ResponseRejected("the credential response answers another requestId")
        except (StationError, KeyError, IndexError, ValueError) as exc:
            message = f"the credential response does not verify: {getattr(exc, 'message', exc.__class__.__name__)}"
            with self.store._tx() as conn:
                self._audit(conn, config.owner, "service", config.name, "register", target_user=who,
                            outcome="refused", message=message)
            self._refuse(enrollment, message)
            return "refused"
        credential = opened.credential.model_dump(mode="json", by_alias=True, exclude_none=True)
        entry = vendors.lookup(opened.aaguid)
        name = display_name(opened.serial_number, entry.models[0] if entry else "Security key")
        client = self._client(config)
        try:
            if config.kind == "entra":
                answer = self._audited(client, config.owner, config.name, "service", "register", who,
                                       lambda: client.register(enrollment.user_id, name, credential),
                                       method=lambda a: a.get("id"), status=201)
            else:
                answer = self._audited(client, config.owner, config.name, "service", "register", who,
                                       lambda: client.activate_fido2_device(enrollment.user_id, enrollment.device_id,
                                                                            origin=enrollment.origin,
                                                                            credential=credential),
                                       method=lambda a: a.get("id"))
        except Throttled as exc:
            wait = exc.retry_after if exc.retry_after is not None else RETRY_UNREACHABLE_SECONDS
            self._later(enrollment, now + wait, exc.message)
            return "throttled"
        except ProviderError as exc:
            if isinstance(exc, ProviderUnreachable) or (exc.status or 0) >= 500 or exc.status is None:
                self._later(enrollment, now + RETRY_UNREACHABLE_SECONDS, exc.message)
                return "throttled"
            self._refuse(enrollment, exc.message)
            return "refused"
        finally:
            client.close()
        self._settle(enrollment, "registered", method_id=answer.get("id"), message=None)
        return "registered"

    def _take(self, enrollment, now: float) -> bool:
        """Lease the enrollment to this pass for REGISTRATION_LEASE_SECONDS (compare-and-set on
        its retry time), so two passes never register one credential twice; a pass that dies
        mid-way leaves it to the next one after the lease."""
        with self.store._tx() as conn:
            taken = conn.execute(update(directory_enrollments).where(
                directory_enrollments.c.id == enrollment.id, directory_enrollments.c.state == "pending",
                directory_enrollments.c.next_attempt.is_(None) | (directory_enrollments.c.next_attempt <= now))
                .values(next_attempt=now + REGISTRATION_LEASE_SECONDS))
        return taken.rowcount == 1

    def _later(self, enrollment, when: float, message: str) -> None:
        with self.store._tx() as conn:
            conn.execute(update(directory_enrollments).where(directory_enrollments.c.id == enrollment.id)
                         .values(next_attempt=when, message=message, updated=self.clock()))

    def _settle(self, enrollment, state: str, *, method_id: str | None = None, message: str | None) -> None:
        with self.store._tx() as conn:
            conn.execute(update(directory_enrollments).where(directory_enrollments.c.id == enrollment.id)
                         .values(state=state, method_id=method_id, message=message, next_attempt=None,
                                 updated=self.clock()))

    def _refuse(self, enrollment, message: str) -> None:
        """The item in a visible error state: failed `directory_refused` with the directory's
        words (its shipment reads 8); `station ship` then refuses it."""
        error = json.dumps({"error_code": "directory_refused",
                            "error_message": f"the directory refused the registration: {message}"},
                           sort_keys=True, separators=(",", ":"))
        with self.store._tx() as conn:
            conn.execute(update(items).where(items.c.id == enrollment.item_id, items.c.state == ItemState.FULFILLED.value)
                         .values(state=ItemState.FAILED.value, result=error, read_at=None))
            conn.execute(update(directory_enrollments).where(directory_enrollments.c.id == enrollment.id)
                         .values(state="refused", message=message, next_attempt=None, updated=self.clock()))

    # -- audit ---------------------------------------------------------------------------------
    def _audited(self, client, owner: str, name: str, actor: str, action: str, target: str | None,
                 call: Callable[[], Any], *, method: Callable[[Any], str | None] | None = None,
                 status: int = 200) -> Any:
        """`call()` (one directory call), recorded in the audit with its outcome, HTTP status,
        correlation id and the directory's message."""
        try:
            answer = call()
        except ProviderError as exc:
            outcome = "throttled" if isinstance(exc, Throttled) else (
                "refused" if exc.status is not None and 400 <= exc.status < 500 else "error")
            with self.store._tx() as conn:
                self._audit(conn, owner, actor, name, action, target_user=target, outcome=outcome,
                            http_status=exc.status, correlation=correlation_id(client), message=exc.message)
            raise
        with self.store._tx() as conn:
            self._audit(conn, owner, actor, name, action, target_user=target, outcome="ok",
                        method_id=method(answer) if method else None, http_status=status,
                        correlation=correlation_id(client))
        return answer

    def _audit(self, conn, owner: str, actor: str, name: str, action: str, *, outcome: str,
               target_user: str | None = None, method_id: str | None = None, http_status: int | None = None,
               correlation: str | None = None, message: str | None = None) -> None:
        conn.execute(insert(directory_audit).values(
            at=self.clock(), owner=owner, actor=actor, config_name=name, action=action, target_user=target_user,
            method_id=method_id, outcome=outcome, http_status=http_status, correlation_id=correlation,
            message=message))

    def audit(self, owner: str, name: str, *, limit: int = 500) -> list[dict[str, Any]]:
        """The configuration's audit, oldest first (a deleted one's too: the records stay)."""
        with self.store._tx() as conn:
            rows = conn.execute(select(directory_audit).where(
                and_(directory_audit.c.owner == owner, directory_audit.c.config_name == name))
                .order_by(directory_audit.c.id.desc()).limit(limit)).all()
        if not rows and self._find(owner, name) is None:
            raise NotFound(f"no directory configuration {name!r}")
        return [{"at": r.at, "actor": r.actor, "config_name": r.config_name, "action": r.action,
                 "target_user": r.target_user, "method_id": r.method_id, "outcome": r.outcome,
                 "http_status": r.http_status, "correlation_id": r.correlation_id, "message": r.message}
                for r in reversed(rows)]


# -- helpers ---------------------------------------------------------------------------------


def pick_transport_key(jwks: dict) -> dict:
    keys = jwks.get("keys") or []
    if not keys:
        raise StationError("the factory publishes no transport key", code="invalid_request")
    return keys[0]


def pin_delivery_key(jwk: dict[str, Any]) -> dict[str, Any]:
    """The customer's PIN-delivery key: a public EC P-384 JWK, `use` "enc", with a kid; a `d`
    (a private key sent by mistake) is refused and not echoed."""
    if "d" in jwk:
        raise BadRequest("the PIN-delivery key carries a private member ('d'): send the public key only, "
                         "and treat that private key as disclosed", code="invalid_request")
    try:
        ResponseKey.model_validate(jwk)
    except ValidationError as exc:
        raise BadRequest(f"the PIN-delivery key is not a public EC P-384 JWK with use \"enc\" and a kid: "
                         f"{describe_validation_error(exc)}") from None
    return {k: jwk[k] for k in ("kty", "crv", "use", "kid", "x", "y")}


def _user_name(user: dict) -> str:
    return user.get("userPrincipalName") or user.get("username") or user.get("id")


def _names(user: dict) -> tuple[str, str]:
    first = user.get("givenName") or (user.get("name") or {}).get("given")
    last = user.get("surname") or (user.get("name") or {}).get("family")
    if not (first and last):
        parts = (user.get("displayName") or _user_name(user).split("@")[0]).split()
        first, last = (parts[0], " ".join(parts[1:])) if len(parts) > 1 else (parts[0], parts[0])
    return first[:15], last[:20]


def _user_address(user: dict) -> dict[str, str] | None:
    """A complete mailing address from the directory's user (Graph's streetAddress/city/state/
    postalCode/country; PingOne's address object), or None."""
    ping = user.get("address") if isinstance(user.get("address"), dict) else {}
    address = {
        "street_line1": user.get("streetAddress") or ping.get("streetAddress"),
        "city": user.get("city") or ping.get("locality"),
        "region": user.get("state") or ping.get("region") or "",
        "postal_code": user.get("postalCode") or ping.get("postalCode") or "",
        "country_code_2": user.get("country") or ping.get("countryCode") or user.get("usageLocation"),
    }
    if not (address["street_line1"] and address["city"] and address["country_code_2"]):
        return None
    return {**address, "street_line2": ""}


def shipping_envelope(user: dict, default: dict | None) -> dict | None:
    """The shipment's recipient and mailing address: the directory user's where complete, else
    the configuration's default address; None when neither."""
    own = _user_address(user)
    telephone = user.get("mobilePhone") or user.get("mobile") or (user.get("businessPhones") or [None])[0]
    if own is None and default is None:
        return None
    address = own or {k: default[k] for k in ("street_line1", "street_line2", "city", "region", "postal_code",
                                              "country_code_2")}
    first, last = _names(user)
    email = user.get("mail") or user.get("email") or _user_name(user)
    recipient = {"recipient_company": (default or {}).get("recipient_company", "")[:20],
                 "recipient_email": email, "recipient_firstname": first, "recipient_lastname": last,
                 "recipient_telephone": telephone or (default or {}).get("recipient_telephone") or ""}
    if not recipient["recipient_telephone"]:
        return None
    return {"delivery_type": 1, "recipient": recipient, "mailing_address": address}


def _epoch(value: str | None) -> float | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def _config(r) -> Config:
    return Config(r.id, r.owner, r.name, r.kind, r.directory_id, r.client_id, json.loads(r.settings),
                  json.loads(r.pin_delivery_key), json.loads(r.response_key_public), r.created, r.updated)


class _suppressed:
    """Best effort clean-up after a failure that is already being reported."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None:
            log.warning("directory clean-up failed: %s", exc.__class__.__name__)
        return kind is not None and issubclass(kind, Exception)


def has_pending(store: Store) -> bool:
    """Whether any enrollment waits for its registration (before the directory key is opened)."""
    with store._tx() as conn:
        return conn.execute(select(directory_enrollments.c.id).where(
            directory_enrollments.c.state == "pending").limit(1)).first() is not None


class RegistrationLoop:
    """`station serve`'s background pass over pending registrations, every `interval` seconds,
    stopped cleanly by `stop()` (the pass in progress finishes its current call)."""

    def __init__(self, store: Store, make: Callable[[], Directories], *, interval: float = 10.0) -> None:
        import threading

        self.store, self.make, self.interval = store, make, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="directory-registrations", daemon=True)
        self.passes = 0

    def start(self) -> RegistrationLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if has_pending(self.store):
                    done = self.make().register_pending()
                    if done.total:
                        log.info("directory registrations: %d registered, %d refused, %d retried later, "
                                 "%d failed at the factory", len(done.registered), len(done.refused),
                                 len(done.throttled), len(done.failed))
            except StationError as exc:  # the database or the key is away: next round
                log.warning("directory registrations: %s", exc.code)
            self.passes += 1

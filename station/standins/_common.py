"""What the three stand-ins share: a loopback server, access tokens with expiry, throttling on
demand, and the relying-party side of WebAuthn (python-fido2's `Fido2Server`).

Nothing here imports the station: a stand-in is Okta, Graph or PingOne, as `station.virtual` is
a YubiKey. The relying party is what the real identity provider does after activation: it keeps
the registered credential and later checks sign-in assertions against it.
"""

from __future__ import annotations

from fastapi import Request

import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fido2.attestation import AttestationVerifier, UntrustedAttestation
from fido2.server import Fido2Server
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticationResponse,
    PublicKeyCredentialRpEntity,
    RegistrationResponse,
    UserVerificationRequirement,
)


class StandinError(Exception):
    """A stand-in could not start or was asked for something it does not do."""


# -- the loopback server -------------------------------------------------------------------------


class LoopbackServer:
    """A FastAPI app served by uvicorn in a thread, on a socket bound before the thread starts
    (port 0 picks a free port, known at once as `url`). `with LoopbackServer(app) as server:`."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="standin", daemon=True)

    def start(self, timeout: float = 10.0) -> LoopbackServer:
        self.launch()
        return self.wait_started(timeout)

    def launch(self) -> None:
        """Start serving without waiting (several servers start side by side)."""
        self.thread.start()

    def wait_started(self, timeout: float = 10.0) -> LoopbackServer:
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise StandinError("the stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.ask_stop()
        self.join()

    def ask_stop(self) -> None:
        """Ask to stop without waiting (several servers stop side by side)."""
        self.server.should_exit = True

    def join(self) -> None:
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- tokens and throttling -------------------------------------------------------------------------


@dataclass
class _Issued:
    client_id: str
    expires_at: float
    roles: frozenset = frozenset()


class Tokens:
    """Opaque bearer tokens, each valid for `lifetime` seconds after it was issued."""

    def __init__(self, lifetime: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._issued: dict[str, _Issued] = {}
        self._lock = threading.Lock()

    def issue(self, client_id: str, roles=()) -> tuple[str, int]:
        """→ (access_token, expires_in seconds). `roles` are what the token grants, fixed when it
        is issued (an app-only token's `roles` claim; a worker's role assignments)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._issued[token] = _Issued(client_id, self.clock() + self.lifetime, frozenset(roles))
        return token, int(self.lifetime)

    def roles(self, token: str | None) -> frozenset:
        """The roles a live token was issued with (empty for an unknown one)."""
        with self._lock:
            issued = self._issued.get(token or "")
        return issued.roles if issued is not None else frozenset()

    def check(self, token: str | None) -> tuple[str | None, str]:
        """→ (client_id, "") for a live token, or (None, why) with why "missing", "unknown" or
        "expired"."""
        if not token:
            return None, "missing"
        with self._lock:
            issued = self._issued.get(token)
        if issued is None:
            return None, "unknown"
        if self.clock() >= issued.expires_at:
            return None, "expired"
        return issued.client_id, ""

    def expire_all(self) -> None:
        """Every token issued so far expires now (a test of the client's refresh)."""
        with self._lock:
            for issued in self._issued.values():
                issued.expires_at = 0.0


class Throttle:
    """429 on demand: `arm(count, retry_after)` makes the next `count` API calls answer 429;
    `every(n, retry_after)` makes every n-th call answer 429 from now on (`station standin
    --throttle-every N`)."""

    def __init__(self) -> None:
        self._left = 0
        self._every = 0
        self._calls = 0
        self.retry_after = 1
        self._lock = threading.Lock()

    def every(self, n: int, retry_after: int = 1) -> None:
        with self._lock:
            self._every, self._calls, self.retry_after = n, 0, retry_after

    def arm(self, count: int = 1, retry_after: int = 1) -> None:
        with self._lock:
            self._left, self.retry_after = count, retry_after

    def take(self) -> int | None:
        """The Retry-After seconds when this call is throttled, else None."""
        with self._lock:
            self._calls += 1
            if self._every and self._calls % self._every == 0:
                return self.retry_after
            if self._left <= 0:
                return None
            self._left -= 1
            return self.retry_after


@dataclass
class App:
    """A registered application of a stand-in: its secret, the permissions (Graph application
    permissions) or roles (PingOne admin roles) granted to it, and whether an administrator
    consented to them (Graph: "Grant admin consent"; without it an app-only token carries no
    roles, "Microsoft identity platform and the OAuth 2.0 client credentials flow")."""

    secret: str = field(repr=False)
    roles: frozenset = frozenset()
    consented: bool = True

    def granted(self) -> frozenset:
        return self.roles if self.consented else frozenset()


def new_app(roles, consented: bool) -> tuple[str, App]:
    return str(uuid.uuid4()), App(secrets.token_urlsafe(30), frozenset(roles), consented)


class CorrelationIds:
    """ASGI middleware: every response carries the provider's own id of the request (`own`:
    Graph's `request-id`, PingOne's `correlation-id`) and, when `echo` is named, the caller's
    id echoed back (Graph's `client-request-id`, the request id when the caller sent none).
    The id is `request.state.request_id` for error bodies that repeat it."""

    def __init__(self, app, *, own: str, echo: str | None = None) -> None:
        self.app, self.own, self.echo = app, own.encode(), echo.encode() if echo else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        theirs = dict(scope.get("headers") or []).get(self.echo) if self.echo else None

        async def send_with_ids(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (self.own, request_id.encode())]
                if self.echo:
                    headers.append((self.echo, theirs or request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_ids)


def bearer(authorization: str | None, scheme: str = "Bearer") -> str | None:
    """The token of an `Authorization: <scheme> <token>` header, or None."""
    if not authorization:
        return None
    given, _, token = authorization.partition(" ")
    return token.strip() or None if given.lower() == scheme.lower() else None


# -- the relying party -------------------------------------------------------------------------------


class _Roots(AttestationVerifier):
    """Trusts exactly the given root certificates (the identity provider's attestation policy)."""

    def __init__(self, roots: list[x509.Certificate]) -> None:
        super().__init__()
        self._roots = roots

    def ca_lookup(self, attestation_result, auth_data):
        last = x509.load_der_x509_certificate(attestation_result.trust_path[-1])
        for root in self._roots:
            if last.issuer == root.subject:
                return root.public_bytes(Encoding.DER)
        return None


def load_roots(pems: list[bytes]) -> list[x509.Certificate]:
    roots = []
    for pem in pems:
        roots.extend(x509.load_pem_x509_certificates(pem))
    return roots


class RegistrationRefused(ValueError):
    """The registration does not verify; the message says why (no secret in it)."""


@dataclass
class Credential:
    """A registered WebAuthn credential, as the identity provider keeps it."""

    user_id: str
    data: AttestedCredentialData
    sign_count: int
    attested: bool
    aaguid: str
    attestation_fmt: str
    x5c: list[bytes] = field(default_factory=list, repr=False)
    signed_in: bool = False

    @property
    def credential_id(self) -> bytes:
        return self.data.credential_id


class RelyingParty:
    """The identity provider's relying party for one RP ID: registration (with attestation
    checked against `roots` when any are given) and sign-in assertions."""

    def __init__(self, rp_id: str, rp_name: str, *, roots: list[x509.Certificate] = (),
                 origins: Callable[[str], bool] | None = None) -> None:
        self.rp = PublicKeyCredentialRpEntity(id=rp_id, name=rp_name)
        self.roots = list(roots)
        self._origin_ok = origins or (lambda origin: origin == f"https://{rp_id}")
        self.credentials: dict[str, list[Credential]] = {}
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()

    def register(self, user_id: str, registration: dict, *, challenge: bytes,
                 user_verification: str = "required", formats: tuple[str, ...] | None = None) -> Credential:
        """Verify a RegistrationResponseJSON for `challenge` and keep its credential.
        Raises RegistrationRefused."""
        try:
            response = RegistrationResponse.from_dict(registration)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # IndexError: python-fido2 on empty CBOR
            raise RegistrationRefused(f"the credential is not a WebAuthn registration ({exc})") from None
        fmt = response.response.attestation_object.fmt
        if formats is not None and fmt not in formats:
            raise RegistrationRefused(f"attestation format {fmt!r} is not supported (only {', '.join(formats)})")
        server = Fido2Server(self.rp, attestation="direct" if self.roots else "none",
                             verify_origin=self._origin_ok,
                             verify_attestation=_Roots(self.roots) if self.roots else None)
        state = {"challenge": websafe_encode(challenge), "user_verification": user_verification}
        try:
            auth_data = server.register_complete(state, response)
        except UntrustedAttestation:
            raise RegistrationRefused("the attestation does not chain to a trusted root") from None
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RegistrationRefused(f"the registration does not verify: {exc}") from None
        data = auth_data.credential_data
        with self._lock:
            known = [c for creds in self.credentials.values() for c in creds]
            if any(c.credential_id == data.credential_id for c in known):
                raise RegistrationRefused("this credential is already registered")
            stmt = response.response.attestation_object.att_stmt
            credential = Credential(user_id, data, auth_data.counter, bool(self.roots), str(data.aaguid), fmt,
                                    list(stmt.get("x5c", [])))
            self.credentials.setdefault(user_id, []).append(credential)
        return credential

    def forget(self, user_id: str, credential_id: bytes) -> None:
        with self._lock:
            self.credentials[user_id] = [c for c in self.credentials.get(user_id, [])
                                         if c.credential_id != credential_id]

    def assertion_options(self, user_id: str) -> dict:
        """PublicKeyCredentialRequestOptionsJSON for the user's credentials (UV required)."""
        creds = self.credentials.get(user_id, [])
        if not creds:
            raise RegistrationRefused("the user has no registered credential")
        server = Fido2Server(self.rp)
        options, state = server.authenticate_begin([c.data for c in creds],
                                                   user_verification=UserVerificationRequirement.REQUIRED)
        with self._lock:
            self._pending[user_id] = state
        return dict(options.public_key)

    def assertion(self, user_id: str, response: dict) -> Credential:
        """Verify an AuthenticationResponseJSON against the pending options; the signature
        counter must grow. Raises RegistrationRefused."""
        with self._lock:
            state = self._pending.pop(user_id, None)
        creds = self.credentials.get(user_id, [])
        if state is None:
            raise RegistrationRefused("no sign-in was started for this user")
        server = Fido2Server(self.rp, verify_origin=self._origin_ok)
        try:
            parsed = AuthenticationResponse.from_dict(response)
            matched = server.authenticate_complete(state, [c.data for c in creds], parsed)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RegistrationRefused(f"the assertion does not verify: {exc}") from None
        credential = next(c for c in creds if c.credential_id == matched.credential_id)
        counter = parsed.response.authenticator_data.counter
        if (counter or credential.sign_count) and counter <= credential.sign_count:
            raise RegistrationRefused("the signature counter did not increase: a cloned key?")
        if not parsed.response.authenticator_data.is_user_verified():
            raise RegistrationRefused("the key did not verify the user")
        credential.sign_count, credential.signed_in = counter, True
        return credential


def signin_router(relying_party_of: Callable[[str], RelyingParty | None]):
    """The stand-in's sign-in page, as HTTP (not part of any provider's API: it plays the
    provider's sign-in page, where the user's browser meets the relying party):
    `POST /_standin/signin/{userId}/options` → PublicKeyCredentialRequestOptionsJSON,
    `POST /_standin/signin/{userId}` with an AuthenticationResponseJSON → `{"verified": true, ...}`."""
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    router = APIRouter(prefix="/_standin/signin")

    @router.post("/{user_id}/options")
    def options(user_id: str):
        rp = relying_party_of(user_id)
        if rp is None:
            return JSONResponse({"error": "no such user"}, status_code=404)
        try:
            return {"publicKey": rp.assertion_options(user_id), "rpId": rp.rp.id}
        except RegistrationRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    @router.post("/{user_id}")
    async def verify(user_id: str, request: Request):
        rp = relying_party_of(user_id)
        if rp is None:
            return JSONResponse({"error": "no such user"}, status_code=404)
        try:
            body = await request.json()
            credential = rp.assertion(user_id, body)
        except (ValueError, RegistrationRefused) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return {"verified": True, "credentialId": websafe_encode(credential.credential_id),
                "signCount": credential.sign_count}

    return router


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False


def b64u_decode(value: Any) -> bytes:
    """Base64url without padding, strictly (a wrong type or alphabet is ValueError)."""
    if not isinstance(value, str) or "=" in value or "+" in value or "/" in value:
        raise ValueError("not base64url")
    return websafe_decode(value)

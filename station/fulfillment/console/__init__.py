"""The operators' web console, served by the service's own FastAPI app under `/console/`.

Server-rendered Jinja2 pages and plain HTML forms (no JavaScript at all, so no build step):
shipments with filters and search, a shipment's timeline, stations and their slots (the page
refreshes itself), failed items with what to do, and the audit log. It renders the operator
API's own views (operator.py), so it shows no more than that API: never a JWE, never a PIN.

Sign-in takes an operator token (`station tokens create --role operator`). The session is a
random id in an HttpOnly, SameSite=Strict cookie scoped to /console/; the token stays in the
service's memory, is checked again on every request (a revoked token ends its sessions), and
failed sign-ins count against the same per-address limit as unknown bearer tokens. Every form
carries the session's CSRF token (the sign-in form a double-submit one), checked on every POST,
and a POST whose Origin is another site's is refused. Pages are sent with a strict CSP and
`no-store`.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from station.errors import StationError
from station.fulfillment import operator as views
from station.fulfillment.errors import RateLimited
from station.fulfillment.store import OPERATOR_TRANSITIONS, AuditEvent, Principal, Role, ShipmentState, Store
from station.protocol.messages import ShipmentPatch

HERE = Path(__file__).parent
PREFIX = "/console"
COOKIE = "station_console"
LOGIN_CSRF_COOKIE = "station_console_login"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000
PAGE = 50
STATIONS_REFRESH_SECONDS = 5

#: messages a redirect may name (?done=KEY): never text taken from the request
DONE = {
    "edited": "Shipment updated.",
    "deleted": "Shipment deleted: it and its requests are purged.",
    "state": "Shipment state set.",
    "signed_out": "Signed out.",
}

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # (no-referrer would make the browser send `Origin: null`)
    "Cache-Control": "no-store",
}


@dataclass
class Session:
    token: str
    csrf: str
    name: str
    expires: float


class Sessions:
    """The console's sign-ins, in the service's memory (a restart signs everyone out)."""

    def __init__(self, *, seconds: float = SESSION_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self.seconds = seconds
        self.limit = limit
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def open(self, token: str, name: str) -> str:
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._forget_expired()
            while len(self._sessions) >= self.limit:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session_id] = Session(token, secrets.token_urlsafe(32), name, time.time() + self.seconds)
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < time.time():
                self._sessions.pop(session_id, None)
                return None
            return session

    def close(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _forget_expired(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]


class SignInRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class PageError(Exception):
    """A request answered with an error page (a refused form, an unknown shipment)."""

    def __init__(self, message: str, *, status: int = 403, title: str = "Refused") -> None:
        super().__init__(message)
        self.status, self.title = status, title


class BadForm(PageError):
    """A POST refused before it was acted on (CSRF, Origin)."""


def _when(value: float | None) -> str:
    if value is None:
        return "—"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(value: float | None) -> str:
    if value is None:
        return "never"
    seconds = max(0, int(time.time() - value))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _state_class(state: int) -> str:
    try:
        s = ShipmentState(state)
    except ValueError:
        return "state-unknown"
    if s.is_error:
        return "state-error"
    return {100: "state-new", 101: "state-busy", 102: "state-ready", 103: "state-shipped",
            104: "state-done"}.get(int(s), "state-unknown")


def _safe_next(path: str | None) -> str:
    """Only a console path of this site (no open redirect)."""
    if not path or not path.startswith(PREFIX + "/") or path.startswith("//") or "\\" in path:
        return PREFIX + "/shipments"
    parts = urlsplit(path)
    return PREFIX + "/shipments" if parts.scheme or parts.netloc else path


def add_console(app: FastAPI) -> None:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(when=_when, ago=_ago, state_class=_state_class)
    templates.env.globals.update(
        prefix=PREFIX,
        states=[(int(s), s.meaning) for s in ShipmentState],
        error_states=sorted(int(s) for s in OPERATOR_TRANSITIONS if s.is_error),
    )
    sessions = Sessions()
    app.state.console_sessions = sessions
    app.mount(PREFIX + "/static", StaticFiles(directory=str(HERE / "static")), name="console-static")

    def store_of(request: Request) -> Store:
        return request.app.state.store

    def page(request: Request, name: str, context: dict[str, Any], *, status: int = 200,
             session: Session | None = None) -> HTMLResponse:
        done = request.query_params.get("done")
        context = {"session": session, "flash": DONE.get(done or ""), "path": request.url.path, **context}
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(_HEADERS)
        return response

    def redirect(path: str, **params: Any) -> RedirectResponse:
        query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
        response = RedirectResponse(path + (f"?{query}" if query else ""), status_code=303)
        response.headers.update(_HEADERS)
        return response

    async def signed_in(request: Request) -> tuple[Session, Principal]:
        """The session and its operator, or SignInRequired (also for a token revoked since)."""
        session = sessions.get(request.cookies.get(COOKIE))
        if session is not None:
            principal = await run_in_threadpool(store_of(request).authenticate, session.token)
            if principal is not None and principal.role is Role.OPERATOR:
                return session, principal
            sessions.close(request.cookies.get(COOKIE))
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target if request.method == "GET" else PREFIX + "/shipments")

    def check_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin != "null":
            parts = urlsplit(origin)
            if parts.netloc != request.headers.get("host", ""):
                raise BadForm("this form was sent from another site")
        elif origin == "null":
            raise BadForm("this form was sent from an opaque origin")

    async def form_of(request: Request, session: Session) -> dict[str, str]:
        """The POSTed form, once its CSRF token and Origin are checked."""
        check_origin(request)
        form = await request.form()
        sent = str(form.get("csrf", ""))
        if not sent or not hmac.compare_digest(sent, session.csrf):
            raise BadForm("the form's CSRF token is missing or stale: reload the page and try again")
        return {k: str(v) for k, v in form.items()}

    @app.exception_handler(SignInRequired)
    async def sign_in_first(_request: Request, exc: SignInRequired) -> Response:
        return redirect(PREFIX + "/login", next=exc.next_path)

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        return page(request, "error.html", {"title": exc.title, "message": str(exc)}, status=exc.status)

    # -- sign-in ----------------------------------------------------------------------------
    @app.get(PREFIX, include_in_schema=False)
    @app.get(PREFIX + "/", include_in_schema=False)
    async def home() -> Response:
        return redirect(PREFIX + "/shipments")

    @app.get(PREFIX + "/login", include_in_schema=False)
    async def login_form(request: Request, next: str | None = None) -> Response:
        csrf = secrets.token_urlsafe(32)
        response = page(request, "login.html", {"title": "Sign in", "csrf": csrf, "next": _safe_next(next),
                                                "error": None})
        _set_cookie(request, response, LOGIN_CSRF_COOKIE, csrf, max_age=3600)
        return response

    @app.post(PREFIX + "/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        check_origin(request)
        form = await request.form()
        sent, expected = str(form.get("csrf", "")), request.cookies.get(LOGIN_CSRF_COOKIE, "")
        next_path = _safe_next(str(form.get("next", "")))
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            raise BadForm("the sign-in form is stale: reload it and try again")
        token = str(form.get("token", "")).strip()
        limit = request.app.state.failed_tokens
        address = request.client.host if request.client is not None else "unknown"
        try:
            limit.check(address)
        except RateLimited as exc:
            return page(request, "login.html", {"title": "Sign in", "csrf": expected, "next": next_path,
                                                "error": exc.message}, status=429)
        principal = await run_in_threadpool(store_of(request).authenticate, token) if token else None
        if principal is None or principal.role is not Role.OPERATOR:
            if principal is None:
                limit.failed(address)
            message = ("that token is not an operator token" if principal is not None
                       else "that token is not known")
            return page(request, "login.html", {"title": "Sign in", "csrf": expected, "next": next_path,
                                                "error": message}, status=401)
        session_id = sessions.open(token, principal.name)
        response = redirect(next_path)
        _set_cookie(request, response, COOKIE, session_id, max_age=SESSION_SECONDS)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
        return response

    @app.post(PREFIX + "/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session, _ = await signed_in(request)
        await form_of(request, session)
        sessions.close(request.cookies.get(COOKIE))
        response = redirect(PREFIX + "/login", done="signed_out")
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    # -- shipments --------------------------------------------------------------------------
    @app.get(PREFIX + "/shipments", include_in_schema=False)
    async def shipments(request: Request, q: str | None = None, state: str | None = None,
                        tenant: str | None = None, offset: int = 0) -> Response:
        session, _ = await signed_in(request)
        store = store_of(request)
        q = (q or "").strip()[:100] or None
        tenant = (tenant or "").strip()[:200] or None
        state_id = int(state) if state and state.isdigit() and int(state) in {int(s) for s in ShipmentState} else None
        offset = max(0, min(offset, 2**31 - 1))
        listing = await run_in_threadpool(store.list_shipments, tenant, limit=PAGE, offset=offset, state=state_id, q=q)
        counts = await run_in_threadpool(views.tenant_counts, store)
        return page(request, "shipments.html", {
            "title": "Shipments", "listing": listing, "counts": counts, "q": q or "", "state": state_id,
            "tenant": tenant or "", "offset": offset, "page_size": PAGE,
            "tenants": [c.tenant for c in counts],
        }, session=session)

    @app.get(PREFIX + "/shipments/{shipment_id}", include_in_schema=False)
    async def shipment(request: Request, shipment_id: str) -> Response:
        session, _ = await signed_in(request)
        return await _shipment_page(request, session, shipment_id)

    async def _shipment_page(request: Request, session: Session, shipment_id: str, *, error: str | None = None,
                             status: int = 200) -> Response:
        try:
            view = await run_in_threadpool(views.operator_shipment, store_of(request), _uuid(shipment_id))
        except StationError:
            return page(request, "error.html", {"title": "Not found", "message": "There is no such shipment "
                        "(it may have been deleted)."}, status=404, session=session)
        return page(request, "shipment.html", {"title": f"Shipment {view.shipment_id[:8]}", "s": view,
                                               "error": error}, status=status, session=session)

    async def act(request: Request, shipment_id: str, action, *, done: str, then: str | None = None) -> Response:
        """An operator's form on a shipment: checked (session, CSRF, Origin), then `action(form,
        operator, shipment_id)` in a worker thread; a refusal is shown on the shipment's page."""
        session, operator = await signed_in(request)
        form = await form_of(request, session)
        shipment_id = _uuid(shipment_id)
        try:
            await run_in_threadpool(action, form, operator, shipment_id)
        except ValidationError as exc:
            return await _shipment_page(request, session, shipment_id, error=_fields_message(exc), status=400)
        except StationError as exc:
            return await _shipment_page(request, session, shipment_id, error=exc.message, status=_status(exc))
        return redirect(then or f"{PREFIX}/shipments/{shipment_id}", done=done)

    @app.post(PREFIX + "/shipments/{shipment_id}/edit", include_in_schema=False)
    async def edit(request: Request, shipment_id: str) -> Response:
        store = store_of(request)

        def save(form: dict[str, str], operator: Principal, shipment_id: str) -> None:
            from station.fulfillment.api import patch_changes

            patch = ShipmentPatch.model_validate(_patch_from_form(form))
            current = store.shipment_for_operator(shipment_id)
            changes = {k: v for k, v in patch_changes(current.envelope, patch).items() if current.envelope.get(k) != v}
            if changes:
                store.update_shipment(None, shipment_id, changes, actor=operator)

        return await act(request, shipment_id, save, done="edited")

    @app.post(PREFIX + "/shipments/{shipment_id}/delete", include_in_schema=False)
    async def delete(request: Request, shipment_id: str) -> Response:
        def purge(form: dict[str, str], operator: Principal, shipment_id: str) -> None:
            if form.get("confirm") != "yes":
                raise StationError("Tick the box to confirm: a deleted shipment cannot be brought back.",
                                   code="not_confirmed")
            store_of(request).delete_shipment(None, shipment_id, actor=operator)

        return await act(request, shipment_id, purge, done="deleted", then=PREFIX + "/shipments")

    @app.post(PREFIX + "/shipments/{shipment_id}/state", include_in_schema=False)
    async def set_state(request: Request, shipment_id: str) -> Response:
        def move(form: dict[str, str], operator: Principal, shipment_id: str) -> None:
            state = form.get("shipment_state_id", "")
            tracking = form.get("tracking_number", "").strip()
            change = views.StateChange.model_validate(
                {"shipment_state_id": int(state) if state.isdigit() else 0}
                | ({"tracking_number": tracking} if tracking else {}))
            views.set_state(store_of(request), shipment_id, change, operator)

        return await act(request, shipment_id, move, done="state")

    # -- the floor ----------------------------------------------------------------------------
    @app.get(PREFIX + "/stations", include_in_schema=False)
    async def stations(request: Request, refresh: int | None = None) -> Response:
        """The floor; the page reloads itself every `refresh` seconds (0: paused)."""
        session, _ = await signed_in(request)
        floor = await run_in_threadpool(views.station_views, store_of(request))
        every = STATIONS_REFRESH_SECONDS if refresh is None else max(0, min(refresh, 300))
        if 0 < every < 2:
            every = 2
        return page(request, "stations.html", {"title": "Stations", "stations": floor, "now": time.time(),
                                               "refresh": every}, session=session)

    @app.get(PREFIX + "/failed", include_in_schema=False)
    async def failed(request: Request) -> Response:
        session, _ = await signed_in(request)
        items = await run_in_threadpool(views.failed_views, store_of(request))
        return page(request, "failed.html", {"title": "Failed items", "items": items}, session=session)

    @app.get(PREFIX + "/audit", include_in_schema=False)
    async def audit(request: Request, event: str | None = None, offset: int = 0) -> Response:
        session, _ = await signed_in(request)
        event = event if event in {e.value for e in AuditEvent} else None
        offset = max(0, min(offset, 2**31 - 1))
        trail = await run_in_threadpool(lambda: views.audit_page(store_of(request), limit=PAGE, offset=offset, event=event))
        return page(request, "audit.html", {"title": "Audit log", "trail": trail, "event": event or "",
                                            "events": [e.value for e in AuditEvent], "offset": offset,
                                            "page_size": PAGE}, session=session)


def _set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def _uuid(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise PageError("There is no such shipment.", status=404, title="Not found") from None


def _status(exc: StationError) -> int:
    return int(getattr(exc, "status", 400))


RECIPIENT_FIELDS = ("recipient_company", "recipient_firstname", "recipient_lastname", "recipient_email",
                    "recipient_telephone")
ADDRESS_FIELDS = ("street_line1", "street_line2", "city", "region", "postal_code", "country_code_2")


def _patch_from_form(form: dict[str, str]) -> dict[str, Any]:
    delivery = form.get("delivery_type", "")
    return {
        "recipient": {name: form.get(name, "") for name in RECIPIENT_FIELDS},
        "mailing_address": {name: form.get(name, "").upper() if name == "country_code_2" else form.get(name, "")
                            for name in ADDRESS_FIELDS},
        "delivery_type": int(delivery) if delivery.isdigit() else delivery,
    }


def _fields_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = str(error["loc"][-1]) if error["loc"] else "the form"
        parts.append(f"{field}: {error['msg']}")
    return "Not saved. " + "; ".join(parts)

"""The directory API under the customer's token (issue 15), tenant-isolated like shipments: a
configuration of another tenant answers 404 as one that does not exist. No answer carries the
client secret or a private key. Added to the service's app by `create_app`."""



from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Request
from fastapi.responses import Response

from station.fulfillment.directories.models import (
    NAME_PATTERN,
    AuditList,
    ConnectionResult,
    DeleteConfirmation,
    DirectoryCreate,
    DirectoryEdit,
    DirectoryList,
    DirectoryView,
    EnrollmentList,
    EnrollRequest,
    EnrollResult,
    PreflightRequest,
    PreflightResult,
)
from station.fulfillment.store import Principal

Name = Annotated[str, Path(pattern=NAME_PATTERN, max_length=100)]


def actor_of(principal: Principal) -> str:
    """Who made a directory call, for the audit: the token, never the token's value."""
    return f"token {principal.id} ({principal.name})"


def directories_of(request: Request):
    """The app's Directories, made on first use (its key file is created then, not at start)."""
    return directories_for_app(request.app)


def directories_for_app(app: FastAPI):
    state = app.state
    if getattr(state, "directories", None) is None:
        from station.fulfillment.directories.sealing import open_box
        from station.fulfillment.directories.service import Directories

        state.directories = Directories(state.store, open_box(state.directory_key), state.keystore,
                                        quota=getattr(state, "quota", None))
    return state.directories


def add_directory_routes(app: FastAPI, customer: Any) -> None:
    """The `/v1/directories` routes; `customer` is the API's customer-token dependency."""
    tags = ["directories"]

    @app.post("/v1/directories", status_code=201, response_model=DirectoryView, tags=tags)
    def add(body: DirectoryCreate, caller: customer, request: Request) -> DirectoryView:
        """ADD: verified by obtaining a token and reading one user before anything is stored; a
        wrong secret or a missing permission is 422 with the directory's words."""
        return directories_of(request).add(caller.owner, body, actor=actor_of(caller)).view()

    @app.get("/v1/directories", response_model=DirectoryList, tags=tags)
    def listing(caller: customer, request: Request) -> DirectoryList:
        """The tenant's configurations (never a secret)."""
        return DirectoryList(directories=[c.view() for c in directories_of(request).list(caller.owner)])

    @app.get("/v1/directories/{name}", response_model=DirectoryView, tags=tags)
    def one(name: Name, caller: customer, request: Request) -> DirectoryView:
        return directories_of(request).get(caller.owner, name).view()

    @app.patch("/v1/directories/{name}", response_model=DirectoryView, tags=tags)
    def edit(name: Name, body: DirectoryEdit, caller: customer, request: Request) -> DirectoryView:
        """Edit the name, the client ID with its secret, or the secret (new credentials are
        verified first)."""
        return directories_of(request).edit(caller.owner, name, body, actor=actor_of(caller)).view()

    @app.delete("/v1/directories/{name}", status_code=204, tags=tags)
    def remove(name: Name, caller: customer, request: Request,
               body: Annotated[DeleteConfirmation | None, Body()] = None) -> Response:
        """Delete with `{"confirm": "permanently delete"}`; anything else is 400
        `confirmation_required` and deletes nothing."""
        directories_of(request).delete(caller.owner, name, body.confirm if body else None, actor=actor_of(caller))
        return Response(status_code=204)

    @app.post("/v1/directories/{name}/test", response_model=ConnectionResult, tags=tags)
    def test(name: Name, caller: customer, request: Request) -> ConnectionResult:
        """Test Connection: success, or failure in the directory's words."""
        return ConnectionResult(**directories_of(request).test(caller.owner, name, actor=actor_of(caller)))

    @app.post("/v1/directories/{name}/preflight", response_model=PreflightResult, tags=tags)
    def preflight(name: Name, caller: customer, request: Request,
                  body: Annotated[PreflightRequest | None, Body()] = None) -> PreflightResult:
        """The directory's FIDO2 policy against the models this factory ships, for the given
        users or group (or the policy alone)."""
        body = body or PreflightRequest()
        findings = directories_of(request).preflight(caller.owner, name, users=body.users, group=body.group,
                                                     actor=actor_of(caller))
        return PreflightResult(ok=not any(f.level == "block" for f in findings), findings=findings)

    @app.post("/v1/directories/{name}/enrollments", response_model=EnrollResult, tags=tags)
    def enroll(name: Name, body: EnrollRequest, caller: customer, request: Request) -> EnrollResult:
        """Pre-flight, then one shipment of one key per user (422 `preflight_blocked` with every
        finding, nothing queued, when the policy blocks)."""
        findings, users = directories_of(request).enroll(caller.owner, name, users=body.users, group=body.group,
                                                         actor=actor_of(caller))
        return EnrollResult(findings=findings, users=users)

    @app.get("/v1/directories/{name}/enrollments", response_model=EnrollmentList, tags=tags)
    def enrollments(name: Name, caller: customer, request: Request) -> EnrollmentList:
        """The enrollments made through the configuration: shipment, state (pending, registered,
        refused, failed, cancelled), the directory's method/device id, its message, and the
        sealed PIN request the customer's PIN delivery checks the PIN response against."""
        return EnrollmentList(enrollments=directories_of(request).enrollments(caller.owner, name))

    @app.get("/v1/directories/{name}/audit", response_model=AuditList, tags=tags)
    def audit(name: Name, caller: customer, request: Request) -> AuditList:
        """Every directory call made for the configuration (no secret, token or PIN)."""
        return AuditList(audit=directories_of(request).audit(caller.owner, name))

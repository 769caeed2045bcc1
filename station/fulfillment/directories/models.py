"""The JSON bodies of the directory API (`/v1/directories`): what a customer sends and what the
service answers. No answer ever carries the client secret or a private key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictStr, model_validator

KIND = Literal["entra", "pingone"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
#: the text Customer Central asks for before it deletes a configuration
CONFIRMATION = "permanently delete"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class DefaultAddress(_Body):
    """Where a user's key goes when the directory holds no complete address for them
    (YubiEnterprise's recipient and mailing-address members; the names come from the user)."""

    recipient_company: str = Field("", max_length=20)
    recipient_telephone: str = Field(..., max_length=40)
    street_line1: str = Field(..., max_length=60)
    street_line2: str = Field("", max_length=60)
    city: str = Field(..., max_length=60)
    region: str = Field("", max_length=50)
    postal_code: str = Field("", max_length=20)
    country_code_2: str = Field(..., pattern=r"^[A-Z]{2}$")


class Endpoints(_Body):
    """Where the directory's APIs are (a national cloud, a stand-in); default: the public cloud."""

    graph_url: str | None = Field(None, pattern=r"^https?://\S+$")
    login_url: str | None = Field(None, pattern=r"^https?://\S+$")
    api_url: str | None = Field(None, pattern=r"^https?://\S+$")
    auth_url: str | None = Field(None, pattern=r"^https?://\S+$")


class DirectoryCreate(_Body):
    """NEW in Customer Central's Directory Configuration: the type, a name, the three values,
    and the customer's PIN-delivery key (public EC P-384 JWK, `use` "enc")."""

    kind: KIND
    name: StrictStr = Field(pattern=NAME_PATTERN)
    tenant_id: StrictStr | None = Field(None, min_length=1, max_length=100, description="Entra: the tenant ID")
    environment_id: StrictStr | None = Field(None, min_length=1, max_length=100,
                                             description="PingOne: the environment ID")
    region: StrictStr | None = Field(None, pattern=r"^[a-z.]{2,10}$", description="PingOne: com, eu, ca, asia, com.au")
    client_id: StrictStr = Field(min_length=1, max_length=200)
    client_secret: SecretStr = Field(min_length=1, max_length=1024)
    pin_delivery_key: dict[str, Any]
    default_address: DefaultAddress | None = None
    endpoints: Endpoints | None = None
    rp_id: StrictStr | None = Field(None, max_length=253, description="PingOne: the FIDO2 relying party")
    policy_id: StrictStr | None = Field(None, max_length=100, description="PingOne: the FIDO2 policy")
    challenge_timeout_minutes: int | None = Field(None, ge=5, le=43200,
                                                  description="Entra: creationOptions challenge lifetime")
    aaguids: list[Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]] | None = Field(
        None, min_length=1, max_length=64,
                                            description="The models this tenant orders (default: every model shipped)")

    @model_validator(mode="after")
    def _directory_id(self) -> DirectoryCreate:
        if self.kind == "entra" and (self.tenant_id is None or self.environment_id is not None):
            raise ValueError("an entra configuration takes tenant_id (and no environment_id)")
        if self.kind == "pingone" and (self.environment_id is None or self.tenant_id is not None):
            raise ValueError("a pingone configuration takes environment_id (and no tenant_id)")
        if self.kind == "entra" and (self.region or self.rp_id or self.policy_id):
            raise ValueError("region, rp_id and policy_id are PingOne's")
        return self


class DirectoryEdit(_Body):
    """Edit: the name, the client ID and the secret. A new client ID needs its secret with it
    (Customer Central keeps Update disabled until both are given)."""

    name: StrictStr | None = Field(None, pattern=NAME_PATTERN)
    client_id: StrictStr | None = Field(None, min_length=1, max_length=200)
    client_secret: SecretStr | None = Field(None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _complete(self) -> DirectoryEdit:
        if self.client_id is not None and self.client_secret is None:
            raise ValueError("a new client_id needs its client_secret in the same edit")
        if self.name is None and self.client_id is None and self.client_secret is None:
            raise ValueError("give name, client_id with client_secret, or client_secret")
        return self


class DeleteConfirmation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confirm: StrictStr | None = None


UserRef = Annotated[StrictStr, Field(min_length=1, max_length=320, pattern=r"^\S(.*\S)?$")]


class EnrollRequest(_Body):
    """Whom to enroll: users by UPN/username or id, or the members of one group."""

    users: list[UserRef] | None = Field(None, min_length=1, max_length=500)
    group: StrictStr | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _one(self) -> EnrollRequest:
        if (self.users is None) == (self.group is None):
            raise ValueError("give exactly one of users and group")
        return self


class PreflightRequest(_Body):
    users: list[UserRef] | None = Field(None, max_length=500)
    group: StrictStr | None = Field(None, min_length=1, max_length=256)


class DirectoryView(BaseModel):
    """A configuration as the API shows it: never its secret, never a private key."""

    name: str
    kind: KIND
    tenant_id: str | None = None
    environment_id: str | None = None
    region: str | None = None
    client_id: str
    pin_delivery_key: dict[str, Any]
    response_key: dict[str, Any]
    default_address: dict[str, Any] | None = None
    endpoints: dict[str, Any] | None = None
    rp_id: str | None = None
    policy_id: str | None = None
    challenge_timeout_minutes: int | None = None
    aaguids: list[str] | None = None
    created_at: float
    updated_at: float


class DirectoryList(BaseModel):
    directories: list[DirectoryView]


class ConnectionResult(BaseModel):
    """Test Connection: success, or failure with the directory's words."""

    ok: bool
    message: str
    http_status: int | None = None
    correlation_id: str | None = None
    what_to_do: str | None = None  # on failure: what the administrator changes, and where


class FindingView(BaseModel):
    level: Literal["block", "warn"]
    code: str
    message: str


class PreflightResult(BaseModel):
    ok: bool  # no blocking finding
    findings: list[FindingView]


class EnrollOutcome(BaseModel):
    user: str
    user_id: str | None = None
    outcome: Literal["enrolled", "already_pending", "skipped", "failed"]
    shipment_id: str | None = None
    message: str | None = None


class EnrollResult(BaseModel):
    findings: list[FindingView]
    users: list[EnrollOutcome]


class EnrollmentView(BaseModel):
    user_id: str
    user_name: str | None
    shipment_id: str
    state: str
    method_id: str | None
    message: str | None
    pin_request: str  # the sealed PIN request: the customer's PIN delivery checks requestDigest with it
    created_at: float
    updated_at: float


class EnrollmentList(BaseModel):
    enrollments: list[EnrollmentView]


class AuditView(BaseModel):
    at: float
    actor: str
    config_name: str
    action: str
    target_user: str | None
    method_id: str | None
    outcome: str
    http_status: int | None
    correlation_id: str | None
    message: str | None


class AuditList(BaseModel):
    audit: list[AuditView]

"""Pydantic models of every payload and envelope of PROTOCOL.md §2–§4.

Wire names are camelCase as the spec writes them (`requestId`, `pubKeyCredParams`,
`minPINLength`); attributes are their snake_case twins (`request_id`, ...). Models validate
from either spelling and serialize to the wire spelling. Unknown members are ignored; a missing
required member is an error. JSON types are strict: `"6"` is not a `length`, `1` is not `true`.

The shipment body of §4 keeps the YubiEnterprise snake_case names as they are.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from fido2.ctap2.extensions import CredProtectExtension
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    PublicKeyCredentialCreationOptions as Fido2CreationOptions,
    PublicKeyCredentialType,
    RegistrationResponse,
)
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from station.errors import InvalidRequest, ITEM_ERROR_CODES, STATION_ITEM_ERROR_CODES

# -- base64url (RFC 4648 §5, no padding) ------------------------------------------------------

_B64U_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def decode_b64u(value: str) -> bytes:
    """Decode b64u strictly: only the url-safe alphabet, no padding, no stray characters.

    (fido2's `websafe_decode` alone silently drops characters outside the alphabet.)
    """
    if not isinstance(value, str) or not _B64U_ALPHABET.fullmatch(value) or len(value) % 4 == 1:
        raise ValueError("is not base64url without padding")
    return websafe_decode(value)


def decode_b64u_canonical(value: str) -> bytes:
    """Decode b64u and insist on its one spelling (RFC 7515 §2, RFC 4648 §3.5): besides
    `decode_b64u`'s rules, the spare bits of the last character must be zero, so that
    re-encoding the decoded bytes gives `value` back. For JOSE parts, whose spelling is a
    replay key's business."""
    raw = decode_b64u(value)
    if websafe_encode(raw) != value:
        raise ValueError("is not canonical base64url (non-zero spare bits)")
    return raw


def _check_b64u(value: str) -> str:
    decode_b64u(value)
    return value


B64U = Annotated[StrictStr, AfterValidator(_check_b64u)]
"""A member that must be b64u (it may decode to nothing)."""
B64UBytes = Annotated[StrictStr, Field(min_length=1), AfterValidator(_check_b64u)]
"""A member that must be b64u of at least one byte."""

_P384_COORDINATE_BYTES = 48
_DOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown members ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )

    def to_json_bytes(self) -> bytes:
        """The wire form: UTF-8 JSON, absent optional members left out."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each failing member and why, never echoing the input (it may be a PIN)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# -- §1 keys -------------------------------------------------------------------------------


class ResponseKey(_Wire):
    """The customer's response key: a public EC P-384 JWK with `use` "enc" and a `kid`.

    A key that carries the private member `d` is refused: it was never meant to travel.
    """

    kty: Literal["EC"]
    crv: Literal["P-384"]
    use: Literal["enc"]
    kid: StrictStr = Field(min_length=1, max_length=256)
    x: B64U
    y: B64U

    @model_validator(mode="before")
    @classmethod
    def _refuse_private_member(cls, data: Any) -> Any:
        if isinstance(data, dict) and "d" in data:
            raise ValueError("a response key must be public only (it carries 'd')")
        return data

    _point: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _on_curve(self) -> ResponseKey:
        self._point = public_key_p384(self.x, self.y)
        return self

    def to_jwk(self):
        """The key as a jwcrypto JWK (public)."""
        from jwcrypto.jwk import JWK

        return JWK(**self.model_dump(exclude_none=True))

    def operation_key(self):
        """The key as a joserfc key object, built on the point checked at validation."""
        from joserfc.jwk import ECKey

        return ECKey.import_key(self._point)


def public_key_p384(x: str, y: str) -> ec.EllipticCurvePublicKey:
    """The P-384 point (x, y), both b64u of 48 bytes; ValueError if it is not on the curve."""
    xb, yb = decode_b64u(x), decode_b64u(y)
    if len(xb) != _P384_COORDINATE_BYTES or len(yb) != _P384_COORDINATE_BYTES:
        raise ValueError("P-384 coordinates must be 48 bytes each")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(xb, "big"), int.from_bytes(yb, "big"), ec.SECP384R1()
    )
    return numbers.public_key()  # raises ValueError when the point is not on the curve


# -- §2.2 PublicKeyCredentialCreationOptionsJSON (WebAuthn Level 3) ---------------------------


#: CTAP 2.1 §6.1 (authenticatorMakeCredential, `rp` and `user`): an authenticator must accept and
#: store at least 64 bytes of `rp.name`, `user.name` and `user.displayName`, and may truncate a
#: longer one; strict keys refuse it instead (CTAP2_ERR_REQUEST_TOO_LARGE / INVALID_LENGTH), so the
#: station, the platform here, truncates before the key sees it, as WebAuthn L3 §6.4.1 asks of clients.
CTAP_STORED_STRING_BYTES = 64
#: characters that continue the grapheme before them: never left as the last thing kept or cut off
#: from their base (combining marks are found with unicodedata.combining).
_GRAPHEME_EXTENDERS = {"\u200d"} | {chr(c) for c in range(0xFE00, 0xFE10)} | {chr(c) for c in range(0x1F3FB, 0x1F400)}


def truncate_ctap_string(value: str, limit: int = CTAP_STORED_STRING_BYTES) -> str:
    """`value` cut to at most `limit` UTF-8 bytes, never inside a character (CTAP 2.1 §6.1: the
    result must stay valid UTF-8) and, as WebAuthn L3 §6.4.1 recommends, not between a character
    and the combining marks, variation selectors, emoji modifiers or zero-width joiner that extend
    it (an approximation of a grapheme-cluster boundary, without a Unicode segmentation table)."""
    import unicodedata

    if len(value.encode("utf-8")) <= limit:
        return value
    end, size = 0, 0
    for char in value:
        width = len(char.encode("utf-8"))
        if size + width > limit:
            break
        size += width
        end += 1
    def extends(ch: str) -> bool:
        return ch in _GRAPHEME_EXTENDERS or unicodedata.combining(ch) != 0

    while end > 0 and (extends(value[end]) or value[end - 1] == "\u200d"):
        end -= 1  # back off to the start of the grapheme that would have been cut
    return value[:end]


def _ctap_string(value: str) -> str:
    return truncate_ctap_string(value)


CtapString = Annotated[StrictStr, AfterValidator(_ctap_string)]
"""A display string the authenticator stores: truncated to 64 bytes when longer (CTAP 2.1 §6.1)."""


class PublicKeyCredentialRpEntity(_Wire):
    """`rp`: `id` is the RP ID (a lowercase domain), `name` its display name (≤ 64 bytes kept)."""

    id: StrictStr
    name: CtapString

    @field_validator("id")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not _DOMAIN.fullmatch(value):
            raise ValueError("rp.id must be a lowercase domain name")
        return value


class PublicKeyCredentialUserEntity(_Wire):
    """`user`: `id` is the user handle (b64u, 1..64 bytes); `name` and `displayName` are kept to
    64 bytes each (CTAP 2.1 §6.1)."""

    id: B64UBytes
    name: CtapString
    display_name: CtapString

    @field_validator("id")
    @classmethod
    def _handle_length(cls, value: str) -> str:
        if len(decode_b64u(value)) > 64:
            raise ValueError("user.id must be at most 64 bytes")
        return value


class PublicKeyCredentialParameters(_Wire):
    type: StrictStr
    alg: StrictInt


class PublicKeyCredentialDescriptor(_Wire):
    type: StrictStr
    id: B64UBytes
    transports: list[StrictStr] | None = None


class AuthenticatorSelectionCriteria(_Wire):
    authenticator_attachment: StrictStr | None = None
    resident_key: StrictStr | None = None
    require_resident_key: StrictBool | None = None
    user_verification: StrictStr | None = None


class AuthenticationExtensionsClientInputs(_Wire):
    """The extensions a station acts on; every other extension is ignored."""

    cred_props: StrictBool | None = None
    hmac_create_secret: StrictBool | None = None
    credential_protection_policy: CredProtectExtension.POLICY | None = None
    enforce_credential_protection_policy: StrictBool | None = None
    min_pin_length: StrictBool | None = None


class PublicKeyCredentialCreationOptions(_Wire):
    """WebAuthn Level 3 `PublicKeyCredentialCreationOptionsJSON` (PROTOCOL.md §2.2 `publicKey`).

    Accepts Microsoft Graph's `webauthnCredentialCreationOptions.publicKey` (its `challenge` is
    an opaque token that is itself b64u) and Okta's shape (unknown members such as
    `u2fParams` or `@odata.type` are ignored).
    """

    rp: PublicKeyCredentialRpEntity
    user: PublicKeyCredentialUserEntity
    challenge: B64UBytes
    pub_key_cred_params: list[PublicKeyCredentialParameters] = Field(min_length=1)
    timeout: StrictInt | None = Field(default=None, ge=0)
    exclude_credentials: list[PublicKeyCredentialDescriptor] = Field(default_factory=list)
    authenticator_selection: AuthenticatorSelectionCriteria | None = None
    hints: list[StrictStr] | None = None
    attestation: StrictStr | None = None
    attestation_formats: list[StrictStr] | None = None
    extensions: AuthenticationExtensionsClientInputs | None = None

    @model_validator(mode="after")
    def _has_public_key_alg(self) -> PublicKeyCredentialCreationOptions:
        if not self.alg_preference():
            raise ValueError("pubKeyCredParams holds no 'public-key' algorithm")
        return self

    def alg_preference(self) -> list[int]:
        """COSE algorithms of `pubKeyCredParams` of type "public-key", in the RP's order."""
        wanted = PublicKeyCredentialType.PUBLIC_KEY.value
        return [p.alg for p in self.pub_key_cred_params if p.type == wanted]

    def cred_protect_level(self) -> int | None:
        """credProtect 1/2/3 from `credentialProtectionPolicy`, or None when not asked."""
        policy = self.extensions.credential_protection_policy if self.extensions else None
        return CredProtectExtension.POLICY.str2int(policy.value) if policy else None

    def cred_protect_enforced(self) -> bool:
        """`enforceCredentialProtectionPolicy`: a device without credProtect must be refused."""
        return bool(self.extensions and self.extensions.enforce_credential_protection_policy)

    def hmac_secret_requested(self) -> bool:
        """`hmacCreateSecret: true` asks for the hmac-secret extension."""
        return bool(self.extensions and self.extensions.hmac_create_secret)

    def excluded_ids(self) -> list[bytes]:
        """The raw credential IDs of `excludeCredentials`."""
        return [decode_b64u(d.id) for d in self.exclude_credentials]

    def to_fido2(self) -> Fido2CreationOptions:
        """The same options as python-fido2's `PublicKeyCredentialCreationOptions`."""
        return Fido2CreationOptions.from_dict(json.loads(self.to_json_bytes()))


# -- §2 requests ---------------------------------------------------------------------------

_RequestId = Annotated[StrictStr, Field(min_length=1, max_length=128)]


class PinRequest(_Wire):
    """§2.1 PIN request (`pinRequestJwe`, `fido_pin_request`)."""

    version: Literal[1]
    request_id: _RequestId
    type: Literal["generate"]
    length: StrictInt = Field(default=6, ge=4, le=63)
    min_pin_length: StrictInt | None = Field(default=None, alias="minPINLength", ge=4, le=63)
    force_pin_change: StrictBool = Field(default=False, alias="forcePINChange")
    response_key: ResponseKey

    @model_validator(mode="after")
    def _min_not_above_length(self) -> PinRequest:
        if self.min_pin_length is not None and self.min_pin_length > self.length:
            raise ValueError("minPINLength must not be above length")
        return self


def _rfc3339_only(value: Any) -> Any:
    """`notAfter` is an RFC 3339 string on the wire (pydantic would also take a number)."""
    if not isinstance(value, (str, datetime)):
        raise ValueError("notAfter must be an RFC 3339 date-time string")
    return value


class CredentialRequest(_Wire):
    """§2.2 credential request (`credRequestJwe`, one of `fido_credential_requests`)."""

    version: Literal[1]
    request_id: _RequestId
    origin: StrictStr | None = None
    not_after: Annotated[AwareDatetime, BeforeValidator(_rfc3339_only)] | None = None
    response_key: ResponseKey
    public_key: PublicKeyCredentialCreationOptions

    @model_validator(mode="after")
    def _origin_on_rp_id(self) -> CredentialRequest:
        if self.origin is not None:
            check_origin(self.origin, self.public_key.rp.id)
        return self

    @property
    def effective_origin(self) -> str:
        """The origin written into clientDataJSON: `origin`, or "https://" + rp.id."""
        return self.origin if self.origin is not None else f"https://{self.public_key.rp.id}"

    def is_expired(self, now: datetime) -> bool:
        """True once `now` (tz-aware) is past `notAfter`."""
        return self.not_after is not None and now > self.not_after


def check_origin(origin: str, rp_id: str) -> None:
    """An https origin in serialized form whose host is `rp_id` or a subdomain of it."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError as exc:
        raise ValueError("origin is not a valid URL") from exc
    host = parts.hostname or ""
    serialized = f"https://{host}" + (f":{port}" if port not in (None, 443) else "")
    if parts.scheme != "https" or origin != serialized:
        raise ValueError("origin must be a serialized https origin (no path, user or query)")
    if host != rp_id and not host.endswith("." + rp_id):
        raise ValueError("origin host must be rp.id or a subdomain of it")


RequestPayload = PinRequest | CredentialRequest


def parse_request_payload(data: bytes) -> PinRequest | CredentialRequest:
    """The decrypted plaintext of a request JWE → its validated payload.

    A JSON object with `publicKey` is a credential request, any other object a PIN request.
    Raises InvalidRequest when the bytes are not a UTF-8 JSON object or fail validation.
    """
    return _parse_payload(data, "request", "publicKey", CredentialRequest, PinRequest, InvalidRequest)


# -- §3 responses --------------------------------------------------------------------------


def _canonical_uuid(value: str) -> str:
    if str(uuid.UUID(value)) != value:
        raise ValueError("aaguid must be a canonical lowercase UUID")
    return value


_NULLABLE_MEMBERS = tuple((name, to_camel(name)) for name in ("serial_number", "firmware_version"))


class _ResponseCommon(_Wire):
    """The members every response payload carries (§3); `serialNumber` and
    `firmwareVersion` are always present, possibly null."""

    model_config = ConfigDict(hide_input_in_errors=True)

    version: Literal[1]
    request_id: _RequestId
    request_digest: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]
    serial_number: Annotated[StrictStr, Field(pattern=r"^[0-9]+$")] | None
    firmware_version: Annotated[StrictStr, Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")] | None
    aaguid: Annotated[StrictStr, AfterValidator(_canonical_uuid)]
    issued_at: StrictInt = Field(ge=0)

    @model_serializer(mode="wrap")
    def _nullable_members_stay(self, handler):
        data = handler(self)
        for name, alias in _NULLABLE_MEMBERS:
            data.setdefault(alias if "requestId" in data else name, None)
        return data


class PinResponse(_ResponseCommon):
    """§3.1 PIN response: adds `pin` (digits; kept out of repr) and `forcePINChange`."""

    pin: Annotated[StrictStr, Field(pattern=r"^[0-9]{4,63}$", repr=False)]
    force_pin_change: StrictBool = Field(alias="forcePINChange")


class AuthenticatorAttestationResponseJSON(_Wire):
    client_data_json: B64UBytes = Field(alias="clientDataJSON")
    attestation_object: B64UBytes
    transports: list[StrictStr] = Field(default_factory=list)
    authenticator_data: B64U | None = None
    public_key: B64U | None = None
    public_key_algorithm: StrictInt | None = None


class RegistrationResponseJSON(_Wire):
    """WebAuthn Level 3 `RegistrationResponseJSON` (§3.2 `credential`)."""

    id: B64UBytes
    raw_id: B64UBytes
    type: Literal["public-key"]
    authenticator_attachment: StrictStr | None = None
    response: AuthenticatorAttestationResponseJSON
    client_extension_results: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _id_is_raw_id(self) -> RegistrationResponseJSON:
        if self.id != self.raw_id:
            raise ValueError("id and rawId differ")
        return self

    @classmethod
    def from_fido2(cls, response: RegistrationResponse) -> RegistrationResponseJSON:
        """From python-fido2's `RegistrationResponse` (its dict() is the JSON form)."""
        return cls.model_validate(json.loads(json.dumps(dict(response))))


class CredentialResponse(_ResponseCommon):
    """§3.2 credential response: adds `credential`."""

    credential: RegistrationResponseJSON


ResponsePayload = PinResponse | CredentialResponse


def parse_response_payload(data: bytes) -> PinResponse | CredentialResponse:
    """A verified response payload → its model (`credential` present → CredentialResponse).

    Raises ValueError with a message that never echoes the input.
    """
    return _parse_payload(data, "response", "credential", CredentialResponse, PinResponse, ValueError)


def _parse_payload(data: bytes, kind: str, marker: str, with_marker, without_marker, error: type[Exception]):
    """A UTF-8 JSON object → `with_marker` if it has the member `marker`, else `without_marker`;
    `error` (whose message never echoes the input) for anything else."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error(f"the {kind} payload is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise error(f"the {kind} payload is not a JSON object")
    model = with_marker if marker in document else without_marker
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise error(f"{model.__name__}: {describe_validation_error(exc)}") from None


# -- §4 fulfillment service API ------------------------------------------------------------

MAX_JWE_CHARS = 64 * 1024
"""The longest request JWE accepted anywhere (also the bound of `open_request`)."""

_CompactJwe = Annotated[
    StrictStr,
    Field(
        max_length=MAX_JWE_CHARS,
        pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+){3}$",
    ),
]


#: Characters no shipment field may hold (PROTOCOL.md §4): C0/C1 controls (NUL included), the
#: line and paragraph separators, and the bidirectional marks, embeddings, overrides and
#: isolates that make a label read differently from what is stored (Unicode UAX #9).
_FORBIDDEN_CHARACTERS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _printable(value: str) -> str:
    found = _FORBIDDEN_CHARACTERS.search(value)
    if found is not None:
        raise ValueError(
            f"holds the control or bidi character U+{ord(found.group()):04X} at position {found.start()}"
        )
    return value


def _text(max_length: int, *, required: bool = False, pattern: str | None = None):
    """A shipment text field: at most `max_length` characters, none of them a control or bidi one."""
    return Annotated[
        StrictStr,
        Field(min_length=1 if required else 0, max_length=max_length, pattern=pattern),
        AfterValidator(_printable),
    ]


#: countries whose addresses need a `region` (YubiEnterprise: US and CA)
REGION_REQUIRED = frozenset({"US", "CA"})
#: `recipient_telephone` limits: 40 characters, 255 for India (YubiEnterprise)
TELEPHONE_MAX = 40
TELEPHONE_MAX_BY_COUNTRY = {"IN": 255}


class _Body(BaseModel):
    """The §4 JSON bodies: snake_case names as YubiEnterprise spells them."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Recipient(_Body):
    """YubiEnterprise's recipient limits: company 20, first name 15, last name 20, email 80,
    telephone 40 (255 in India: checked against the address, `check_envelope`)."""

    recipient_company: _text(20) = ""
    recipient_email: _text(80, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    recipient_firstname: _text(15, required=True)
    recipient_lastname: _text(20, required=True)
    recipient_telephone: _text(max(TELEPHONE_MAX_BY_COUNTRY.values()), pattern=r"^\+?[0-9 ()./-]{3,}$")


class MailingAddress(_Body):
    """Street lines and city 60, region 50 (required for US and CA), postal code 20, a
    two-letter country code."""

    street_line1: _text(60, required=True)
    street_line2: _text(60) = ""
    street_line3: _text(60) = ""
    city: _text(60, required=True)
    region: _text(50) = ""
    postal_code: _text(20) = ""
    country_code_2: Annotated[StrictStr, Field(pattern=r"^[A-Z]{2}$")]

    @model_validator(mode="after")
    def _region_where_required(self) -> MailingAddress:
        if self.country_code_2 in REGION_REQUIRED and not self.region.strip():
            raise ValueError(f"region is required for country_code_2 {self.country_code_2}")
        return self


def check_envelope(recipient: Recipient, address: MailingAddress) -> None:
    """The limits that span recipient and address: the telephone's length by country.
    ValueError names the field."""
    limit = TELEPHONE_MAX_BY_COUNTRY.get(address.country_code_2, TELEPHONE_MAX)
    if len(recipient.recipient_telephone) > limit:
        raise ValueError(
            f"recipient.recipient_telephone: at most {limit} characters for country_code_2 "
            f"{address.country_code_2}, not {len(recipient.recipient_telephone)}"
        )


DeliveryType = Annotated[StrictInt, Field(ge=1, le=2)]
"""1 standard, 2 expedited (YubiEnterprise)."""


class ProductCustomization(_Body):
    fido_pin_request: _CompactJwe
    fido_credential_requests: list[_CompactJwe] = Field(min_length=1, max_length=25)


class ShipmentItem(_Body):
    product_id: StrictInt = Field(gt=0)
    inventory_product_id: StrictInt = Field(gt=0)
    product_quantity: Annotated[StrictInt, Field(ge=1, le=1)]
    customization_id: _text(64) = ""
    product_customizations: list[ProductCustomization] = Field(min_length=1, max_length=1)


class ShipmentRequest(_Body):
    """A shipment body in the YubiEnterprise shape (PROTOCOL.md §4); offline (`station
    fulfill`) a file may hold several items, the service takes exactly one (`ShipmentOrder`).

    Field limits:
    - `delivery_type` 1 (standard) or 2 (expedited);
    - recipient: company ≤ 20, first name 1..15, last name 1..20, email ≤ 80 and shaped like
      an address, telephone ≥ 3 of digits, spaces, `+()./-`, ≤ 40 (≤ 255 for `IN`);
    - address: `street_line1` and `city` required, street lines and city ≤ 60, region ≤ 50
      (required for US and CA), `postal_code` ≤ 20, `country_code_2` two upper-case letters;
    - no field holds a control character, NUL or a bidi mark, embedding, override or isolate;
    - each item's `product_quantity` the integer 1 with exactly one `product_customizations`
      entry holding one `fido_pin_request` and 1..25 `fido_credential_requests`;
      `customization_id` ≤ 64;
    - every JWE a compact serialization (five b64u parts) of at most 64 KiB.
    """

    delivery_type: DeliveryType
    recipient: Recipient
    mailing_address: MailingAddress
    shipment_items: list[ShipmentItem] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _envelope_limits(self) -> ShipmentRequest:
        check_envelope(self.recipient, self.mailing_address)
        return self


class ShipmentOrder(ShipmentRequest):
    """The body of `POST /v1/fpr/shipments`: exactly one item (one key per shipment)."""

    shipment_items: list[ShipmentItem] = Field(min_length=1, max_length=1)


class ShipmentPatch(_Body):
    """The body of `PATCH /v1/fpr/shipments/{id}`: any of the envelope's three members (the
    products and their requests cannot change); at least one."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"minProperties": 1})

    delivery_type: DeliveryType = None
    recipient: Recipient = None
    mailing_address: MailingAddress = None

    @model_validator(mode="after")
    def _something(self) -> ShipmentPatch:
        if self.delivery_type is None and self.recipient is None and self.mailing_address is None:
            raise ValueError("give at least one of recipient, mailing_address, delivery_type")
        return self


class ProductData(_Body):
    """One fulfilled device of an item: `shipment_items[].product_data[]`."""

    serial_number: StrictStr | None
    firmware_version: StrictStr | None
    fido_pin_response: StrictStr
    fido_credential_responses: list[StrictStr] = Field(min_length=1)


class ItemError(_Body):
    """An item that failed: one of the PROTOCOL.md §4 item error codes."""

    error_code: Literal[ITEM_ERROR_CODES]  # type: ignore[valid-type]
    error_message: StrictStr


class StationItemError(ItemError):
    """What a station reports of an item it could not do: a station's code only (never a code
    the service alone sets, such as `directory_refused`)."""

    error_code: Literal[STATION_ITEM_ERROR_CODES]  # type: ignore[valid-type]


class ErrorBody(_Body):
    """A `400`-class answer of the service: `{error_code, error_message, error_data}`."""

    error_code: StrictStr
    error_message: StrictStr
    error_data: Any = None

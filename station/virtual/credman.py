"""authenticatorCredentialManagement (CTAP 2.1 §6.8; FIDO_2_1_PRE keys answer the same
subcommands on the preview command 0x41): getCredsMetadata, enumerateRPs, enumerateCredentials,
deleteCredential, updateUserInformation.

Subcommands other than the *GetNext ones need a pinUvAuthParam over
uint8(subCommand) || subCommandParams made with a token holding the cm permission (a legacy
pinToken on a pre-2.1 key); a token bound to a permissions RP ID only reaches that RP.
"""

from __future__ import annotations

import struct
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin
from fido2.utils import websafe_decode, websafe_encode

from .client_pin import check_protocol, subcommand_handler
from .credentials import unwrap
from .state import StoredCredential

if TYPE_CHECKING:
    from .authenticator import Request, VirtualAuthenticator

ERR = CtapError.ERR
CMD = CredentialManagement.CMD
PARAM = CredentialManagement.PARAM
RESULT = CredentialManagement.RESULT


class P:
    """authenticatorCredentialManagement parameter keys."""

    SUB_COMMAND = 0x01
    SUB_COMMAND_PARAMS = 0x02
    PIN_UV_AUTH_PROTOCOL = 0x03
    PIN_UV_AUTH_PARAM = 0x04


class CredentialManagementCommand:
    """authenticatorCredentialManagement, one method per subCommand."""

    def __init__(self, key: VirtualAuthenticator) -> None:
        self.key = key
        self.rps_left: list[str] | None = None
        self.creds_left: list[StoredCredential] | None = None
        self.handlers = {
            CMD.GET_CREDS_METADATA: self.get_creds_metadata,
            CMD.ENUMERATE_RPS_BEGIN: self.enumerate_rps_begin,
            CMD.ENUMERATE_RPS_NEXT: self.enumerate_rps_next,
            CMD.ENUMERATE_CREDS_BEGIN: self.enumerate_credentials_begin,
            CMD.ENUMERATE_CREDS_NEXT: self.enumerate_credentials_next,
            CMD.DELETE_CREDENTIAL: self.delete_credential,
            CMD.UPDATE_USER_INFO: self.update_user_information,
        }

    def forget_enumeration(self) -> None:
        self.rps_left = None
        self.creds_left = None

    def __call__(self, request: Request) -> dict[int, Any] | None:
        p = request.params
        handler = subcommand_handler(p, P.SUB_COMMAND, self.handlers)
        sub = p[P.SUB_COMMAND]
        if sub not in (CMD.ENUMERATE_RPS_NEXT, CMD.ENUMERATE_CREDS_NEXT):
            self.forget_enumeration()
        sub_params = p.get(P.SUB_COMMAND_PARAMS)
        if sub_params is not None and not isinstance(sub_params, dict):
            raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
        bound_rp: str | None = None
        if sub not in (CMD.ENUMERATE_RPS_NEXT, CMD.ENUMERATE_CREDS_NEXT):
            bound_rp = self._authorize(p, sub, sub_params)
        return handler(sub_params or {}, bound_rp)

    def _authorize(self, p: dict, sub: int, sub_params: dict | None) -> str | None:
        """PUAT_REQUIRED without pinUvAuthParam; verify it with the cm permission. Returns the
        token's permissions RP ID (None if unbound)."""
        param = p.get(P.PIN_UV_AUTH_PARAM)
        if param is None:
            raise CtapError(ERR.PUAT_REQUIRED)
        protocol = check_protocol(self.key, p, P.PIN_UV_AUTH_PROTOCOL)
        message = struct.pack(">B", sub) + (cbor.encode(sub_params) if sub_params is not None else b"")
        token = self.key.pin_uv.token
        bound = token.rp_id if token is not None else None
        self.key.pin_uv.check_token(protocol, message, param, ClientPin.PERMISSION.CREDENTIAL_MGMT, bound)
        return bound

    # -- subcommands ------------------------------------------------------------------------
    def get_creds_metadata(self, params: dict, bound_rp: str | None) -> dict[int, Any]:
        """getCredsMetadata: existing discoverable credentials and how many more fit."""
        _unbound(bound_rp)
        return {
            RESULT.EXISTING_CRED_COUNT: len(self.key.state.credentials),
            RESULT.MAX_REMAINING_COUNT: self.key.remaining_discoverable(),
        }

    def enumerate_rps_begin(self, params: dict, bound_rp: str | None) -> dict[int, Any]:
        """enumerateRPsBegin: the first RP and totalRPs; NO_CREDENTIALS if none."""
        _unbound(bound_rp)
        rps = list(dict.fromkeys(c.rp_id for c in self.key.state.credentials))
        if not rps:
            raise CtapError(ERR.NO_CREDENTIALS)
        self.rps_left = rps[1:]
        return {**self._rp(rps[0]), RESULT.TOTAL_RPS: len(rps)}

    def enumerate_rps_next(self, params: dict, bound_rp: str | None) -> dict[int, Any]:
        """enumerateRPsGetNextRP: NOT_ALLOWED without a pending enumeration."""
        if not self.rps_left:
            raise CtapError(ERR.NOT_ALLOWED)
        return self._rp(self.rps_left.pop(0))

    def enumerate_credentials_begin(self, params: dict, bound_rp: str | None) -> dict[int, Any]:
        """enumerateCredentialsBegin(rpIDHash): the first credential and totalCredentials."""
        rp_id_hash = params.get(PARAM.RP_ID_HASH)
        if rp_id_hash is None:
            raise CtapError(ERR.MISSING_PARAMETER)
        if bound_rp is not None and sha256(bound_rp.encode()).digest() != rp_id_hash:
            raise CtapError(ERR.PIN_AUTH_INVALID)
        creds = [c for c in self.key.state.credentials if sha256(c.rp_id.encode()).digest() == rp_id_hash]
        if not creds:
            raise CtapError(ERR.NO_CREDENTIALS)
        self.creds_left = creds[1:]
        return {**self._credential(creds[0]), RESULT.TOTAL_CREDENTIALS: len(creds)}

    def enumerate_credentials_next(self, params: dict, bound_rp: str | None) -> dict[int, Any]:
        """enumerateCredentialsGetNextCredential: NOT_ALLOWED without a pending enumeration."""
        if not self.creds_left:
            raise CtapError(ERR.NOT_ALLOWED)
        return self._credential(self.creds_left.pop(0))

    def delete_credential(self, params: dict, bound_rp: str | None) -> None:
        """deleteCredential(credentialId): NO_CREDENTIALS if it is not stored here."""
        stored = self._find(params, bound_rp)
        self.key.state.credentials.remove(stored)
        self.key.save()

    def update_user_information(self, params: dict, bound_rp: str | None) -> None:
        """updateUserInformation(credentialId, user): same user.id; name and displayName are
        replaced (an absent or empty one is removed)."""
        stored = self._find(params, bound_rp)
        user = params.get(PARAM.USER)
        if not isinstance(user, dict) or "id" not in user:
            raise CtapError(ERR.MISSING_PARAMETER)
        if websafe_encode(user["id"]) != stored.user["id"]:
            raise CtapError(ERR.INVALID_PARAMETER)
        stored.user = {"id": stored.user["id"]}
        for key in ("name", "displayName"):
            if isinstance(user.get(key), str) and user[key]:
                stored.user[key] = user[key]
        self.key.save()

    # -- helpers ----------------------------------------------------------------------------
    def _find(self, params: dict, bound_rp: str | None) -> StoredCredential:
        descriptor = params.get(PARAM.CREDENTIAL_ID)
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("id"), bytes):
            raise CtapError(ERR.MISSING_PARAMETER)
        stored = self.key.credential_commands.stored(descriptor["id"])
        if stored is None:
            raise CtapError(ERR.NO_CREDENTIALS)
        if bound_rp is not None and bound_rp != stored.rp_id:
            raise CtapError(ERR.PIN_AUTH_INVALID)
        return stored

    def _rp(self, rp_id: str) -> dict[int, Any]:
        stored = next(c for c in self.key.state.credentials if c.rp_id == rp_id)
        rp: dict[str, Any] = {"id": rp_id}
        if stored.rp_name:
            rp["name"] = stored.rp_name
        return {RESULT.RP: rp, RESULT.RP_ID_HASH: sha256(rp_id.encode()).digest()}

    def _credential(self, stored: StoredCredential) -> dict[int, Any]:
        cred = unwrap(
            websafe_decode(self.key.state.credential_key), sha256(stored.rp_id.encode()).digest(), stored.id_bytes
        )
        if cred is None:  # a stored credential always unwraps under its own key
            raise CtapError(ERR.OTHER)
        result = {
            RESULT.USER: stored.user_entity(),
            RESULT.CREDENTIAL_ID: {"type": "public-key", "id": stored.id_bytes},
            RESULT.PUBLIC_KEY: cred.public_key(),
            RESULT.CRED_PROTECT: cred.cred_protect,
        }
        large_blob_key = cred.large_blob_key(websafe_decode(self.key.state.credential_key))
        if large_blob_key is not None:  # §6.8.3: largeBlobKey of a credential that has one
            result[RESULT.LARGE_BLOB_KEY] = large_blob_key
        return result


def _unbound(bound_rp: str | None) -> None:
    """getCredsMetadata / enumerateRPsBegin refuse a token bound to a permissions RP ID."""
    if bound_rp is not None:
        raise CtapError(ERR.PIN_AUTH_INVALID)


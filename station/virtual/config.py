"""authenticatorConfig (CTAP 2.1 §6.11): enableEnterpriseAttestation, toggleAlwaysUv,
setMinPINLength (newMinPINLength, minPinLengthRPIDs, forceChangePin).

When the key is protected by a PIN (or alwaysUv is on), every subcommand needs a
pinUvAuthParam over 32×0xff || 0x0d || uint8(subCommand) || subCommandParams, made with a
pinUvAuthToken holding the acfg permission.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2.config import Config
from fido2.ctap2.pin import ClientPin

from .client_pin import check_protocol, subcommand_handler

if TYPE_CHECKING:
    from .authenticator import Request, VirtualAuthenticator

ERR = CtapError.ERR


class P:
    """authenticatorConfig parameter keys."""

    SUB_COMMAND = 0x01
    SUB_COMMAND_PARAMS = 0x02
    PIN_UV_AUTH_PROTOCOL = 0x03
    PIN_UV_AUTH_PARAM = 0x04


class ConfigCommand:
    """authenticatorConfig, one method per subCommand."""

    def __init__(self, key: VirtualAuthenticator) -> None:
        self.key = key
        self.handlers = {
            Config.CMD.ENABLE_ENTERPRISE_ATT: self.enable_enterprise_attestation,
            Config.CMD.TOGGLE_ALWAYS_UV: self.toggle_always_uv,
            Config.CMD.SET_MIN_PIN_LENGTH: self.set_min_pin_length,
        }

    def __call__(self, request: Request) -> None:
        p = request.params
        handler = subcommand_handler(p, P.SUB_COMMAND, self.handlers)
        sub = p[P.SUB_COMMAND]
        sub_params = p.get(P.SUB_COMMAND_PARAMS)
        if sub_params is not None and not isinstance(sub_params, dict):
            raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
        if self.key.state.pin_set or self.key.state.always_uv:
            self._authorize(p, sub, sub_params)
        handler(sub_params or {})
        self.key.save()

    def _authorize(self, p: dict, sub: int, sub_params: dict | None) -> None:
        """pinUvAuthParam required (PUAT_REQUIRED), verified with the acfg permission."""
        param = p.get(P.PIN_UV_AUTH_PARAM)
        if param is None:
            raise CtapError(ERR.PUAT_REQUIRED)
        protocol = check_protocol(self.key, p, P.PIN_UV_AUTH_PROTOCOL)
        message = b"\xff" * 32 + b"\x0d" + struct.pack("<B", sub)
        if sub_params is not None:
            message += cbor.encode(sub_params)
        self.key.pin_uv.check_token(
            protocol, message, param, ClientPin.PERMISSION.AUTHENTICATOR_CFG, None, bind_rp=False
        )

    def enable_enterprise_attestation(self, params: dict[Any, Any]) -> None:
        """enableEnterpriseAttestation: turns the ep option on (a no-op if already on)."""
        if not self.key.profile.enterprise_attestation:
            raise CtapError(ERR.INVALID_PARAMETER)
        self.key.state.enterprise_attestation = True

    def toggle_always_uv(self, params: dict[Any, Any]) -> None:
        """toggleAlwaysUv: flips alwaysUv (and with it makeCredUvNotRqd)."""
        self.key.state.always_uv = not self.key.state.always_uv

    def set_min_pin_length(self, params: dict[Any, Any]) -> None:
        """setMinPINLength: newMinPINLength may only grow; minPinLengthRPIDs up to
        maxRPIDsForSetMinPINLength; forceChangePin needs a PIN; a current PIN shorter than
        the new minimum forces a change."""
        state = self.key.state
        new_min = params.get(Config.PARAM.NEW_MIN_PIN_LENGTH, state.min_pin_length)
        rp_ids = params.get(Config.PARAM.MIN_PIN_LENGTH_RPIDS)
        force = params.get(Config.PARAM.FORCE_CHANGE_PIN, False)
        if not isinstance(new_min, int) or not isinstance(force, bool):
            raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
        if rp_ids is not None and (
            not isinstance(rp_ids, list) or not all(isinstance(r, str) for r in rp_ids)
        ):
            raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
        if new_min < state.min_pin_length or new_min > 63:
            raise CtapError(ERR.PIN_POLICY_VIOLATION)
        if rp_ids is not None and len(rp_ids) > self.key.profile.max_rpids_for_min_pin:
            raise CtapError(ERR.PIN_POLICY_VIOLATION)
        if force and not state.pin_set:
            raise CtapError(ERR.PIN_NOT_SET)
        state.min_pin_length = new_min
        if rp_ids is not None:
            state.min_pin_length_rpids = list(rp_ids)
        if force or (state.pin_set and state.pin_length < new_min):
            state.force_pin_change = True

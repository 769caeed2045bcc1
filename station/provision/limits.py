"""What an item asks the key to store, checked before anything is written to it.

The first write of an item is setPIN; a request the key then cannot take (a makeCredential too
large for its `maxMsgSize`, a second credential for the same account) would leave a key with a
PIN and no use. So, before setPIN (`check_item_limits`, called once from `item.preflight`):

- no two credential requests of one item name the same (rp.id, user.id): on a key they would be
  one discoverable credential, the second overwriting the first (CTAP 2.1 §6.1 step 16), and two
  responses would describe one credential (`invalid_request`);
- every makeCredential fits the key's `maxMsgSize` (CTAP 2.1 §6.4 getInfo 0x05, default 1024):
  the command is encoded as python-fido2's `Fido2Client` will send it, with the largest values it
  can carry (a 32-byte pinUvAuthParam, the longest excluded credential, every extension the
  station may add), over the strings the key will store as `messages` kept them (rp.name,
  user.name, user.displayName truncated to 64 bytes, user.id at most 64 bytes) (`device_unsupported`:
  another key with a larger buffer may take it).
"""

from __future__ import annotations

from collections.abc import Iterable

from fido2 import cbor

from station.errors import DeviceUnsupported, InvalidRequest
from station.protocol.messages import CTAP_STORED_STRING_BYTES, CredentialRequest, decode_b64u

#: CTAP 2.1 §6.4: "maxMsgSize ... if not present, 1024 bytes"
DEFAULT_MAX_MSG_SIZE = 1024
_CTAP2_MAKE_CREDENTIAL = 0x01
_PIN_UV_AUTH_PARAM_BYTES = 32  # PIN/UV protocol 2 (HMAC-SHA-256, untruncated); protocol 1 is 16
#: the extension inputs the station's Fido2Client may add (credProtect, hmac-secret, minPinLength)
_EXTENSION_INPUTS = {"credProtect": 3, "hmac-secret": True, "minPinLength": True}


def check_item_limits(*, max_msg_size: int | None, requests: Iterable[CredentialRequest],
                      max_cred_id_length: int | None = None) -> None:
    """Raise InvalidRequest for a duplicate (rp.id, user.id) and DeviceUnsupported for a
    makeCredential larger than `max_msg_size` (None: the CTAP default, 1024).
    `max_cred_id_length` (getInfo 0x08): longer excluded IDs are never sent (python-fido2 drops them)."""
    requests = list(requests)
    seen: set[tuple[str, bytes]] = set()
    for req in requests:
        account = (req.public_key.rp.id, decode_b64u(req.public_key.user.id))
        if account in seen:
            raise InvalidRequest(
                f"two credential requests of one item name the same account (rp.id {account[0]} and user.id): "
                "a key keeps one discoverable credential per account"
            )
        seen.add(account)
    limit = max_msg_size or DEFAULT_MAX_MSG_SIZE
    for req in requests:
        size = make_credential_size(req, max_cred_id_length=max_cred_id_length)
        if size > limit:
            raise DeviceUnsupported(
                f"request {req.request_id}: its makeCredential would be {size} bytes, over the key's "
                f"maxMsgSize of {limit}"
            )


def make_credential_size(req: CredentialRequest, *, max_cred_id_length: int | None = None) -> int:
    """The largest authenticatorMakeCredential (command byte + CBOR) the station can send for `req`:
    at most one excluded credential goes with it (python-fido2 finds the match first), the longest
    one the key accepts."""
    options = req.public_key  # its rp.name, user.name, user.displayName: ≤ CTAP_STORED_STRING_BYTES
    rp = {"id": options.rp.id, "name": options.rp.name}
    user = {"id": decode_b64u(options.user.id), "name": options.user.name, "displayName": options.user.display_name}
    params = [{"type": p.type, "alg": p.alg} for p in options.pub_key_cred_params]
    excluded = sorted((d for d in options.exclude_credentials
                       if not max_cred_id_length or len(decode_b64u(d.id)) <= max_cred_id_length),
                      key=lambda d: len(decode_b64u(d.id)))
    exclude = [{"type": d.type, "id": decode_b64u(d.id)} for d in excluded[-1:]]
    command = {
        1: b"\0" * 32,
        2: rp,
        3: user,
        4: params,
        6: _EXTENSION_INPUTS,
        7: {"rk": True},
        8: b"\0" * _PIN_UV_AUTH_PARAM_BYTES,
        9: 2,
    }
    if exclude:
        command[5] = exclude
    return 1 + len(cbor.encode(command))

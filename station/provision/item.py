"""One shipment item on one key: open → preflight → PIN → credentials → config → guard → seal.

`provision_item` is the whole of what a key goes through at the factory. Nothing is written to the
key before every request is opened and the key is shown able to do everything the item asks
(`preflight`, whose `refuse_before_writing` is the one place for checks of the key itself: the
catalogue, the trust store, capabilities, PIN policy); nothing is sealed before every attestation
is shown genuine. Every failure names the key and what to do with it (`key_action`): a failure
after the first write marks it `key_touched`, so the technician resets the key.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from fido2.ctap import CtapError

from station.device.discovery import Device
from station.device.faults import TRANSPORT_ERRORS, key_fault, with_action
from station.errors import (
    DeviceError,
    DeviceNotFresh,
    DeviceUnsupported,
    Expired,
    InvalidRequest,
    StationError,
    UserPresenceTimeout,
)
from station.protocol.jose import open_request, replay_keys, request_digest, seal_response
from station.protocol.keys import KeyStore
from station.protocol.messages import (
    CredentialRequest,
    CredentialResponse,
    PinRequest,
    PinResponse,
)
from station.provision.credential import CredentialMaker, MadeCredential
from station.provision.genuine import NOT_GENUINE, TrustStore, admit, verify_genuine
from station.provision.limits import check_item_limits
from station.provision.pin import Pin, PinPolicyRefused, force_pin_change, set_new_pin

#: Names of the steps reported to `on_step`, in order (the daemon journals them).
STEPS = ("opened", "preflight", "pin_set", "credential", "configured", "verified", "sealed")

StepCallback = Callable[[str, dict], None]


@dataclass(frozen=True)
class OpenedItem:
    """An item's requests, decrypted and validated, with the JWE each came from."""

    pin_request: PinRequest
    pin_jwe: str
    credential_requests: list[tuple[CredentialRequest, str]]


@dataclass(frozen=True)
class ProvisionedItem:
    """The item's product_data (PROTOCOL.md §4) and who it went to."""

    product_data: dict
    request_ids: list[str]


def open_item(
    *, pin_request_jwe: str, credential_request_jwes: list[str], keystore: KeyStore, now: datetime
) -> OpenedItem:
    """Decrypt and validate every request of an item (decrypt_failed / invalid_request / expired)."""
    pin_request = open_request(pin_request_jwe, keystore=keystore, now=now)
    if not isinstance(pin_request, PinRequest):
        raise InvalidRequest("fido_pin_request holds a credential request")
    if not credential_request_jwes:
        raise InvalidRequest("an item needs at least one credential request")
    creds = []
    for jwe in credential_request_jwes:
        req = open_request(jwe, keystore=keystore, now=now)
        if not isinstance(req, CredentialRequest):
            raise InvalidRequest("fido_credential_requests holds a PIN request")
        creds.append((req, jwe))
    ids = [pin_request.request_id] + [r.request_id for r, _ in creds]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("two requests of one item share a requestId")
    return OpenedItem(pin_request, pin_request_jwe, creds)


def refuse_before_writing(device: Device, trust: TrustStore | None) -> None:
    """What can be known of the key itself before anything is written to it: each check raises
    a StationError with the key's `key_action` ("set_aside": it is not a key we program).

    - with a trust store (the station always has one): the counterfeit guard's pre-write check
      (`genuine.admit`): the AAGUID is a catalogued model (shipped, MDS or the operator's), not
      revoked, with an anchor, and the key attests with something other than "none";
    - without one: at least the AAGUID is in the shipped catalogue (station/data/aaguids.json),
      since an unknown AAGUID would only be refused after the PIN and credentials were written.
    """
    from station.vendors import lookup

    if trust is not None:
        try:
            admit(device.info, trust)
        except StationError as exc:
            raise with_action(exc, "set_aside") from None
    elif lookup(device.aaguid) is None:
        raise with_action(DeviceUnsupported(
            f"{device.label}: {NOT_GENUINE} (AAGUID {device.aaguid} is no model in the catalogue)"), "set_aside")


def preflight(device: Device, item: OpenedItem, *, now: datetime, trust: TrustStore | None = None) -> None:
    """Everything the item asks, checked before the key is written to (PROTOCOL.md §2, §5)."""
    refuse_before_writing(device, trust)
    info = device.info
    check_item_limits(max_msg_size=info.max_msg_size, max_cred_id_length=info.max_cred_id_length,
                      requests=[req for req, _ in item.credential_requests])
    if "clientPin" not in info.options:
        raise DeviceUnsupported("the key has no PIN support (clientPin)")
    if not info.options.get("rk"):
        raise DeviceUnsupported("the key cannot store discoverable credentials")
    if device.pin_set:
        raise DeviceNotFresh("the key already has a PIN: reset it (station reset) before use")
    for req, _ in item.credential_requests:
        if _has_credentials_for(device, req.public_key.rp.id):
            raise DeviceNotFresh(f"the key already holds a credential for {req.public_key.rp.id}: reset it before use")
    pin_req = item.pin_request
    device_min = info.min_pin_length or 4
    if pin_req.length < device_min:
        raise DeviceUnsupported(f"the PIN length {pin_req.length} is below the key's minimum {device_min}")
    raises_min = (pin_req.min_pin_length or 0) > device_min
    if (pin_req.force_pin_change or raises_min) and not device.can_force_pin_change:
        raise DeviceUnsupported("the key cannot force a PIN change (no authenticatorConfig setMinPINLength)")
    supported_algs = {a["alg"] for a in (info.algorithms or [{"alg": -7}])}
    extensions = set(info.extensions or [])
    for req, _ in item.credential_requests:
        if req.is_expired(now):
            raise Expired(f"request {req.request_id} expired at {req.not_after}")
        wanted = req.public_key.alg_preference()
        if not supported_algs.intersection(wanted):
            raise DeviceUnsupported(f"the key supports none of the algorithms {wanted}")
        level = req.public_key.cred_protect_level()
        if level and level > 1 and req.public_key.cred_protect_enforced() and "credProtect" not in extensions:
            raise DeviceUnsupported("the key has no credProtect and the request enforces it")
        if req.public_key.hmac_secret_requested() and "hmac-secret" not in extensions:
            raise DeviceUnsupported("the key has no hmac-secret")


def _has_credentials_for(device: Device, rp_id: str) -> bool:
    """A silent authenticatorGetAssertion (up=false, no allowList): a key with no PIN answers
    NO_CREDENTIALS unless it holds a discoverable credential for rp_id (CTAP 2.1 §6.2)."""
    try:
        device.ctap2().get_assertion(rp_id, b"\0" * 32, options={"up": False})
    except CtapError as exc:
        if exc.code == CtapError.ERR.NO_CREDENTIALS:
            return False
        raise DeviceError(f"the key refused a silent getAssertion ({exc.code.name})") from None
    return True


def _check_no_credentials(device: Device, pin: Pin) -> None:
    """Right after setPIN: credential management's metadata must show no discoverable credential
    at all (the only complete check, and it needs a PIN). Keys without credMgmt rely on the
    per-RP check of preflight."""
    if not (device.info.options.get("credMgmt") or device.info.options.get("credentialMgmtPreview")):
        return
    from fido2.ctap2 import ClientPin, CredentialManagement

    from station.provision.pin import pin_protocol_for

    ctap2 = device.ctap2()
    client_pin = ClientPin(ctap2, pin_protocol_for(ctap2.info))
    token = client_pin.get_pin_token(pin.reveal(), ClientPin.PERMISSION.CREDENTIAL_MGMT)
    metadata = CredentialManagement(ctap2, client_pin.protocol, token).get_metadata()
    if metadata.get(CredentialManagement.RESULT.EXISTING_CRED_COUNT, 0):
        raise DeviceNotFresh("the key already holds discoverable credentials: reset it before use")


def provision_item(
    *,
    device: Device,
    pin_request_jwe: str,
    credential_request_jwes: list[str],
    keystore: KeyStore,
    trust: TrustStore,
    now: datetime | None = None,
    on_touch: Callable[[], None] | None = None,
    on_step: StepCallback | None = None,
    event: threading.Event | None = None,
    already_fulfilled: Callable[[str], bool] | None = None,
) -> ProvisionedItem:
    """Program one key for one shipment item and seal its responses (ARCHITECTURE.md flow).

    `already_fulfilled(requestId)` tells of requests fulfilled before (the daemon's journal, or
    earlier items of one `station fulfill`): such an item is refused with `invalid_request`
    before its key is touched (PROTOCOL.md §5: each requestId is accepted once)."""
    now = now or datetime.now(timezone.utc)
    step = on_step or (lambda name, data: None)
    item = open_item(
        pin_request_jwe=pin_request_jwe,
        credential_request_jwes=credential_request_jwes,
        keystore=keystore,
        now=now,
    )
    request_ids = replay_keys([item.pin_request.request_id] + [r.request_id for r, _ in item.credential_requests],
                              [item.pin_jwe] + [jwe for _, jwe in item.credential_requests])
    replayed = [r for r in request_ids if already_fulfilled and already_fulfilled(r)]
    if replayed:
        raise InvalidRequest(f"request {replayed[0]} was already fulfilled")
    step("opened", {"request_ids": request_ids})
    try:
        preflight(device, item, now=now, trust=trust)
    except StationError as exc:
        raise _named(exc, device, written=False) from None
    except TRANSPORT_ERRORS as exc:
        raise key_fault(exc, label=device.label, written=False, doing="checking it") from None
    step("preflight", {"aaguid": str(device.aaguid), "serial": device.identity.serial})

    written = {"maybe": False}  # from the first setPIN sent, the key may hold our PIN
    doing = "setting its PIN"
    try:
        try:
            pin = set_new_pin(device.ctap2(), item.pin_request.length,
                              on_attempt=lambda: written.update(maybe=True))
        except PinPolicyRefused as exc:  # every refusal was for the PIN's policy: nothing written
            written["maybe"] = False
            raise with_action(DeviceUnsupported(f"{device.label}: {exc.message}"), "reuse") from None
        step("pin_set", {})
        doing = "checking it holds no credential"
        _check_no_credentials(device, pin)
        maker = CredentialMaker(device.ctap_device, pin, transports=device.transports,
                                on_touch=on_touch, event=event, session=device.ctap2())
        made = []
        for index, (req, _) in enumerate(item.credential_requests):
            doing = f"making credential {index + 1}"
            public_key = req.public_key.model_dump(mode="json", by_alias=True, exclude_none=True)
            made.append(maker.make(public_key=public_key, origin=req.effective_origin))
            step("credential", {"index": index})
        doing = "forcing a PIN change"
        force_pin_change(
            device.ctap2(),
            pin,
            min_pin_length=item.pin_request.min_pin_length,
            force=item.pin_request.force_pin_change,
        )
        device.refresh()
        step("configured", {"force_pin_change": bool(device.info.force_pin_change)})
        for cred in made:
            verify_genuine(
                cred.attestation_object, cred.client_data_hash, info_aaguid=device.aaguid, trust=trust
            )
        step("verified", {})
        product_data = _seal(device, item, pin, made, keystore)
    except StationError as exc:
        if written["maybe"] and not isinstance(exc, (DeviceError, DeviceNotFresh, UserPresenceTimeout)):
            exc = DeviceError(exc.message)  # a failure after the first write is the key's (PROTOCOL.md §4)
        raise _named(exc, device, written=written["maybe"]) from None
    except TRANSPORT_ERRORS as exc:
        raise key_fault(exc, label=device.label, written=written["maybe"], doing=doing) from None
    step("sealed", {})
    return ProvisionedItem(product_data, request_ids)


def _named(exc: StationError, device: Device, *, written: bool) -> StationError:
    """`exc` with the key's label and what the technician does with the key (`key_action`)."""
    if exc.code in ("decrypt_failed", "invalid_request", "expired") and not written:
        return exc  # the request's own fault: the key is fine
    if device.label not in exc.message:
        exc.args = (f"{device.label}: {exc.message}",)
    exc.key_touched = written
    if written:
        action = "reset"
    elif exc.key_action:
        action = exc.key_action
    elif NOT_GENUINE in exc.message or exc.code == "device_unsupported":
        action = "set_aside"
    else:
        action = "reset" if exc.code == "device_not_fresh" else "reuse"
    with_action(exc, action)
    if written and NOT_GENUINE in exc.message:
        exc.key_action = "set_aside"  # reset it, then set it aside
    return exc


def _seal(device: Device, item: OpenedItem, pin: Pin, made: list[MadeCredential], keystore: KeyStore) -> dict:
    common = {
        "version": 1,
        "serialNumber": device.identity.serial,
        "firmwareVersion": device.identity.firmware,
        "aaguid": str(uuid.UUID(bytes=bytes(device.info.aaguid))),
        "issuedAt": int(time.time()),
    }
    pin_payload = PinResponse.model_validate(
        {
            **common,
            "requestId": item.pin_request.request_id,
            "requestDigest": request_digest(item.pin_jwe),
            "pin": pin.reveal(),
            "forcePINChange": bool(device.info.force_pin_change),
        }
    )
    pin_jwe = seal_response(pin_payload, response_key=item.pin_request.response_key, keystore=keystore)
    del pin_payload
    cred_jwes = []
    for (req, jwe), cred in zip(item.credential_requests, made):
        payload = CredentialResponse.model_validate(
            {
                **common,
                "requestId": req.request_id,
                "requestDigest": request_digest(jwe),
                "credential": cred.registration,
            }
        )
        cred_jwes.append(seal_response(payload, response_key=req.response_key, keystore=keystore))
    return {
        "serial_number": device.identity.serial,
        "firmware_version": device.identity.firmware,
        "fido_pin_response": pin_jwe,
        "fido_credential_responses": cred_jwes,
    }

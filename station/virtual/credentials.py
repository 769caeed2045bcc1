"""authenticatorMakeCredential, authenticatorGetAssertion and authenticatorGetNextAssertion
(CTAP 2.1 §6.1-6.3), with the credProtect, hmac-secret, minPinLength, credBlob and
largeBlobKey extensions (§12.1-12.5).

Credential IDs are wrapped: AES-256-GCM under the key's credential key, the rpIdHash as
associated data, holding the credential private key (ES256, EdDSA or ES384), its credProtect
level, whether hmac-secret was requested, whether it is discoverable, its credBlob and whether
it has a largeBlobKey. Discoverable credentials are
also listed in the state (RP, user, creation order). The signature counter is global.
"""

from __future__ import annotations

import hmac
import os
import struct
import time
from dataclasses import dataclass, field
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fido2 import cbor
from fido2.cose import ES256, ES384, EdDSA
from fido2.ctap import CtapError
from fido2.ctap2.pin import ClientPin
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import AuthenticatorData

from . import attestation
from .client_pin import PROTOCOLS, check_protocol, verify
from .state import StoredCredential

if TYPE_CHECKING:
    from .authenticator import Request, VirtualAuthenticator

ERR = CtapError.ERR
FLAG = AuthenticatorData.FLAG
PERMISSION = ClientPin.PERMISSION
CREDENTIAL_ID_VERSION = b"\x01"
#: getNextAssertion must follow getAssertion within 30 s (CTAP 2.1 §6.3).
NEXT_ASSERTION_WINDOW = 30.0


class MC:
    """authenticatorMakeCredential parameter keys."""

    CLIENT_DATA_HASH = 0x01
    RP = 0x02
    USER = 0x03
    PUB_KEY_CRED_PARAMS = 0x04
    EXCLUDE_LIST = 0x05
    EXTENSIONS = 0x06
    OPTIONS = 0x07
    PIN_UV_AUTH_PARAM = 0x08
    PIN_UV_AUTH_PROTOCOL = 0x09
    ENTERPRISE_ATTESTATION = 0x0A


class GA:
    """authenticatorGetAssertion parameter keys."""

    RP_ID = 0x01
    CLIENT_DATA_HASH = 0x02
    ALLOW_LIST = 0x03
    EXTENSIONS = 0x04
    OPTIONS = 0x05
    PIN_UV_AUTH_PARAM = 0x06
    PIN_UV_AUTH_PROTOCOL = 0x07


class CredProtect:
    """credProtect levels."""

    UV_OPTIONAL = 1
    UV_OPTIONAL_WITH_CREDENTIAL_ID_LIST = 2
    UV_REQUIRED = 3


@dataclass
class Credential:
    """A credential source recovered from its wrapped ID."""

    credential_id: bytes
    rp_id_hash: bytes
    alg: int
    private: bytes
    cred_protect: int
    hmac_secret: bool
    discoverable: bool
    cred_blob: bytes | None = None
    has_large_blob_key: bool = False
    #: the private key object, once built from `private` (a new credential's is its generated key)
    _key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | None = field(default=None, repr=False)

    def signing_key(self) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
        if self._key is None:
            self._key = self._build_key()
        return self._key

    def _build_key(self) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
        if self.alg == EdDSA.ALGORITHM:
            return ed25519.Ed25519PrivateKey.from_private_bytes(self.private)
        curve = ec.SECP384R1() if self.alg == ES384.ALGORITHM else ec.SECP256R1()
        return ec.derive_private_key(int.from_bytes(self.private, "big"), curve)

    def public_key(self) -> dict:
        """credentialPublicKey as a COSE_Key (RFC 9053 §7.1.1): for EC2 keys the map
        python-fido2's from_cryptography_key builds, its coordinates cut from the uncompressed
        X9.62 point (one library call instead of its byte-by-byte int2bytes)."""
        pub = self.signing_key().public_key()
        if isinstance(pub, ed25519.Ed25519PublicKey):
            return dict(EdDSA.from_cryptography_key(pub))
        point = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        size = (len(point) - 1) // 2
        crv = 2 if self.alg == ES384.ALGORITHM else 1  # COSE curves P-384, P-256
        return {1: 2, 3: self.alg, -1: crv, -2: point[1 : 1 + size], -3: point[1 + size :]}

    def sign(self, message: bytes) -> bytes:
        key = self.signing_key()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        digest = hashes.SHA384() if self.alg == ES384.ALGORITHM else hashes.SHA256()
        return key.sign(message, ec.ECDSA(digest))

    def large_blob_key(self, wrapping_key: bytes) -> bytes | None:
        """The credential's 32-byte largeBlobKey (derived per credential), if it has one."""
        if not self.has_large_blob_key:
            return None
        return hmac.new(wrapping_key, b"largeBlobKey" + self.private, sha256).digest()

    def cred_random(self, wrapping_key: bytes, uv: bool) -> bytes:
        """hmac-secret CredRandomWithUV / CredRandomWithoutUV, derived per credential."""
        label = b"hmac-secret-uv" if uv else b"hmac-secret-no-uv"
        return hmac.new(wrapping_key, label + self.private, sha256).digest()


def new_credential(alg: int, rp_id_hash: bytes, cred_protect: int, hmac_secret: bool, rk: bool) -> Credential:
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if alg == EdDSA.ALGORITHM:
        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    elif alg == ES384.ALGORITHM:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_numbers().private_value.to_bytes(48, "big")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        private = key.private_numbers().private_value.to_bytes(32, "big")
    return Credential(b"", rp_id_hash, alg, private, cred_protect, hmac_secret, rk, _key=key)


def authenticator_data(
    rp_id_hash: bytes, flags: int, counter: int, attested: bytes = b"", extensions: dict | None = None
) -> bytes:
    """authenticatorData (WebAuthn §6.1): rpIdHash || flags || signCount (big-endian uint32)
    || attestedCredentialData || extensions (CBOR), framed as python-fido2's
    AuthenticatorData.create frames it, without parsing the result back."""
    return rp_id_hash + struct.pack(">BI", flags, counter) + attested + (cbor.encode(extensions) if extensions else b"")


def attested_credential_data(aaguid: bytes, credential_id: bytes, public_key: dict) -> bytes:
    """attestedCredentialData (WebAuthn §6.5.2): aaguid || credentialIdLength (uint16) ||
    credentialId || credentialPublicKey (COSE_Key, CBOR)."""
    return aaguid + struct.pack(">H", len(credential_id)) + credential_id + cbor.encode(public_key)


def wrap(wrapping_key: bytes, cred: Credential) -> bytes:
    """The credential ID: version || nonce || AES-GCM(payload, aad=rpIdHash)."""
    nonce = os.urandom(12)
    fields: dict[int, Any] = {
        1: cred.alg, 2: cred.private, 3: cred.cred_protect, 4: cred.hmac_secret, 5: cred.discoverable
    }
    if cred.cred_blob is not None:
        fields[6] = cred.cred_blob
    if cred.has_large_blob_key:
        fields[7] = True
    payload = cbor.encode(fields)
    return CREDENTIAL_ID_VERSION + nonce + AESGCM(wrapping_key).encrypt(nonce, payload, cred.rp_id_hash)


def unwrap(wrapping_key: bytes, rp_id_hash: bytes, credential_id: Any) -> Credential | None:
    """The credential behind `credential_id` if this key made it for this RP, else None."""
    if not isinstance(credential_id, bytes) or len(credential_id) < 30:
        return None
    if credential_id[:1] != CREDENTIAL_ID_VERSION:
        return None
    try:
        payload = AESGCM(wrapping_key).decrypt(credential_id[1:13], credential_id[13:], rp_id_hash)
    except InvalidTag:
        return None
    p = cbor.decode(payload)
    return Credential(credential_id, rp_id_hash, p[1], p[2], p[3], p[4], p[5], p.get(6), p.get(7, False))


@dataclass
class PendingAssertions:
    """What getNextAssertion needs: the remaining credentials of the last getAssertion."""

    rp_id_hash: bytes
    client_data_hash: bytes
    credentials: list[Credential]
    users: dict[bytes, dict]
    flags: FLAG
    hmac_request: tuple[int, bytes, list[bytes]] | None
    started: float
    get_cred_blob: bool = False
    large_blob_key: bool = False


def _require_map(value: Any) -> dict:
    if not isinstance(value, dict):
        raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
    return value


def _options(params: dict, key: int) -> dict[str, bool]:
    options = _require_map(params.get(key, {}))
    if any(not isinstance(v, bool) for v in options.values()):
        raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
    return options


def _descriptors(value: Any) -> list[bytes]:
    """Credential IDs of a list of PublicKeyCredentialDescriptors."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
    ids = []
    for d in value:
        d = _require_map(d)
        if "id" not in d or "type" not in d:
            raise CtapError(ERR.MISSING_PARAMETER)
        if d["type"] == "public-key":
            ids.append(d["id"])
    return ids


class CredentialCommands:
    """makeCredential, getAssertion, getNextAssertion."""

    def __init__(self, key: VirtualAuthenticator) -> None:
        self.key = key
        self.pending: PendingAssertions | None = None
        self._wrapping: tuple[str, bytes] = ("", b"")

    @property
    def wrapping_key(self) -> bytes:
        """The credential key's bytes, decoded again only when it changed (a reset)."""
        encoded = self.key.state.credential_key
        if self._wrapping[0] != encoded:
            self._wrapping = (encoded, websafe_decode(encoded))
        return self._wrapping[1]

    def forget_assertions(self) -> None:
        self.pending = None

    # -- shared steps ---------------------------------------------------------------------
    def _empty_pin_uv_auth_param(self, request: Request) -> None:
        """A zero-length pinUvAuthParam asks the user to pick this key: touch, then
        PIN_INVALID if a PIN is set, else PIN_NOT_SET."""
        request.user_presence()
        raise CtapError(ERR.PIN_INVALID if self.key.state.pin_set else ERR.PIN_NOT_SET)

    def _user_verified(
        self, request: Request, param_key: int, protocol_key: int, message: bytes, permission: int, rp_id: str
    ) -> bool:
        """Check pinUvAuthParam (if present) against the pinUvAuthToken; True if UV done."""
        params = request.params
        param = params.get(param_key)
        if param is None:
            return False
        protocol = check_protocol(self.key, params, protocol_key)
        if not self.key.state.pin_set:
            raise CtapError(ERR.PIN_NOT_SET)
        self.key.pin_uv.check_token(protocol, message, param, permission, rp_id)
        return True

    def _clear_token_after_use(self) -> None:
        """clearUserPresentFlag, clearUserVerifiedFlag, clearPinUvAuthTokenPermissionsExceptLbw
        (2.1: after user interaction in makeCredential / getAssertion)."""
        if self.key.profile.ctap21 and self.key.pin_uv.token is not None:
            self.key.pin_uv.token.clear_permissions_except_lbw()

    # -- authenticatorMakeCredential ------------------------------------------------------
    def make_credential(self, request: Request) -> dict[int, Any]:
        """authenticatorMakeCredential (§6.1.2)."""
        p = request.params
        state, profile = self.key.state, self.key.profile
        if p.get(MC.PIN_UV_AUTH_PARAM) == b"":
            self._empty_pin_uv_auth_param(request)
        for required in (MC.CLIENT_DATA_HASH, MC.RP, MC.USER, MC.PUB_KEY_CRED_PARAMS):
            if required not in p:
                raise CtapError(ERR.MISSING_PARAMETER)
        client_data_hash, rp, user = p[MC.CLIENT_DATA_HASH], _require_map(p[MC.RP]), _require_map(p[MC.USER])
        if not isinstance(client_data_hash, bytes) or "id" not in rp or "id" not in user:
            raise CtapError(ERR.MISSING_PARAMETER if isinstance(client_data_hash, bytes) else ERR.CBOR_UNEXPECTED_TYPE)
        if not isinstance(p[MC.PUB_KEY_CRED_PARAMS], list):
            raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
        alg = self._choose_algorithm(p[MC.PUB_KEY_CRED_PARAMS])
        options = _options(p, MC.OPTIONS)
        rk = options.get("rk", False)
        if options.get("up") is False:
            raise CtapError(ERR.INVALID_OPTION)
        if options.get("uv") and MC.PIN_UV_AUTH_PARAM not in p:
            raise CtapError(ERR.INVALID_OPTION)
        rp_id = rp["id"]
        rp_id_hash = sha256(rp_id.encode()).digest()
        uv = self._user_verified(
            request, MC.PIN_UV_AUTH_PARAM, MC.PIN_UV_AUTH_PROTOCOL, client_data_hash,
            PERMISSION.MAKE_CREDENTIAL, rp_id,
        )
        if not uv and state.pin_set and (rk or state.always_uv or not profile.ctap21):
            raise CtapError(ERR.PUAT_REQUIRED)
        if not uv and state.always_uv:
            raise CtapError(ERR.PIN_NOT_SET)
        enterprise = self._enterprise_attestation(p.get(MC.ENTERPRISE_ATTESTATION))
        for cred_id in _descriptors(p.get(MC.EXCLUDE_LIST)):
            excluded = self.lookup(rp_id_hash, cred_id)
            if excluded is not None and (excluded.cred_protect != CredProtect.UV_REQUIRED or uv):
                request.user_presence()
                raise CtapError(ERR.CREDENTIAL_EXCLUDED)
        extensions = _require_map(p.get(MC.EXTENSIONS, {}))
        cred_protect = extensions.get("credProtect")
        if cred_protect not in (1, 2, 3) or "credProtect" not in profile.extensions:
            cred_protect = None
        hmac_secret = extensions.get("hmac-secret") is True and "hmac-secret" in profile.extensions
        cred_blob, cred_blob_stored = self._cred_blob_input(extensions)
        large_blob_key = self._large_blob_key_input(extensions, rk)
        request.user_presence()
        # §6.1.2: the storage check comes after the test of user presence (a full key still
        # blinks and waits for the touch before answering KEY_STORE_FULL).
        if rk and self.key.remaining_discoverable() <= 0 and not self._replaces(rp_id, user["id"]):
            raise CtapError(ERR.KEY_STORE_FULL)
        self._clear_token_after_use()

        cred = new_credential(alg, rp_id_hash, cred_protect or CredProtect.UV_OPTIONAL, hmac_secret, rk)
        cred.cred_blob = cred_blob if cred_blob_stored else None
        cred.has_large_blob_key = large_blob_key
        cred.credential_id = wrap(self.wrapping_key, cred)
        if rk:
            self._store(cred, rp, user)
        ext_out: dict[str, Any] = {}
        if cred_protect is not None:
            ext_out["credProtect"] = cred_protect
        if hmac_secret:
            ext_out["hmac-secret"] = True
        if cred_blob is not None:
            ext_out["credBlob"] = cred_blob_stored
        if extensions.get("minPinLength") is True and "minPinLength" in profile.extensions:
            if rp_id in state.min_pin_length_rpids:
                ext_out["minPinLength"] = state.min_pin_length
        flags = FLAG.UP | FLAG.AT | (FLAG.UV if uv else 0) | (FLAG.ED if ext_out else 0)
        auth_data = authenticator_data(
            rp_id_hash,
            flags,
            self.key.next_counter(),
            attested_credential_data(self.key.aaguid, cred.credential_id, cred.public_key()),
            ext_out or None,
        )
        if rk:
            self.key.save()  # the stored credential is durable before the answer
        statement = attestation.packed_statement(
            self.key.attestation_key, self.key.attestation_cert_der, auth_data, client_data_hash
        )
        response: dict[int, Any] = {1: "packed", 2: auth_data, 3: statement}
        if enterprise:
            response[4] = True
        if large_blob_key:
            response[5] = cred.large_blob_key(self.wrapping_key)
        return response

    def _cred_blob_input(self, extensions: dict) -> tuple[bytes | None, bool]:
        """credBlob (§12.2): (the blob, whether it is stored: not if longer than
        maxCredBlobLength); (None, False) if absent."""
        if "credBlob" not in extensions or "credBlob" not in self.key.profile.extensions:
            return None, False
        blob = extensions["credBlob"]
        if not isinstance(blob, bytes):
            raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
        return blob, len(blob) <= self.key.profile.max_cred_blob_length

    def _large_blob_key_input(self, extensions: dict, rk: bool) -> bool:
        """largeBlobKey (§12.3): only `true`, only for a discoverable credential."""
        if "largeBlobKey" not in extensions or "largeBlobKey" not in self.key.profile.extensions:
            return False
        if extensions["largeBlobKey"] is not True or not rk:
            raise CtapError(ERR.INVALID_OPTION)
        return True

    def _choose_algorithm(self, params: list) -> int:
        """The first pubKeyCredParams entry of type public-key with an algorithm we have."""
        for entry in params:
            entry = _require_map(entry)
            if "alg" not in entry or "type" not in entry:
                raise CtapError(ERR.MISSING_PARAMETER)
            if entry["type"] == "public-key" and entry["alg"] in self.key.profile.algorithms:
                return entry["alg"]
        raise CtapError(ERR.UNSUPPORTED_ALGORITHM)

    def _enterprise_attestation(self, requested: Any) -> bool:
        """enterpriseAttestation: INVALID_PARAMETER unless ep is enabled; 1 or 2 only.
        Mode 1 (vendor-facilitated) applies to a pre-configured RP list, which is empty here."""
        if requested is None:
            return False
        if not (self.key.profile.enterprise_attestation and self.key.state.enterprise_attestation):
            raise CtapError(ERR.INVALID_PARAMETER)
        if requested not in (1, 2):
            raise CtapError(ERR.INVALID_OPTION)
        return requested == 2

    def _replaces(self, rp_id: str, user_id: bytes) -> bool:
        return any(
            c.rp_id == rp_id and websafe_decode(c.user["id"]) == user_id for c in self.key.state.credentials
        )

    def _store(self, cred: Credential, rp: dict, user: dict) -> None:
        """Store a discoverable credential, replacing one for the same RP and user.id."""
        state = self.key.state
        state.credentials = [
            c for c in state.credentials
            if not (c.rp_id == rp["id"] and websafe_decode(c.user["id"]) == user["id"])
        ]
        state.created_count += 1
        stored_user: dict[str, Any] = {"id": websafe_encode(user["id"])}
        for k in ("name", "displayName"):
            if isinstance(user.get(k), str):
                stored_user[k] = user[k]
        state.credentials.append(
            StoredCredential(
                credential_id=websafe_encode(cred.credential_id),
                rp_id=rp["id"],
                rp_name=rp.get("name") if isinstance(rp.get("name"), str) else None,
                user=stored_user,
                created=state.created_count,
            )
        )

    def lookup(self, rp_id_hash: bytes, cred_id: bytes) -> Credential | None:
        """A credential of this key for this RP; a discoverable one must still be stored."""
        cred = unwrap(self.wrapping_key, rp_id_hash, cred_id)
        if cred is not None and cred.discoverable and self.stored(cred_id) is None:
            return None
        return cred

    def stored(self, cred_id: bytes) -> StoredCredential | None:
        encoded = websafe_encode(cred_id)
        return next((c for c in self.key.state.credentials if c.credential_id == encoded), None)

    # -- authenticatorGetAssertion --------------------------------------------------------
    def get_assertion(self, request: Request) -> dict[int, Any]:
        """authenticatorGetAssertion (§6.2.2)."""
        p = request.params
        state = self.key.state
        if p.get(GA.PIN_UV_AUTH_PARAM) == b"":
            self._empty_pin_uv_auth_param(request)
        if GA.RP_ID not in p or GA.CLIENT_DATA_HASH not in p:
            raise CtapError(ERR.MISSING_PARAMETER)
        rp_id, client_data_hash = p[GA.RP_ID], p[GA.CLIENT_DATA_HASH]
        if not isinstance(rp_id, str) or not isinstance(client_data_hash, bytes):
            raise CtapError(ERR.CBOR_UNEXPECTED_TYPE)
        options = _options(p, GA.OPTIONS)
        if "rk" in options:
            raise CtapError(ERR.UNSUPPORTED_OPTION)
        if options.get("uv") and GA.PIN_UV_AUTH_PARAM not in p:
            raise CtapError(ERR.INVALID_OPTION)
        up = options.get("up", True)
        uv = self._user_verified(
            request, GA.PIN_UV_AUTH_PARAM, GA.PIN_UV_AUTH_PROTOCOL, client_data_hash,
            PERMISSION.GET_ASSERTION, rp_id,
        )
        if not uv and state.always_uv:
            raise CtapError(ERR.PUAT_REQUIRED if state.pin_set else ERR.PIN_NOT_SET)
        rp_id_hash = sha256(rp_id.encode()).digest()
        allow = _descriptors(p.get(GA.ALLOW_LIST))
        creds, users = self._locate(rp_id, rp_id_hash, allow, uv)
        if not creds:
            raise CtapError(ERR.NO_CREDENTIALS)
        extensions = _require_map(p.get(GA.EXTENSIONS, {}))
        hmac_request = self._hmac_secret_request(extensions)
        supported = self.key.profile.extensions
        get_cred_blob = extensions.get("credBlob") is True and "credBlob" in supported  # §12.2: input true
        large_blob_key = "largeBlobKey" in extensions and "largeBlobKey" in supported
        if large_blob_key and extensions["largeBlobKey"] is not True:
            raise CtapError(ERR.INVALID_OPTION)
        if up:
            request.user_presence()
            self._clear_token_after_use()
        flags = (FLAG.UP if up else 0) | (FLAG.UV if uv else 0)
        pending = PendingAssertions(
            rp_id_hash, client_data_hash, creds, users, FLAG(flags), hmac_request, time.monotonic(),
            get_cred_blob, large_blob_key,
        )
        total = len(creds)
        response = self._assertion(pending, with_user=not allow, uv=uv)
        if not allow and total > 1:
            response[5] = total
            self.pending = pending
        return response

    def get_next_assertion(self, request: Request) -> dict[int, Any]:
        """authenticatorGetNextAssertion (§6.3): the next credential of the last getAssertion."""
        pending = self.pending
        if pending is None or not pending.credentials:
            raise CtapError(ERR.NOT_ALLOWED)
        if time.monotonic() - pending.started > NEXT_ASSERTION_WINDOW:
            self.pending = None
            raise CtapError(ERR.NOT_ALLOWED)
        pending.started = time.monotonic()
        return self._assertion(pending, with_user=True, uv=bool(pending.flags & FLAG.UV))

    def _locate(
        self, rp_id: str, rp_id_hash: bytes, allow: list[bytes], uv: bool
    ) -> tuple[list[Credential], dict[bytes, dict]]:
        """Applicable credentials: from the allowList, else the discoverable ones for rpId
        (most recent first); credProtect decides which are usable without UV."""
        users: dict[bytes, dict] = {}
        creds: list[Credential] = []
        if allow:
            for cred_id in allow:
                cred = self.lookup(rp_id_hash, cred_id)
                if cred is not None and (uv or cred.cred_protect != CredProtect.UV_REQUIRED):
                    creds.append(cred)
                    stored = self.stored(cred_id)
                    if stored is not None:
                        users[cred_id] = stored.user_entity()
            return creds[:1], users
        stored_creds = sorted(
            (c for c in self.key.state.credentials if c.rp_id == rp_id), key=lambda c: -c.created
        )
        for stored in stored_creds:
            cred = unwrap(self.wrapping_key, rp_id_hash, stored.id_bytes)
            if cred is not None and (uv or cred.cred_protect == CredProtect.UV_OPTIONAL):
                creds.append(cred)
                users[stored.id_bytes] = stored.user_entity()
        return creds, users

    def _hmac_secret_request(self, extensions: dict) -> tuple[int, bytes, list[bytes]] | None:
        """hmac-secret input {1: keyAgreement, 2: saltEnc, 3: saltAuth, 4: pinUvAuthProtocol}
        → (protocol, sharedSecret, salts); saltAuth must verify, salts be 32 or 64 bytes."""
        if "hmac-secret" not in extensions or "hmac-secret" not in self.key.profile.extensions:
            return None
        ext = _require_map(extensions["hmac-secret"])
        if any(k not in ext for k in (1, 2, 3)):
            raise CtapError(ERR.MISSING_PARAMETER)
        protocol = ext.get(4, 1)
        if protocol not in self.key.profile.pin_uv_protocols:
            raise CtapError(ERR.INVALID_PARAMETER)
        shared = self.key.pin_uv.decapsulate(protocol, ext[1])
        if not isinstance(ext[2], bytes) or not verify(protocol, shared, ext[2], ext[3]):
            raise CtapError(ERR.PIN_AUTH_INVALID)
        try:
            salts = PROTOCOLS[protocol]().decrypt(shared, ext[2])
        except ValueError:
            raise CtapError(ERR.INVALID_LENGTH) from None
        if len(salts) not in (32, 64):
            raise CtapError(ERR.INVALID_LENGTH)
        return protocol, shared, [salts[i : i + 32] for i in range(0, len(salts), 32)]

    def _assertion(self, pending: PendingAssertions, *, with_user: bool, uv: bool) -> dict[int, Any]:
        """Sign authenticatorData || clientDataHash with the next pending credential."""
        cred = pending.credentials.pop(0)
        ext_out: dict[str, Any] = {}
        if pending.hmac_request is not None and cred.hmac_secret:
            protocol, shared, salts = pending.hmac_request
            cred_random = cred.cred_random(self.wrapping_key, uv)
            output = b"".join(hmac.new(cred_random, salt, sha256).digest() for salt in salts)
            ext_out["hmac-secret"] = PROTOCOLS[protocol]().encrypt(shared, output)
        if pending.get_cred_blob:
            ext_out["credBlob"] = cred.cred_blob or b""
        flags = pending.flags | (FLAG.ED if ext_out else 0)
        auth_data = authenticator_data(pending.rp_id_hash, flags, self.key.next_counter(), b"", ext_out or None)
        response: dict[int, Any] = {
            1: {"type": "public-key", "id": cred.credential_id},
            2: auth_data,
            3: cred.sign(auth_data + pending.client_data_hash),
        }
        user = pending.users.get(cred.credential_id)
        if user is not None and cred.discoverable:
            response[4] = user if (uv and with_user) else {"id": user["id"]}
        if pending.large_blob_key and cred.has_large_blob_key:
            response[7] = cred.large_blob_key(self.wrapping_key)
        return response

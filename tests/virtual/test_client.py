"""python-fido2's high-level Fido2Client over transport "direct"."""

from __future__ import annotations

import os

import pytest
from fido2.client import ClientError, DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap2.extensions import CredProtectExtension, HmacSecretExtension
from fido2.utils import websafe_decode
from options import graph_creation_options

PROFILES = ["yubikey-5-nfc-5.7", "yubikey-5-nfc-5.4", "crescendo-4000", "crescendo-key"]


class Pin(UserInteraction):
    def request_pin(self, permissions, rp_id):
        return "123456"


def client(device, origin="https://example.com") -> Fido2Client:
    return Fido2Client(
        device,
        DefaultClientDataCollector(origin),
        Pin(),
        extensions=[HmacSecretExtension(allow_hmac_secret=True), CredProtectExtension()],
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_roundtrip_direct(new_key, profile, fido2_roundtrip, check_fido2_roundtrip):
    """Shared round trip: PIN, Graph options, credProtect 3 + prf, two sign-ins."""
    key = new_key(profile)
    check_fido2_roundtrip(fido2_roundtrip(key.device))


def test_graph_options_with_pin_and_hmac_secret(key):
    reg = client(key.device, "https://login.microsoft.com").make_credential(graph_creation_options())
    auth_data = reg.response.attestation_object.auth_data
    assert auth_data.is_user_verified() and auth_data.is_user_present()
    assert auth_data.extensions == {"credProtect": 1, "hmac-secret": True}
    assert reg.client_extension_results["hmacCreateSecret"] is True
    assert key.authenticator.get_info()[0x14] == 99  # one discoverable credential stored

    salt = os.urandom(32)
    request = {
        "rpId": "login.microsoft.com",
        "challenge": os.urandom(32),
        "userVerification": "required",
        "extensions": {"hmacGetSecret": {"salt1": salt}},
    }
    c = client(key.device, "https://login.microsoft.com")
    first = c.get_assertion(request).get_response(0)
    again = c.get_assertion(request).get_response(0)
    out = first.client_extension_results["hmacGetSecret"]["output1"]
    assert len(websafe_decode(out)) == 32 and out == again.client_extension_results["hmacGetSecret"]["output1"]
    assert first.raw_id == auth_data.credential_data.credential_id


def test_exclude_list_honoured(key):
    reg = client(key.device, "https://login.microsoft.com").make_credential(graph_creation_options())
    options = graph_creation_options()
    options["excludeCredentials"] = [{"type": "public-key", "id": reg.raw_id}]
    with pytest.raises(ClientError) as info:
        client(key.device, "https://login.microsoft.com").make_credential(options)
    assert info.value.code == ClientError.ERR.DEVICE_INELIGIBLE


def test_cred_protect_3_needs_uv(key):
    c = client(key.device)
    c.make_credential(
        {
            "rp": {"id": "example.com", "name": "Ex"},
            "user": {"id": b"u1", "name": "a", "displayName": "A"},
            "challenge": os.urandom(32),
            "pubKeyCredParams": [{"type": "public-key", "alg": -8}],
            "authenticatorSelection": {"residentKey": "required", "userVerification": "required"},
            "extensions": {"credentialProtectionPolicy": "userVerificationRequired"},
        }
    )
    with pytest.raises(ClientError):
        c.get_assertion({"rpId": "example.com", "challenge": os.urandom(32), "userVerification": "discouraged"})
    found = c.get_assertion({"rpId": "example.com", "challenge": os.urandom(32), "userVerification": "required"})
    assert found.get_response(0).response.authenticator_data.is_user_verified()

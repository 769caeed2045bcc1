"""The stand-ins under bad input: every endpoint answers a body of the wrong JSON type, a wrong
member type or garbage with the provider's own 4xx error object, never a 500."""

from __future__ import annotations

import httpx
import pytest

BODIES = [None, [], "text", 7, {"userId": 7}, {"type": ["FIDO2"]}, {"displayName": {"a": 1}, "publicKeyCredential": []},
          {"origin": 1, "attestation": {}}, {"origin": "https://example.org", "attestation": "[]"},
          {"origin": "https://example.org", "attestation": '{"type": "public-key", "response": {}}'}]


def _posts(standin_kind, provider):
    s = provider.standin
    if standin_kind == "okta":
        base = f"{provider.url}/webauthn-registration/api/v1"
        headers = {"Authorization": f"SSWS {provider.settings.secret()}"}
        paths = ["/enroll", "/activate", "/send-pin", "/initiate-fulfillment-request",
                 f"/users/{provider.user_id}/enrollments/pae1/mark-error"]
        return base, headers, paths, ("errorCode", "errorSummary")
    token = provider.client.tokens.get()
    headers = {"Authorization": f"Bearer {token}"}
    if standin_kind == "graph":
        return (f"{provider.url}/beta/users/{provider.user_id}/authentication", headers,
                ["/fido2Methods", "/fido2Methods/x", "/other"], ("error",))
    device, _ = provider.client.create_fido2_device(provider.user_id)
    return (f"{provider.url}/v1/environments/{s.environment_id}/users/{provider.user_id}", headers,
            ["/devices", f"/devices/{device['id']}"], ("id", "code", "message"))


@pytest.mark.parametrize("kind", ["okta", "graph", "pingone"])
def test_bad_bodies_get_the_provider_s_error_object(kind, request):
    provider = request.getfixturevalue(kind)
    base, headers, paths, members = _posts(kind, provider)
    content_types = ["application/json", "application/vnd.pingidentity.device.activate+json"]
    for path in paths:
        for body in BODIES:
            for content_type in content_types:
                answer = httpx.post(base + path, content=httpx.Request("POST", "/", json=body).content,
                                    headers={**headers, "Content-Type": content_type})
                assert 400 <= answer.status_code < 500, (path, body, answer.status_code, answer.text)
                assert all(m in answer.json() for m in members), answer.text
        garbage = httpx.post(base + path, content=b"\xff\xfe{", headers={**headers, "Content-Type": "application/json"})
        assert 400 <= garbage.status_code < 500, (path, garbage.text)

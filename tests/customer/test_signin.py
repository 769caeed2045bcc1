"""Sign-in as the end user: forced PIN change, then an assertion the relying party verifies;
and every way a sign-in fails."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.webauthn import AttestedCredentialData

from fido2.utils import websafe_encode

from station.customer.orders import seal_item
from station.customer.signin import KeyRefused, SignInFailed, sign_in
from station.customer.verify import MailedPin, StoredCredential, customer_verifier, open_item_responses, register_credential
from station.virtual import open_virtual

DOMAIN = "acme.okta.com"
USER = "00u9z8y7x6w5v4u3t2s1"
NEW_PIN = MailedPin("736192")


class _Tenant:
    """A relying party kept in this process: the credentials it registered."""

    origin = f"https://{DOMAIN}"

    def __init__(self) -> None:
        self.stored: list[StoredCredential] = []

    def credentials(self, user):
        return list(self.stored)


@pytest.fixture
def activated(factory):
    """USER's key programmed by the factory and registered at a local relying party →
    (tenant, opened responses, open key)."""
    options = {"rp": {"id": DOMAIN, "name": DOMAIN}, "user": {"id": websafe_encode(USER.encode()), "name": "rroe",
               "displayName": "Richard Roe"}, "challenge": websafe_encode(b"c" * 32),
               "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
               "authenticatorSelection": {"residentKey": "required", "userVerification": "required"},
               "attestation": "direct"}
    sealed = seal_item(transport_jwks=factory.jwks("transport"), options=[options], min_pin_length=6)
    product, statefile = factory.program(sealed.pin_request_jwe, sealed.credential_request_jwes)
    opened = open_item_responses(sealed=sealed, pin_response_jwe=product["fido_pin_response"],
                                 credential_response_jwes=product["fido_credential_responses"],
                                 signing_jwks=factory.jwks("signing"))
    registered = register_credential(opened.credentials[0], rp_id=DOMAIN, rp_name=DOMAIN,
                                     challenge=options["challenge"], verifier=customer_verifier(trust_test_ca=True))
    tenant = _Tenant()
    tenant.stored.append(StoredCredential(registered.credential, USER.encode(), "rroe", registered.sign_count,
                                          opened.aaguid))
    key = open_virtual(statefile)
    yield tenant, opened, key
    key.close()


def run(tenant, key, *, pin, new_pin=NEW_PIN, origin=None, credentials=None):
    return sign_in(key, rp_id=DOMAIN, origin=origin or tenant.origin,
                   credentials=tenant.credentials(USER) if credentials is None else credentials,
                   pin=pin, new_pin=new_pin)


def test_the_mailed_pin_stops_working_once_changed(activated):
    tenant, activation, key = activated
    assert run(tenant, key, pin=activation.pin).pin_change_forced
    with pytest.raises(KeyRefused) as refused:
        run(tenant, key, pin=activation.pin)
    assert refused.value.ctap_code.name == "PIN_INVALID"
    assert activation.pin.reveal() not in str(refused.value)


def test_the_mailed_pin_cannot_be_kept(activated):
    tenant, activation, key = activated
    with pytest.raises(SignInFailed, match="refused the PIN change"):
        run(tenant, key, pin=activation.pin, new_pin=activation.pin)


def test_a_new_pin_too_short_for_python_fido2_is_refused_without_echo(activated):
    tenant, activation, key = activated
    with pytest.raises(SignInFailed, match="4 to 63 digits") as failed:
        run(tenant, key, pin=activation.pin, new_pin=MailedPin("957"))
    assert "957" not in str(failed.value)


def test_a_wrong_mailed_pin_is_refused_and_changes_nothing(activated):
    tenant, activation, key = activated
    wrong = MailedPin("000001" if activation.pin.reveal() != "000001" else "000002")
    with pytest.raises(SignInFailed, match="PIN_INVALID") as failed:
        run(tenant, key, pin=wrong)
    # the real PIN still works afterwards: nothing was changed
    assert run(tenant, key, pin=activation.pin).user_verified


def test_no_registered_credential(activated):
    tenant, activation, key = activated
    with pytest.raises(SignInFailed, match="no credential is registered"):
        run(tenant, key, pin=activation.pin, credentials=[])


def test_an_origin_off_the_rp_is_refused_by_the_client(activated):
    tenant, activation, key = activated
    with pytest.raises(SignInFailed, match="client could not sign in"):
        run(tenant, key, pin=activation.pin, origin="https://evil.example")


def test_a_counter_that_does_not_increase_is_refused(activated):
    tenant, activation, key = activated
    [stored] = tenant.credentials(USER)
    stored.sign_count = 10**6
    with pytest.raises(SignInFailed, match="counter did not increase"):
        run(tenant, key, pin=activation.pin)


def test_an_assertion_for_another_user_is_refused(activated):
    tenant, activation, key = activated
    [stored] = tenant.credentials(USER)
    stored.user_id = b"someone-else"
    with pytest.raises(SignInFailed, match="another user"):
        run(tenant, key, pin=activation.pin)


def test_an_assertion_that_does_not_verify_is_refused(activated):
    tenant, activation, key = activated
    [stored] = tenant.credentials(USER)
    other = ES256.from_cryptography_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    forged = dataclasses.replace(
        stored, credential=AttestedCredentialData.create(stored.credential.aaguid, stored.credential_id, other)
    )
    with pytest.raises(SignInFailed, match="Invalid signature"):
        run(tenant, key, pin=activation.pin, credentials=[forged])


def test_an_unreachable_sign_in_page_is_a_sign_in_failure():
    from station.customer.signin import ProviderSignIn

    with pytest.raises(SignInFailed, match="cannot be reached"):
        ProviderSignIn("http://127.0.0.1:9", "00u1").begin()

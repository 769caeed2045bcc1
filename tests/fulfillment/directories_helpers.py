"""Helpers of the directory tests (issue 15): the stand-ins on loopback with an app registered,
a customer's PIN-delivery key, a station that programs the queue with fresh virtual keys
(tests may play the factory with `provision`), and the customer opening its PIN response."""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

from jwcrypto.jwk import JWK

from station.customer.signin import ProviderSignIn, sign_in_with
from station.device.discovery import open_device
from station.masked import Pin
from station.protocol.jose import open_response
from station.provision.genuine import TrustStore
from station.provision.item import provision_item
from station.virtual import new_virtual, open_virtual

PROFILE = "yubikey-5-nfc-5.7"
ADDRESS = {"recipient_company": "Contoso", "recipient_telephone": "+1 555 0100", "street_line1": "1 Main St",
           "city": "Springfield", "region": "IL", "postal_code": "62701", "country_code_2": "US"}
PING_RP = "example.org"


def attestation_roots() -> list[bytes]:
    data = resources.files("station") / "data"
    return [*(p.read_bytes() for p in (data / "roots").iterdir() if p.name.endswith(".pem")),
            (data / "testca" / "ca.pem").read_bytes()]


def pin_delivery_key() -> JWK:
    return JWK.generate(kty="EC", crv="P-384", use="enc", kid="contoso-pin-delivery")


def entra_body(standin, url: str, client_id: str, secret: str, pin_key: JWK, **extra) -> dict:
    return {"kind": "entra", "name": "Contoso", "tenant_id": standin.tenant_id, "client_id": client_id,
            "client_secret": secret, "pin_delivery_key": pin_key.export_public(as_dict=True),
            "default_address": ADDRESS, "endpoints": {"graph_url": url, "login_url": url}, **extra}


def pingone_body(standin, url: str, client_id: str, secret: str, pin_key: JWK, policy_id: str, **extra) -> dict:
    return {"kind": "pingone", "name": "Example", "environment_id": standin.environment_id, "client_id": client_id,
            "client_secret": secret, "pin_delivery_key": pin_key.export_public(as_dict=True),
            "default_address": ADDRESS, "endpoints": {"api_url": url, "auth_url": url},
            "rp_id": PING_RP, "policy_id": policy_id, **extra}


class Station:
    """Plays the station: claims every queued item, programs a fresh virtual key with the
    station's provisioning engine, submits the product data."""

    def __init__(self, store, keystore, folder: Path) -> None:
        from station.fulfillment.store import Role

        self.store, self.keystore, self.folder = store, keystore, folder
        self.principal = store.authenticate(store.create_token(Role.STATION, "bench-1"))
        self.trust = TrustStore.default(trust_test_ca=True)
        self.keys: dict[str, Path] = {}  # shipment id → the programmed key's state file
        self._n = itertools.count()

    def program_all(self) -> int:
        done = 0
        while (claim := self.store.claim(self.principal, 120)) is not None:
            statefile = self.folder / f"key-{next(self._n)}.json"
            new_virtual(statefile, PROFILE).close()
            device = open_device(f"virtual:{statefile}")
            try:
                result = provision_item(device=device, pin_request_jwe=claim.pin_request,
                                        credential_request_jwes=claim.credential_requests,
                                        keystore=self.keystore, trust=self.trust)
            finally:
                device.close()
            self.store.submit(self.principal, claim.item_id, product_data=result.product_data,
                              serial_number=result.product_data.get("serial_number"), generation=claim.generation)
            self.keys[claim.shipment_id] = statefile
            done += 1
        return done


def open_pin(product: dict, pin_key: JWK, pin_request_jwe: str, signing_jwks: dict) -> Pin:
    """The customer's PIN delivery: open the PIN response with the PIN-delivery private key."""
    opened = open_response(product["fido_pin_response"], response_private_key=pin_key,
                           signing_jwks=signing_jwks, request_jwe=pin_request_jwe)
    return Pin(opened.pin)


def sign_in(statefile: Path, url: str, user_id: str, origin: str, pin: Pin):
    device = open_virtual(statefile, transport="direct")
    try:
        return sign_in_with(device, relying_party=ProviderSignIn(url, user_id), origin=origin, pin=pin,
                            new_pin=Pin("73915820"))
    finally:
        device.close()

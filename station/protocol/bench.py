"""Micro-benchmark of the protocol core (not a timed test).

Measures, in one run: `open_request` of a credential request, `seal_response` of a PIN
response, and next to them the raw floor that dominates both, measured with `cryptography`:
one P-384 ECDH exchange and one ES384 signature. `open_request` does one ECDH;
`seal_response` does one ES384 signature plus a key generation and an ECDH for the
ephemeral key of the outer JWE.

Run: `.venv/bin/python -m station.protocol.bench [ITERATIONS]`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto.jwk import JWK

from station.protocol.jose import open_request, request_digest, seal_request, seal_response
from station.protocol.keys import KeyStore
from station.protocol.messages import PinResponse

_SAMPLE_OPTIONS = {
    "rp": {"id": "login.microsoft.com", "name": "Microsoft"},
    "user": {"id": "dXNlci1oYW5kbGU", "name": "bench@contoso.com", "displayName": "Bench"},
    "challenge": "Y2hhbGxlbmdlLWNoYWxsZW5nZS0zMg",
    "pubKeyCredParams": [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -257}],
    "extensions": {
        "hmacCreateSecret": True,
        "credentialProtectionPolicy": "userVerificationOptional",
    },
}


def _mean_us(operation: Callable[[], object], iterations: int) -> float:
    """Mean CPU time (this thread) of `operation` in microseconds, after one warm-up call: on a
    shared machine wall time counts the other processes' work too."""
    operation()
    start = time.thread_time()
    for _ in range(iterations):
        operation()
    return (time.thread_time() - start) / iterations * 1e6


def bench_protocol(iterations: int = 200) -> dict:
    """The cost of open_request and seal_response next to raw P-384 ECDH and ES384 signing.

    Returns `{"iterations", "open_request_us", "seal_response_us", "p384_ecdh_us",
    "es384_sign_us", "open_request_over_ecdh", "seal_response_over_floor"}` where the floor of
    `seal_response` is one signature + one key generation + one ECDH.
    """
    with tempfile.TemporaryDirectory() as folder:
        keystore = KeyStore.init(Path(folder) / "keys")
        transport = keystore.jwks("transport")["keys"][0]
        response_key = JWK.generate(kty="EC", crv="P-384", use="enc", kid="bench-response")
        public_response_key = json.loads(response_key.export_public())
        request = {
            "version": 1,
            "requestId": "bench-1",
            "notAfter": "2099-01-01T00:00:00Z",
            "responseKey": public_response_key,
            "publicKey": _SAMPLE_OPTIONS,
        }
        compact = seal_request(request, transport_jwk=transport, kid=transport["kid"])
        response = PinResponse(
            version=1,
            request_id="bench-1",
            request_digest=request_digest(compact),
            serial_number="12345678",
            firmware_version="5.7.1",
            aaguid="a25342c0-3cdc-4414-8e46-f4807fca511c",
            issued_at=int(datetime.now(timezone.utc).timestamp()),
            pin="482915",
            force_pin_change=True,
        )
        open_us = _mean_us(lambda: open_request(compact, keystore=keystore), iterations)
        seal_us = _mean_us(
            lambda: seal_response(response, response_key=public_response_key, keystore=keystore),
            iterations,
        )

    private = ec.generate_private_key(ec.SECP384R1())
    peer = ec.generate_private_key(ec.SECP384R1()).public_key()
    ecdh_us = _mean_us(lambda: private.exchange(ec.ECDH(), peer), iterations)
    sign_us = _mean_us(lambda: private.sign(b"x" * 512, ec.ECDSA(hashes.SHA384())), iterations)
    keygen_us = _mean_us(lambda: ec.generate_private_key(ec.SECP384R1()), iterations)
    return {
        "iterations": iterations,
        "open_request_us": round(open_us, 1),
        "seal_response_us": round(seal_us, 1),
        "p384_ecdh_us": round(ecdh_us, 1),
        "es384_sign_us": round(sign_us, 1),
        "p384_keygen_us": round(keygen_us, 1),
        "open_request_over_ecdh": round(open_us / ecdh_us, 2),
        "seal_response_over_floor": round(seal_us / (sign_us + keygen_us + ecdh_us), 2),
    }


def format_bench(result: dict) -> str:
    """The figures as a small table for a terminal."""
    rows = [
        ("open_request (credential request)", result["open_request_us"]),
        ("seal_response (PIN response)", result["seal_response_us"]),
        ("raw P-384 ECDH (cryptography)", result["p384_ecdh_us"]),
        ("raw ES384 sign (cryptography)", result["es384_sign_us"]),
        ("raw P-384 key generation", result["p384_keygen_us"]),
    ]
    lines = [f"protocol micro-benchmark, {result['iterations']} iterations, mean CPU per call"]
    lines += [f"  {name:<36} {us:>10.1f} µs" for name, us in rows]
    ratios = [
        ("open_request / ECDH", result["open_request_over_ecdh"]),
        ("seal_response / (sign+keygen+ECDH)", result["seal_response_over_floor"]),
    ]
    lines += [f"  {name:<36} {ratio:>10.2f} x" for name, ratio in ratios]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_bench(bench_protocol(int(sys.argv[1]) if len(sys.argv) > 1 else 200)))

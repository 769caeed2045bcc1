"""jwcrypto against joserfc on exactly our algorithm suite, side by side, in one process.

The three JOSE operations a station makes per item (PROTOCOL.md §2, §3), each with the same keys
and payloads for both libraries, next to the raw `cryptography` floor of the operation:

- open: decrypt a compact JWE, `ECDH-ES+A256KW` + `A256GCM`, P-384 (floor: one ECDH);
- sign: a compact JWS, `ES384` (floor: one ES384 signature);
- seal: encrypt a compact JWE to a P-384 response key (floor: key generation + ECDH).

Each library's output is opened by the other, so both measure interoperable work. Figures are
mean CPU microseconds per call (`time.process_time`), after a warm-up.

    .venv/bin/pip install joserfc          # the optional comparison library (extra `.[bench]`)
    .venv/bin/python scripts/jose_compare.py [--iterations 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS

ALG, ENC, SIG = "ECDH-ES+A256KW", "A256GCM", "ES384"


def _cpu_us(operation: Callable[[], object], iterations: int) -> float:
    operation()
    start = time.process_time()
    for _ in range(iterations):
        operation()
    return (time.process_time() - start) / iterations * 1e6


def compare(iterations: int = 300) -> dict:
    """Mean CPU µs per call of each operation for jwcrypto, joserfc and the raw floor."""
    from joserfc import jwe as rfc_jwe
    from joserfc import jws as rfc_jws
    from joserfc.jwk import ECKey

    transport = JWK.generate(kty="EC", crv="P-384", kid="transport")
    signing = JWK.generate(kty="EC", crv="P-384", kid="signing")
    rfc_transport = ECKey.import_key(transport.export_private(as_dict=True))
    rfc_signing = ECKey.import_key(signing.export_private(as_dict=True))
    rfc_transport_public = ECKey.import_key(transport.export_public(as_dict=True))
    payload = os.urandom(900).hex().encode()  # about the size of a credential request
    header = {"alg": ALG, "enc": ENC, "kid": "transport"}

    def jwcrypto_seal() -> str:
        token = JWE(payload, protected=json.dumps(header))
        token.add_recipient(JWK(**transport.export_public(as_dict=True)))
        return token.serialize(compact=True)

    def joserfc_seal() -> str:
        return rfc_jwe.encrypt_compact(dict(header), payload, rfc_transport_public, algorithms=[ALG, ENC])

    from_jwcrypto, from_joserfc = jwcrypto_seal(), joserfc_seal()

    def jwcrypto_open(compact: str) -> bytes:
        token = JWE()
        token.deserialize(compact, key=transport)
        return token.payload

    def joserfc_open(compact: str) -> bytes:
        return rfc_jwe.decrypt_compact(compact, rfc_transport, algorithms=[ALG, ENC]).plaintext

    assert jwcrypto_open(from_joserfc) == joserfc_open(from_jwcrypto) == payload

    def jwcrypto_sign() -> str:
        token = JWS(payload)
        token.add_signature(signing, alg=SIG, protected=json.dumps({"alg": SIG, "kid": "signing", "typ": "JOSE"}))
        return token.serialize(compact=True)

    def joserfc_sign() -> str:
        return rfc_jws.serialize_compact({"alg": SIG, "kid": "signing", "typ": "JOSE"}, payload, rfc_signing,
                                         algorithms=[SIG])

    check = JWS()
    check.deserialize(joserfc_sign(), key=signing)
    assert rfc_jws.deserialize_compact(jwcrypto_sign(), rfc_signing, algorithms=[SIG]).payload == payload

    raw = ec.generate_private_key(ec.SECP384R1())
    peer = ec.generate_private_key(ec.SECP384R1()).public_key()
    floor = {
        "open": _cpu_us(lambda: raw.exchange(ec.ECDH(), peer), iterations),
        "sign": _cpu_us(lambda: raw.sign(payload, ec.ECDSA(hashes.SHA384())), iterations),
        "seal": _cpu_us(lambda: ec.generate_private_key(ec.SECP384R1()).exchange(ec.ECDH(), peer), iterations),
    }
    figures = {
        "open": {"jwcrypto": _cpu_us(lambda: jwcrypto_open(from_joserfc), iterations),
                 "joserfc": _cpu_us(lambda: joserfc_open(from_jwcrypto), iterations)},
        "sign": {"jwcrypto": _cpu_us(jwcrypto_sign, iterations), "joserfc": _cpu_us(joserfc_sign, iterations)},
        "seal": {"jwcrypto": _cpu_us(jwcrypto_seal, iterations), "joserfc": _cpu_us(joserfc_seal, iterations)},
    }
    for name, row in figures.items():
        row["floor"] = floor[name]
    return {"iterations": iterations, "us_per_call": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = compare(args.iterations)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'operation':<8} {'jwcrypto µs':>12} {'joserfc µs':>12} {'floor µs':>10} {'jwcrypto÷floor':>15} {'joserfc÷floor':>14}")
    for name, row in result["us_per_call"].items():
        print(f"{name:<8} {row['jwcrypto']:>12.0f} {row['joserfc']:>12.0f} {row['floor']:>10.0f} "
              f"{row['jwcrypto'] / row['floor']:>15.2f} {row['joserfc'] / row['floor']:>14.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generate the TEST CA that signs virtual authenticators' attestation certificates.

Run once; the result (fixtures/testca/ca.pem, ca.key.pem) is committed and reached by the
package as station/data/testca (a relative symlink). The CA says TEST in every name and is never
trusted by a real relying party. Refuses to overwrite.

    .venv/bin/python scripts/make_test_ca.py [--out fixtures/testca]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from station.virtual.attestation import key_to_pem, make_ca

CA_NAME = "TEST Virtual Authenticator Root CA - NOT TRUSTED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures" / "testca")
    out = parser.parse_args().out
    cert_path, key_path = out / "ca.pem", out / "ca.key.pem"
    if cert_path.exists() or key_path.exists():
        print(f"refusing to overwrite the test CA in {out}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    cert, key = make_ca(CA_NAME)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key_to_pem(key))
    print(f"wrote {cert_path} and {key_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python-fido2's own device suite (Yubico's tests/device from the PyPI sdist), one full pytest
session per YubiKey profile over the real pcscd against `station virtual serve`.

A client nobody here wrote decides whether the virtual key answers like the real one. The suite
must pass with 0 failures and 0 errors; it may skip only what a real key of the profile lacks.
"""

from __future__ import annotations

import os

import pytest

from independent.fido2_suite import YUBIKEY_PROFILES, run_suite, suite_path

pytestmark = [pytest.mark.pcscd, pytest.mark.slow, pytest.mark.timeout(900)]

#: Skip messages the suite may give, per profile: features a real key of that model lacks.
#: 5.7.1: no previewSign (ARKG), no bio enrollment, no alwaysUv, no persistent PUAT, no
#: thirdPartyPayment, no hmac-secret-mc, no RS256/PS256/ES512/ES256K/ML-DSA; the HID-only test
#: (PC/SC here); enterprise attestation needs --ep-rp-id and an `ep` key (retail keys have none).
_COMMON_SKIPS = {
    "BioEnrollment not supported by authenticator",
    "AlwaysUv not supported",
    "Persistent PUAT not supported",
    "thirdPartyPayment not supported by authenticator",
    "hmac-secret-mc not supported by authenticator",
    "previewSign not supported by authenticator",
    "Device is not a CtapHidDevice",
    "Enterprise Attestation not supported",
}
_ALGORITHM_SKIPS = {f"Algorithm {name} not supported" for name in ("RS256", "PS256", "ES512", "ES256K", "MLDSA44", "MLDSA65", "MLDSA87", "EdDSA448", "Ed448", "RS1", "ESP256", "ESP384", "ESP512", "Ed25519")}
ALLOWED_SKIPS = {
    "yubikey-5-nfc-5.7": _COMMON_SKIPS | _ALGORITHM_SKIPS,
    "yubikey-5-nfc-5.7-pin-complexity": _COMMON_SKIPS | _ALGORITHM_SKIPS,
    # 5.4.3: also no ES384, no largeBlobs/credBlob, no authenticatorConfig, no FIDO_2_1
    # permissions, no updateUserInformation (FIDO_2_1_PRE credentialMgmtPreview only)
    "yubikey-5-nfc-5.4": _COMMON_SKIPS | _ALGORITHM_SKIPS | {
        "Algorithm ES384 not supported",
        "LargeBlobs not supported by authenticator",
        "CredBlob not supported by authenticator",
        "Config not supported by authenticator",
        "Permissions not supported",
        "ClientPin update not supported",  # updateUserInformation needs FIDO_2_1 (python-fido2)
        "CredentialManagement not supported by authenticator",
    },
}


def test_suite_is_unpacked():
    """CI must run the suite, never silently skip it: scripts/setup --test unpacks it."""
    assert suite_path().is_dir(), f"{suite_path()} missing: run scripts/setup --test"
    assert (suite_path() / "conftest.py").exists()


@pytest.mark.parametrize("profile", YUBIKEY_PROFILES)
def test_python_fido2_device_suite(pcscd, tmp_path, profile):
    if not suite_path().is_dir():
        pytest.fail(f"{suite_path()} missing: run scripts/setup --test")
    result = run_suite(profile, tmp_path)
    print(result.summary())
    if os.environ.get("FIDO2_SUITE_OUTPUT"):
        print(result.output)
    assert result.counts["passed"] > 0, result.output[-4000:]
    assert (result.counts["failed"], result.counts["errors"]) == (0, 0), result.summary() + "\n" + result.output[-6000:]
    assert result.returncode == 0, result.output[-4000:]
    unexpected = {reason for reason in result.skips if reason.removeprefix("Skipped: ") not in ALLOWED_SKIPS[profile]}
    assert not unexpected, f"skips for features the real key has: {unexpected}"

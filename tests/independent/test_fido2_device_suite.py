"""python-fido2's own device suite (Yubico's tests/device from the PyPI sdist), one full pytest
session per YubiKey profile over the real pcscd against `station virtual serve`.

A client nobody here wrote decides whether the virtual key answers like the real one. The suite
must pass with 0 failures and 0 errors; it may skip only what a real key of the profile lacks.
FIDO2_SUITE_PROFILES="crescendo-4000 ..." runs it on other profiles (skips then unchecked);
FIDO2_SUITE_OUTPUT=1 prints the suite's own output.
"""

from __future__ import annotations

import os
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from independent.fido2_suite import (
    PRESENCE,
    READER,
    VENV,
    YUBIKEY_PROFILES,
    Controller,
    ServedKey,
    SuiteResult,
    _parse_junit,
    card_present,
    run_suite,
    suite_path,
)

#: Skip messages the suite may give, per profile: features a real key of that model lacks.
#: 5.7.1: no previewSign (ARKG), no bio enrollment, no persistent PUAT, no
#: thirdPartyPayment, no hmac-secret-mc, no RS256/PS256/ES512/ES256K/ML-DSA; the HID-only test
#: (PC/SC here); enterprise attestation needs --ep-rp-id and an `ep` key (retail keys have none).
_COMMON_SKIPS = {
    "BioEnrollment not supported by authenticator",
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


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.device.test_a" name="test_ok"/>
<testcase classname="tests.device.test_a" name="test_bad"><failure message="CtapError: PIN_INVALID">x</failure></testcase>
<testcase classname="tests.device.test_b" name="test_setup"><error message="fixture failed">y</error></testcase>
<testcase classname="tests.device.test_b" name="test_rs256"><skipped message="Algorithm RS256 not supported"/></testcase>
</testsuite></testsuites>"""


def test_junit_counts_failures_errors_and_skips(tmp_path):
    """The harness must be able to report a failing suite (else the CI test could not fail)."""
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    result = SuiteResult("p", 1, 1.0)
    _parse_junit(path, result)
    assert (result.counts["passed"], result.counts["failed"], result.counts["errors"], result.counts["skipped"]) == (1, 1, 1, 1)
    assert result.failures[0] == ("tests.device.test_a::test_bad", "CtapError: PIN_INVALID")
    assert result.skips == {"Algorithm RS256 not supported": 1}


@pytest.mark.pcscd
def test_controller_removal_answers_only_once_pcscd_saw_the_card_leave(pcscd, tmp_path):
    statefile = tmp_path / "key.json"
    subprocess.run([str(VENV / "bin" / "station"), "virtual", "new", "--profile", "yubikey-5-nfc-5.7", str(statefile)],
                   check=True, capture_output=True)
    key = ServedKey(statefile, tmp_path / "serve.log")
    controller = Controller(key)
    threading.Thread(target=controller.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(controller.url + "/", timeout=5) as reply:
            assert reply.status == 200
        urllib.request.urlopen(controller.url + "/usb6/power/on", timeout=30).close()
        assert card_present(READER)
        urllib.request.urlopen(controller.url + "/usb6/power/off", timeout=30).close()
        assert not card_present(READER)  # the answer came only after pcscd saw the card leave
        urllib.request.urlopen(controller.url + "/usb6/power/on", timeout=30).close()
        assert card_present(READER)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(controller.url + "/usb6/explode", timeout=5)
        assert refused.value.code == 404
    finally:
        controller.shutdown()
        controller.server_close()
        key.remove()


def test_suite_is_unpacked():
    """CI must run the suite, never silently skip it: scripts/setup --test unpacks it."""
    assert suite_path().is_dir(), f"{suite_path()} missing: run scripts/setup --test"
    assert (suite_path() / "conftest.py").exists()


@pytest.mark.pcscd
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("profile", os.environ.get("FIDO2_SUITE_PROFILES", "").split() or YUBIKEY_PROFILES)
def test_python_fido2_device_suite(pcscd, tmp_path, profile):
    if not suite_path().is_dir():
        pytest.fail(f"{suite_path()} missing: run scripts/setup --test")
    # One profile with slow touches (keepalives and the suite's touch prompts over PC/SC), the
    # others with instant ones (the suite takes half the time).
    presence = PRESENCE if profile == YUBIKEY_PROFILES[0] else "approve"
    result = run_suite(profile, tmp_path, presence=presence)
    print(result.summary())
    if os.environ.get("FIDO2_SUITE_OUTPUT"):
        print(result.output)
    assert result.counts["passed"] > 0, result.output[-4000:]
    assert (result.counts["failed"], result.counts["errors"]) == (0, 0), result.summary() + "\n" + result.output[-6000:]
    assert result.returncode == 0, result.output[-4000:]
    if presence != "approve":
        assert result.touches > 0  # the key asked for touches (keepalive UPNEEDED) and the suite prompted
    assert result.power_cycles >= 1  # the suite removed and reinserted the card at least once
    allowed = ALLOWED_SKIPS.get(profile)
    if allowed is None:  # a profile picked with FIDO2_SUITE_PROFILES that has no skip list (yet)
        return
    unexpected = {reason for reason in result.skips if reason.removeprefix("Skipped: ") not in allowed}
    assert not unexpected, f"skips for features the real key has: {unexpected}"

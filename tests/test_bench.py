"""`station bench`'s measurements work and measure what they say (no figure is asserted: the
figures are printed by the bench, not timed here)."""

from __future__ import annotations

from station.bench import LATENCY, bench_item_cpu, bench_slots


def test_item_cpu_excludes_the_authenticator_and_reports_the_crypto_floor():
    result = bench_item_cpu(items=2)
    assert result["station_cpu_ms"] > 0 and result["authenticator_cpu_ms"] > 0
    assert result["floor_ms"] == 3 * result["ecdh_ms"] + 3 * (result["keygen_ms"] + result["ecdh_ms"] + result["es384_ms"])
    assert result["ratio"] == result["station_cpu_ms"] / result["floor_ms"]


def test_slots_run_keys_side_by_side_under_the_latency_model():
    result = bench_slots(slots=2)
    modelled = LATENCY  # at least one makeCredential per key is slept through
    assert result["one_key_s"] > 2 * min(modelled.values())
    assert result["ratio"] < 2.0  # two keys in two slots take less than two keys in a row


def test_fido2_type_hints_are_memoized_and_still_correct():
    import typing

    import fido2.utils
    from fido2.ctap2.base import Info

    assert fido2.utils.get_type_hints(Info) is fido2.utils.get_type_hints(Info)
    assert fido2.utils.get_type_hints(Info) == typing.get_type_hints(Info)

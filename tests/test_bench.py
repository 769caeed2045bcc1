"""`station bench`'s measurements work and measure what they say (no figure is asserted: the
figures are printed by the bench, not timed here)."""

from __future__ import annotations

from station.bench import bench_item_cpu


def test_item_cpu_excludes_the_authenticator_and_reports_the_crypto_floor():
    result = bench_item_cpu(items=2)
    assert result["station_cpu_ms"] > 0 and result["authenticator_cpu_ms"] > 0
    assert result["floor_ms"] == 3 * result["ecdh_ms"] + 3 * (result["keygen_ms"] + result["ecdh_ms"] + result["es384_ms"])
    assert result["ratio"] == result["station_cpu_ms"] / result["floor_ms"]


def test_fido2_type_hints_are_memoized_and_still_correct():
    import typing

    import fido2.utils
    from fido2.ctap2.base import Info

    assert fido2.utils.get_type_hints(Info) is fido2.utils.get_type_hints(Info)
    assert fido2.utils.get_type_hints(Info) == typing.get_type_hints(Info)

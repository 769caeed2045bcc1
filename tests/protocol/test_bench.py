"""The micro-benchmark runs and reports every figure (its numbers are not asserted)."""

from station.protocol.bench import bench_protocol, format_bench


def test_bench_protocol_reports_every_figure():
    result = bench_protocol(iterations=2)
    for name in ("open_request_us", "seal_response_us", "p384_ecdh_us", "es384_sign_us", "p384_keygen_us"):
        assert result[name] > 0
    assert result["iterations"] == 2
    assert "open_request" in format_bench(result)

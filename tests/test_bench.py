"""`station bench`'s measurements work and measure what they say (no figure is asserted: the
figures are printed by the bench, not timed here)."""

from __future__ import annotations

from station.bench import bench_item_cpu


def test_item_cpu_excludes_the_authenticator_and_reports_the_crypto_floor():
    result = bench_item_cpu(items=2)
    assert result["station_cpu_ms"] > 0 and result["authenticator_cpu_ms"] > 0
    assert result["p384_floor_ms"] == 3 * result["ecdh_ms"] + 3 * (result["keygen_ms"] + result["ecdh_ms"] + result["es384_ms"])
    # every PIN/UV exchange of the item counted: setPIN, a token per credential, the acfg token
    assert result["pin_exchanges"] >= 4
    assert result["p256_floor_ms"] == result["pin_exchanges"] * (result["p256_keygen_ms"] + result["p256_ecdh_ms"])
    assert result["floor_ms"] == result["p384_floor_ms"] + result["p256_floor_ms"]
    assert result["with_key_cpu_ms"] > result["station_cpu_ms"]
    assert result["ratio"] == result["station_cpu_ms"] / result["floor_ms"]
    # the key's commands are counted (getInfo read again only when the key changed: 4 per item)
    assert result["commands_per_item"]["MAKE_CREDENTIAL"] == 2
    assert result["getinfo_per_item"] == result["commands_per_item"]["GET_INFO"] == 4
    assert list(result["step_cpu_ms"]) == ["device opened", "opened", "preflight", "pin_set", "credential",
                                           "configured", "verified", "sealed"]
    assert all(ms > 0 for ms in result["step_cpu_ms"].values())


def _figures() -> dict:
    """A results document of the shape run_bench returns (the values do not matter here)."""
    cpu = {"station_cpu_ms": 20.0, "with_key_cpu_ms": 30.0, "authenticator_cpu_ms": 10.0, "ecdh_ms": 0.3,
           "keygen_ms": 0.1, "es384_ms": 0.2, "p256_ecdh_ms": 0.05, "p256_keygen_ms": 0.02, "pin_exchanges": 5,
           "p384_floor_ms": 2.7, "p256_floor_ms": 0.35, "floor_ms": 3.05, "ratio": 20 / 3.05, "target_ratio": 1.5}
    cmp = {"runs": 5, "median_ratio": 0.3, "min_ratio": 0.2, "max_ratio": 0.4, "median_claim_submit_per_s": 900,
           "median_pgbench_tps": 3000, "claim_ms_p50": 0.5, "claim_ms_p99": 3.0}
    return {
        "item_cpu": cpu,
        "protocol": {"open_request_us": 500, "seal_response_us": 1000, "p384_ecdh_us": 280, "es384_sign_us": 170},
        "virtual": {"ops_per_second": {"direct": {"makeCredential": 900, "getAssertion": 1000}}},
        "round_trip": {"keys": 12, "seconds": 3.0, "keys_per_second": 4.0},
        "slots": {"slots": 8, "ratio": 1.1, "all_keys_s": 1.9, "one_key_s": 1.7, "target_ratio": 1.05},
        "queue": {"sqlite": {"clients": 16, "claim_submit_per_s": 400, "drained": False, "claim_ms_p50": 1.0,
                             "claim_ms_p99": 9.0},
                  "postgresql": {"16": cmp, "64": dict(cmp, median_ratio=0.6)}},
        "targets": {"item_cpu_ratio": 1.5, "round_trip_keys_per_s": 20.0, "virtual_mc_per_s": 2000.0,
                    "slots_ratio": 1.05, "queue_vs_pgbench": 0.5},
    }


def test_bench_table_in_a_pipe_keeps_each_figure_on_one_line(capsys):
    from station.console import print_bench

    print_bench(_figures())  # pytest's captured stdout is not a terminal: a pipe
    lines = capsys.readouterr().out.splitlines()
    rows = {figure: [line for line in lines if figure in line] for figure in (
        "station CPU per item (1 PIN + 2 credentials), virtual key excluded", "crypto floor, P-256 (PIN/UV protocol)",
        "claim+submit ÷ pgbench, 16 clients (postgresql, median of 5)", "round trip on one core")}
    assert all(len(found) == 1 for found in rows.values()), rows
    assert "5 exchanges" in rows["crypto floor, P-256 (PIN/UV protocol)"][0]
    assert "spread 0.200–0.400" in rows["claim+submit ÷ pgbench, 16 clients (postgresql, median of 5)"][0]
    assert "\x1b[" not in "\n".join(lines)  # no colour codes in a pipe
    assert max(len(line) for line in lines) > 80


def test_bench_table_shows_the_figures_at_the_start_of_issue_18_next_to_the_goals():
    from io import StringIO

    from rich.console import Console

    from station.bench import ISSUE_START
    from station.console import print_bench

    figures = _figures()
    figures["issue_start"] = dict(ISSUE_START)
    figures["item_cpu"].update(commands_per_item={"GET_INFO": 4.0, "MAKE_CREDENTIAL": 2.0}, getinfo_per_item=4.0,
                               step_cpu_ms={"opened": 3.0, "sealed": 5.0})
    out = StringIO()
    print_bench(figures, console=Console(file=out, width=10_000))
    cells = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in out.getvalue().splitlines() if line.count("│") >= 7}
    assert cells["item CPU ÷ full floor"][:4] == ["6.56×", "≤ 1.5×", "no", "6.6×"]
    assert cells["getInfo read per item"][0] == "4" and cells["getInfo read per item"][3] == "8"
    assert "GET_INFO 4, MAKE_CREDENTIAL 2" in cells["getInfo read per item"][4]
    assert cells["station CPU by step (ms, virtual key excluded)"][4] == "opened 3.0, sealed 5.0"
    assert cells["round trip on one core"][3] == "3.7"


def test_bench_table_says_which_goals_are_met():
    from io import StringIO

    from rich.console import Console

    from station.console import print_bench

    out = StringIO()
    print_bench(_figures(), console=Console(file=out, width=10_000))
    verdicts = {line.split("│")[1].strip(): line.split("│")[4].strip() for line in out.getvalue().splitlines()
                if line.count("│") >= 6 and line.split("│")[4].strip() in ("yes", "no")}
    assert verdicts == {"item CPU ÷ full floor": "no", "virtual key over direct": "no", "round trip on one core": "no",
                        "8 slots ÷ one key (modelled latency)": "no",
                        "claim+submit ÷ pgbench, 16 clients (postgresql, median of 5)": "no"}


def test_fido2_type_hints_are_memoized_and_still_correct():
    import typing

    import fido2.utils
    from fido2.ctap2.base import Info

    assert fido2.utils.get_type_hints(Info) is fido2.utils.get_type_hints(Info)
    assert fido2.utils.get_type_hints(Info) == typing.get_type_hints(Info)

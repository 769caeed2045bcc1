"""`station serve` and `station tokens create`, and the queue benchmark."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from station.cli import cli
from station.fulfillment.bench import bench_queue, pgbench_rate
from station.fulfillment.pgcluster import free_port
from station.fulfillment.store import Role, Store

STATION = str(Path(sys.executable).with_name("station"))


def test_tokens_create_prints_a_token_of_that_role(tmp_path):
    url = f"sqlite:///{tmp_path}/station.db"
    result = CliRunner().invoke(cli, ["tokens", "create", "--db", url, "--role", "station", "--name", "bench-1"])
    assert result.exit_code == 0, result.output
    store = Store.open(url)
    principal = store.authenticate(result.output.strip())
    store.close()
    assert (principal.role, principal.name) == (Role.STATION, "bench-1")


def test_tokens_create_defaults_to_station_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/from-env.db"
    monkeypatch.setenv("STATION_DB", url)
    tenant = CliRunner().invoke(cli, ["tenants", "add", "acme"])
    assert tenant.exit_code == 0, tenant.output
    result = CliRunner().invoke(cli, ["tokens", "create", "--role", "customer", "--tenant", tenant.output.split()[0]])
    assert result.exit_code == 0, result.output
    store = Store.open(url)
    assert store.authenticate(result.output.strip()).name == "acme"
    store.close()


def test_tokens_create_refuses_a_bad_db_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["tokens", "create", "--db", "mysql://x/y", "--role", "customer", "--name", "a"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("usage: ")


def test_serve_answers_on_loopback_until_terminated(tmp_path, keystore):
    port = free_port()
    url = f"sqlite:///{tmp_path}/served.db"
    token = Store.open(url).create_token(Role.CUSTOMER, "acme")
    jwks = tmp_path / "published.jwks"
    assert CliRunner().invoke(cli, ["keys", "export-public", "--dir", str(keystore.path), "--out", str(jwks)]).exit_code == 0
    server = subprocess.Popen([STATION, "serve", "--db", url, "--jwks", str(jwks), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                jwks = httpx.get(f"{base}/.well-known/signing-keys.jwks", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()
                time.sleep(0.1)
        assert jwks.json() == keystore.jwks("signing")
        missing = httpx.get(f"{base}/v1/fpr/shipments/00000000-0000-4000-8000-000000000000",
                            headers={"Authorization": f"Bearer {token}"})
        assert missing.status_code == 404
    finally:
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=20)
    log = server.stdout.read().decode()
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert status in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log
    assert "127.0.0.1:" in log and token not in log


def test_serve_without_a_key_store_fails_cleanly(tmp_path):
    done = subprocess.run([STATION, "serve", "--db", f"sqlite:///{tmp_path}/x.db", "--keys", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("key_store: ") and "Traceback" not in done.stderr


def test_bench_queue_measures_claim_and_submit(tmp_path):
    result = bench_queue(f"sqlite:///{tmp_path}/bench.db", clients=2, seconds=0.5, prefill=200)
    assert result["backend"] == "sqlite" and result["clients"] == 2
    assert 0 < result["items"] <= 200 and result["claim_submit_per_s"] > 0


def test_bench_queue_says_when_the_queue_ran_dry(tmp_path):
    result = bench_queue(f"sqlite:///{tmp_path}/bench.db", clients=2, seconds=5, prefill=6)
    assert result["drained"] and result["items"] == 6
    assert result["seconds"] < 5


@pytest.mark.postgres
def test_pgbench_rate_on_the_same_server(pg_cluster):
    url = pg_cluster.create_database("pgbench_test")
    result = bench_queue(url, clients=2, seconds=0.5, prefill=100)
    assert result["backend"] == "postgresql" and result["items"] > 0
    rate = pgbench_rate(url, clients=2, seconds=1)
    assert rate["tps"] > 0
    store = Store.open(url)
    with store.engine.connect() as conn:
        leftovers = conn.exec_driver_sql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgbench_%%'").scalar()
    store.close()
    assert leftovers == 0


def test_bench_queue_reports_claim_latency_percentiles(tmp_path):
    result = bench_queue(f"sqlite:///{tmp_path}/bench.db", clients=2, seconds=0.5, prefill=200)
    assert 0 < result["claim_ms_p50"] <= result["claim_ms_p99"]


def test_percentile_is_nearest_rank():
    from station.fulfillment.bench import _percentile

    samples = [float(n) for n in range(1, 101)]
    assert (_percentile(samples, 0.5), _percentile(samples, 0.99), _percentile(samples, 1.0)) == (50.0, 99.0, 100.0)
    assert _percentile([], 0.5) == 0.0


@pytest.mark.postgres
def test_pgbench_comparison_is_a_median_of_alternating_runs(pg_cluster):
    from station.fulfillment.bench import compare_with_pgbench

    made = []

    def database_for(run: int) -> str:
        made.append(run)
        return pg_cluster.create_database(f"cmp_{run}")

    result = compare_with_pgbench(database_for, pg_cluster.database_url("postgres"), clients=2, seconds=0.5, runs=3)
    assert made == [0, 1, 2] and len(result["pairs"]) == 3
    ratios = sorted(pair["ratio"] for pair in result["pairs"])
    assert result["median_ratio"] == ratios[1]
    assert (result["min_ratio"], result["max_ratio"]) == (ratios[0], ratios[-1])
    for pair in result["pairs"]:
        assert pair["ratio"] == round(pair["queue"]["claim_submit_per_s"] / pair["pgbench"]["tps"], 3)

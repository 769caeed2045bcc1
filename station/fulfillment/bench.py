"""The queue benchmark: claim+submit rate of concurrent station clients against the store,
and for PostgreSQL pgbench's simple-update rate on the same server in the same run.

Each client is a process with its own connection that claims an item and submits a
result until the time is up (a claim and a submit are two committed transactions). The queue is
filled beforehand; `drained` says whether it ran dry before the time was up (the rate is then
a lower bound). Run it as `python -m station.fulfillment.bench [--db URL]`; without `--db` it
measures a temporary SQLite file and a private PostgreSQL cluster (durable settings: fsync on).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from typing import Any

from sqlalchemy.engine import make_url

from station.errors import UsageError
from station.fulfillment.pgcluster import PrivateCluster, postgres_bin_dir
from station.fulfillment.store import NewItem, Role, Store

PRODUCT_DATA = {"serial_number": "1", "firmware_version": "5.7.1",
                "fido_pin_response": "bench.pin.response.jwe.x", "fido_credential_responses": ["bench.cred.x.y.z"]}
ENVELOPE = {"delivery_type": 1, "recipient": {}, "mailing_address": {}}
ITEMS_PER_SHIPMENT = 100


def bench_queue(db_url: str, clients: int = 16, seconds: float = 5, *, prefill: int = 20_000) -> dict[str, Any]:
    """Claim+submit rate of `clients` concurrent station processes for `seconds` on `db_url`
    (an empty or bench-only database: it is filled with `prefill` fake items)."""
    store = Store.open(db_url, pool_size=1)
    try:
        _fill(store, prefill)
        tokens = [store.create_token(Role.STATION, f"bench-{i}") for i in range(clients)]
    finally:
        store.close()
    context = multiprocessing.get_context("fork")
    start = context.Barrier(clients + 1)
    results = context.Queue()
    workers = [context.Process(target=_client, args=(db_url, token, seconds, start, results))
               for token in tokens]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.monotonic()
    done = [results.get() for _ in workers]
    elapsed = time.monotonic() - began
    for worker in workers:
        worker.join()
    store = Store.open(db_url, pool_size=1)
    try:
        drained = store.counts()["queued"] == 0
    finally:
        store.close()
    return {
        "backend": make_url(db_url).get_backend_name(),
        "clients": clients,
        "seconds": round(elapsed, 2),
        "items": sum(done),
        "claim_submit_per_s": round(sum(done) / elapsed, 1),
        "drained": drained,
    }


def _client(db_url: str, token: str, seconds: float, start, results) -> None:
    """One station process: claim and submit until the time is up or the queue is empty."""
    store = Store.open(db_url, pool_size=1)
    station = store.authenticate(token)
    done = 0
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        claim = store.claim(station, 60)
        if claim is None:
            break
        store.submit(station, claim.item_id, product_data=PRODUCT_DATA)
        done += 1
    store.close()
    results.put(done)


def _fill(store: Store, count: int) -> None:
    tag = os.urandom(6).hex()
    for first in range(0, count, ITEMS_PER_SHIPMENT):
        items = [NewItem({}, _fake_jwe(f"{tag}.{n}.p"), [_fake_jwe(f"{tag}.{n}.c")])
                 for n in range(first, min(first + ITEMS_PER_SHIPMENT, count))]
        store.create_shipment("bench", ENVELOPE, items)


def _fake_jwe(label: str) -> str:
    """Five canonical base64url parts: the shape the store takes a request JWE's replay key of."""
    from fido2.utils import websafe_encode

    return ".".join(websafe_encode(f"{label}.{i}".encode()) for i in range(5))


def pgbench_rate(db_url: str, clients: int = 16, seconds: int = 5) -> dict[str, Any]:
    """pgbench's simple-update (`-N`) rate on the server of `db_url` (it creates and then drops
    its pgbench_* tables there)."""
    url = make_url(db_url)
    env = os.environ | {"PGHOST": url.host or "127.0.0.1", "PGPORT": str(url.port or 5432),
                        "PGUSER": url.username or "postgres", "PGDATABASE": url.database or "postgres"}
    if url.password:
        env["PGPASSWORD"] = url.password
    pgbench = str(postgres_bin_dir() / "pgbench")
    _run([pgbench, "-i", "-q"], env)
    try:
        out = _run([pgbench, "-N", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
                    "-T", str(seconds)], env)
    finally:
        _run([pgbench, "-i", "-I", "d"], env)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if match is None:
        raise UsageError("pgbench printed no tps figure")
    return {"clients": clients, "seconds": seconds, "tps": round(float(match.group(1)), 1)}


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UsageError(f"{os.path.basename(command[0])} failed: {done.stderr.strip()}")
    return done.stdout


def bench_all(db_url: str | None = None, clients: int = 16, seconds: int = 5) -> dict[str, Any]:
    """The figures of the closing note: on `db_url`, or on a temporary SQLite file and a
    private PostgreSQL cluster."""
    if db_url is not None:
        result = {"queue": bench_queue(db_url, clients, seconds)}
        if make_url(db_url).get_backend_name() == "postgresql":
            result["pgbench"] = pgbench_rate(db_url, clients, seconds)
        return result
    with tempfile.TemporaryDirectory(prefix="station-bench-") as folder:
        sqlite = bench_queue(f"sqlite:///{folder}/bench.db", clients, seconds)
    with PrivateCluster(durable=True) as cluster:
        postgresql = bench_queue(cluster.create_database("bench"), clients, seconds)
        pgbench = pgbench_rate(cluster.database_url("postgres"), clients, seconds)
    return {"sqlite": sqlite, "postgresql": postgresql, "pgbench": pgbench}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m station.fulfillment.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--db", help="a bench-only database URL (default: temporary SQLite and PostgreSQL)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(bench_all(args.db, args.clients, args.seconds), indent=2))


if __name__ == "__main__":
    main()

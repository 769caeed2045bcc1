"""Before/after figures of the queue from ONE run: claim+submit with N station processes on a
private PostgreSQL cluster (fsync on), the old path and the new path alternately (old, new, new,
old, ...), each on a fresh database, with pgbench's simple-update between pairs for scale.

    .venv/bin/python scripts/queue_ab.py [--clients 16] [--seconds 5] [--pairs 3]

old: the (state, id) and (state, lease_expires) indexes and the claim/submit statements run
through SQLAlchemy's `text()` on an autocommit connection; new: the partial indexes and the same
statements on the pooled DBAPI connection. The client CPU per item is the station processes' own
(user + system), from the children's rusage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from station.fulfillment import bench, store  # noqa: E402
from station.fulfillment.pgcluster import PrivateCluster  # noqa: E402
from station.fulfillment.store import Claim, Store  # noqa: E402

OLD_INDEXES = ["DROP INDEX items_queued", "DROP INDEX items_claimed_leases",
               "CREATE INDEX items_queue ON items (state, id)",
               "CREATE INDEX items_leases ON items (state, lease_expires)"]


def _old_one_row(self, sql, params):
    statement = store._PG_CLAIM_QUEUED if sql == store._PG_CLAIM_QUEUED_SQL else store._PG_SUBMIT_HELD
    with store._unavailable_as_503(), self._autocommit_sa.connect() as conn:
        row = conn.execute(statement, params).first()
    return None if row is None else tuple(row)


def _variant(which: str) -> None:
    """Put the old path in (forked station processes inherit it) or take it out."""
    if which == "old":
        Store._pg_one_row = _old_one_row
    else:
        Store._pg_one_row = NEW_ONE_ROW


NEW_ONE_ROW = Store._pg_one_row
_init = Store.__init__


def _init_with_sa(self, engine, **kw):
    _init(self, engine, **kw)
    self._autocommit_sa = engine.execution_options(isolation_level="AUTOCOMMIT")


Store.__init__ = _init_with_sa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    pgbench = []
    with PrivateCluster(durable=True) as cluster:
        for pair in range(args.pairs):
            for which in (("old", "new") if pair % 2 == 0 else ("new", "old")):
                url = cluster.create_database(f"ab_{which}_{pair}")
                if which == "old":
                    setup = Store.open(url, pool_size=1)
                    with setup.engine.begin() as conn:
                        for statement in OLD_INDEXES:
                            conn.execute(text(statement))
                    setup.close()
                _variant(which)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = bench.bench_queue(url, args.clients, args.seconds)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                result["client_cpu_ms_per_item"] = round(cpu / max(result["items"], 1) * 1000, 3)
                runs[which].append(result)
                print(which, json.dumps(result), flush=True)
            pgbench.append(bench.pgbench_rate(cluster.database_url("postgres"), args.clients, round(args.seconds)))
            print("pgbench", json.dumps(pgbench[-1]), flush=True)
    tps = statistics.median(p["tps"] for p in pgbench)
    for which in ("old", "new"):
        rates = [r["claim_submit_per_s"] for r in runs[which]]
        cpu = [r["client_cpu_ms_per_item"] for r in runs[which]]
        p50 = [r["claim_ms_p50"] for r in runs[which]]
        p99 = [r["claim_ms_p99"] for r in runs[which]]
        print(f"{which}: {statistics.median(rates):.0f} claim+submit/s (min {min(rates):.0f}, max {max(rates):.0f}) "
              f"= {statistics.median(rates) / tps:.3f} of pgbench's median {tps:.0f} tps; client CPU "
              f"{statistics.median(cpu):.2f} ms/item; claim p50 {statistics.median(p50):.1f} ms, p99 {statistics.median(p99):.1f} ms "
              f"({args.pairs} runs, {args.clients} clients)")


if __name__ == "__main__":
    main()

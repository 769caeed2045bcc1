"""Before/after figures of the round trip from ONE run: `station demo`'s flow on one core, the old
path and the new path of a change timed alternately in this process (old, new, new, old, ...),
so a loaded machine slows both alike. Prints the median keys/s and CPU seconds of each with the
spread.

    .venv/bin/python scripts/roundtrip_ab.py CHANGE [--keys 12] [--pairs 5]

CHANGE names a change of issue 18 whose old path this script can put back for a run (see OLD).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@contextlib.contextmanager
def _old_tls():
    """Every httpx client builds its own TLS context, as httpx does by default."""
    import httpx

    import station.customer.http
    import station.fulfillment.client
    import station.tls

    with contextlib.ExitStack() as stack:
        for module in (station.tls, station.customer.http, station.fulfillment.client):
            stack.enter_context(mock.patch.object(module, "client_tls_context", httpx.create_ssl_context))
        yield


@contextlib.contextmanager
def _old_poll():
    """The demo's collector polls each shipment every 50 ms instead of waiting for the station."""
    import station.demo
    from station.customer.flows import collect

    def polling(flow, fulfillment, order, *, timeout, poll_interval=0.2, sleep=None):
        return collect(flow, fulfillment, order, timeout=timeout, poll_interval=0.05)

    with mock.patch.object(station.demo, "collect", polling):
        yield


@contextlib.contextmanager
def _old_loop():
    """uvicorn serves on asyncio's own event loop (uvloop not used)."""
    import uvicorn

    original = uvicorn.Config.__init__

    def config(self, *args, **kw):
        original(self, *args, **kw)
        self.loop = "asyncio"

    with mock.patch.object(uvicorn.Config, "__init__", config):
        yield


#: change name → a context manager that puts the old path back
OLD = {
    "tls": _old_tls,
    "poll": _old_poll,
    "uvloop": _old_loop,
}


def _run(keys: int) -> tuple[float, float]:
    from station.demo import DemoOptions, run_demo

    cpu = time.process_time()
    result = run_demo(DemoOptions(keys=keys))
    cpu = time.process_time() - cpu
    if not result.ok:
        raise SystemExit("the round trip did not verify: " + "; ".join(r.error for r in result.rows if r.error))
    return keys / result.seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("change", choices=sorted(OLD))
    parser.add_argument("--keys", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    from station.demo import DemoOptions, run_demo

    run_demo(DemoOptions(keys=1))  # warm-up
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(previous)})
    runs: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    try:
        for pair in range(args.pairs):
            order = ("old", "new") if pair % 2 == 0 else ("new", "old")
            for which in order:
                with OLD[args.change]() if which == "old" else contextlib.nullcontext():
                    runs[which].append(_run(args.keys))
    finally:
        os.sched_setaffinity(0, previous)
    for which in ("old", "new"):
        rates = [r for r, _ in runs[which]]
        cpus = [c for _, c in runs[which]]
        print(f"{args.change} {which}: {statistics.median(rates):6.2f} keys/s (min {min(rates):.2f}, max {max(rates):.2f}); "
              f"CPU {statistics.median(cpus) / args.keys * 1000:6.1f} ms/key (min {min(cpus) / args.keys * 1000:.1f}, "
              f"max {max(cpus) / args.keys * 1000:.1f}); {args.pairs} runs of {args.keys} keys each")


if __name__ == "__main__":
    main()

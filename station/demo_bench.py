"""The round trip's figures for `station bench`: keys per second of the whole `station demo` flow
on one core, and where its CPU goes.

The breakdown comes from a sampler thread of our own: every `interval` seconds it reads each
thread's CPU clock (`pthread_getcpuclockid`) and its current Python stack
(`sys._current_frames`), and charges the CPU the thread spent since the last sample to what that
stack is doing. A stack is charged to the first of its frames, innermost first, that belongs to
one of the parts below (a library frame — httpx, SQLAlchemy, fido2, jwcrypto, pydantic — counts
for the part that called it), and within the part to the innermost library it is in. A stack
with no frame of ours (uvicorn parsing a request, the event loop) is charged by its thread.

Parts: `customer` (the demo's ordering and collecting: station/customer flows, orders, provider
clients), `service` (the fulfillment service: api, door, store; the uvicorn that serves it),
`station` (the daemon: runner, provision, protocol, device, journal), `virtual key`
(station/virtual), `identity provider` (the stand-ins' own work), `verification` (the checks of
the responses: attestation and JWS/JWE opening, by the customer side or a stand-in), `sign-in`
(the user's sign-in with the key, both sides), `other` (setup, imports, the rest).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from typing import Any

#: (part, path fragments) in the order a frame is tested; the first part with a matching
#: fragment takes the frame.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("virtual key", ("/station/virtual/",)),
    ("sign-in", ("/station/customer/signin.py",)),
    ("verification", ("/station/customer/verify.py",)),
    ("service", ("/station/fulfillment/api.py", "/station/fulfillment/door.py",
                 "/station/fulfillment/store.py", "/station/fulfillment/migrations.py")),
    ("station", ("/station/fulfillment/runner.py", "/station/fulfillment/journal.py",
                 "/station/fulfillment/status.py", "/station/provision/", "/station/protocol/",
                 "/station/device/", "/station/trust/")),
    ("identity provider", ("/station/standins/",)),
    ("customer", ("/station/customer/", "/station/demo.py")),
)

#: stand-in functions that are sign-in or verification rather than the provider's own work
STANDIN_FUNCTIONS = {
    "assertion": "sign-in", "assertion_options": "sign-in", "signin_router": "sign-in",
    "register": "verification", "_open": "verification", "_open_any": "verification",
    "_registration_from_attestation": "verification",
}

#: libraries, for the second level of the breakdown (innermost library frame of the stack)
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("database", ("/sqlalchemy/", "/sqlite3/", "/psycopg/")),
    ("HTTP client", ("/httpx/", "/httpcore/")),
    ("HTTP server", ("/uvicorn/", "/starlette/", "/fastapi/", "/h11/", "/anyio/")),
    ("validation", ("/pydantic/", "/pydantic_core/")),
    ("JOSE", ("/jwcrypto/", "/joserfc/")),
    ("fido2", ("/fido2/",)),
    ("crypto", ("/cryptography/",)),
    ("CBOR", ("/cbor2/",)),
    ("asyncio", ("/asyncio/",)),
    ("json", ("/json/",)),
)

#: a thread's part when none of its frames is ours, by the start of its name
THREAD_PARTS = (("embedded-service", "service"), ("standin", "identity provider"),
                ("station-daemon", "station"), ("slot-", "station"), ("status-report", "station"))


def _part_of(frame, thread_name: str) -> tuple[str, str]:
    """(part, library) of a stack whose innermost frame is `frame`."""
    library = ""
    while frame is not None:
        path = frame.f_code.co_filename
        for part, fragments in PARTS:
            if any(f in path for f in fragments):
                if part == "identity provider":
                    part = STANDIN_FUNCTIONS.get(frame.f_code.co_name, part)
                return part, library or "own code"
        if not library:
            for name, fragments in LIBRARIES:
                if any(f in path for f in fragments):
                    library = name
                    break
        frame = frame.f_back
    for prefix, part in THREAD_PARTS:
        if thread_name.startswith(prefix):
            return part, library or "own code"
    return "other", library or "own code"


class CpuBreakdown:
    """`with CpuBreakdown() as cpu: ...` then `cpu.parts()` → {part: {library: CPU seconds}}."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._spent: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._thread = threading.Thread(target=self._run, name="cpu-breakdown", daemon=True)
        self.samples = 0
        self.own_cpu_s = 0.0

    def __enter__(self) -> CpuBreakdown:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        last: dict[int, float] = {}
        clocks: dict[int, int] = {}
        started = time.thread_time()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                try:
                    clock = clocks.get(ident)
                    if clock is None:
                        clock = clocks[ident] = time.pthread_getcpuclockid(ident)
                    now = time.clock_gettime(clock)
                except OSError:  # the thread ended in between
                    clocks.pop(ident, None)
                    continue
                spent = now - last.get(ident, now)
                last[ident] = now
                if spent > 0:
                    part, library = _part_of(frame, names.get(ident, ""))
                    self._spent[part][library] += spent
            self.samples += 1
        self.own_cpu_s = time.thread_time() - started

    def parts(self) -> dict[str, dict[str, float]]:
        return {part: dict(libraries) for part, libraries in self._spent.items()}


def summarise(parts: dict[str, dict[str, float]], keys: int) -> dict[str, Any]:
    """CPU milliseconds per key of each part (largest first), with its libraries."""
    total = sum(sum(libs.values()) for libs in parts.values()) or 1e-9
    out = {}
    for part, libraries in sorted(parts.items(), key=lambda kv: -sum(kv[1].values())):
        seconds = sum(libraries.values())
        out[part] = {
            "ms_per_key": round(seconds / keys * 1000, 2),
            "share": round(seconds / total, 3),
            "libraries_ms_per_key": {lib: round(s / keys * 1000, 2)
                                     for lib, s in sorted(libraries.items(), key=lambda kv: -kv[1])},
        }
    return {"cpu_ms_per_key": round(total / keys * 1000, 2), "parts": out}


def bench_round_trip(keys: int = 12, *, breakdown: bool = True) -> dict[str, Any]:
    """Keys per second of the whole demo flow (order, program, verify, register, sign in) on one
    core; with `breakdown`, a second run under the CPU sampler says where the time goes."""
    import os

    from station.demo import DemoOptions, run_demo

    run_demo(DemoOptions(keys=1))  # warm-up: imports, first-call caches
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(previous)})
    try:
        cpu_start = time.process_time()
        result = run_demo(DemoOptions(keys=keys))
        cpu = time.process_time() - cpu_start
        _check(result)
        out: dict[str, Any] = {"keys": keys, "seconds": round(result.seconds, 3),
                               "keys_per_second": round(keys / result.seconds, 2),
                               "cpu_s": round(cpu, 3)}
        if breakdown:
            with CpuBreakdown() as sampler:
                sampled = run_demo(DemoOptions(keys=keys))
            _check(sampled)
            out["breakdown"] = summarise(sampler.parts(), keys) | {
                "seconds": round(sampled.seconds, 3), "samples": sampler.samples,
                "sampler_cpu_ms": round(sampler.own_cpu_s * 1000, 1)}
    finally:
        os.sched_setaffinity(0, previous)
    return out


def _check(result) -> None:
    if not result.ok:
        raise RuntimeError("the round trip did not verify: " + "; ".join(r.error for r in result.rows if r.error))

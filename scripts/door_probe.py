#!/usr/bin/env python3
"""Probe a real `station serve` on 127.0.0.1 the way issue 17's review did, bounded in count and
time, and print one line per probe (docs/HARDENING.md, "The door", quotes its output).

    .venv/bin/python scripts/door_probe.py [--connections 40] [--json]

It starts `station serve --jwks` (public keys only, SQLite in a temporary folder, head and body
timeouts of 2 s) as a subprocess, runs the probes, stops it, and exits 1 if a probe's result is
not the expected one. Loopback only; at most `--connections` sockets at once; every wait has a
deadline."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from station.customer.orders import seal_item, shipment_body  # noqa: E402
from station.fulfillment.store import Role, Store  # noqa: E402
from station.protocol.keys import KeyStore  # noqa: E402

OPTIONS = json.loads((ROOT / "fixtures" / "options" / "okta.json").read_text())
MISSING = "/v1/fpr/shipments/00000000-0000-4000-8000-000000000000"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_closed(conn: socket.socket, seconds: float) -> bool:
    conn.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if conn.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    n = max(1, min(args.connections, 200))
    results = []

    def probe(name: str, expected: str, got: str, ok: bool, **extra) -> None:
        results.append({"probe": name, "expected": expected, "got": got, "ok": ok, **extra})

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keystore = KeyStore.init(folder / "keys")
        jwks = folder / "published.jwks"
        jwks.write_text(json.dumps(keystore.export_public()))
        url = f"sqlite:///{folder}/service.db"
        store = Store.open(url)
        tenant = store.create_tenant("acme")
        customer = store.create_token(Role.CUSTOMER, "acme", tenant_id=tenant.id)
        station = store.create_token(Role.STATION, "station-1")
        store.close()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("station")), "serve", "--db", url, "--jwks", str(jwks),
             "--port", str(port), "--head-timeout", "2", "--body-timeout", "2", "--max-connections", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "STATION_CONFIG": "/dev/null"})
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(base + "/.well-known/transport-keys.jwks", timeout=2)
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        print(server.stdout.read().decode(), file=sys.stderr)
                        return 2
                    time.sleep(0.1)
            before = rss_kib(server.pid)

            # 1. unauthenticated uploads: 1 MiB declared and sent, the token never valid
            conns = []
            for _ in range(n):
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
                c.sendall(b"POST /v1/fpr/shipments HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
                try:
                    c.sendall(b"x" * 1048576)
                except OSError:
                    pass
                conns.append(c)
            time.sleep(1.0)
            grown = rss_kib(server.pid) - before
            closed = sum(wait_closed(c, 5) for c in conns)
            for c in conns:
                c.close()
            probe(f"{n} unauthenticated 1 MiB uploads", "all closed, < 8 MiB held",
                  f"{closed} closed, RSS +{grown / 1024:.1f} MiB", closed == n and grown < 8 * 1024)

            # 2. slowloris heads
            conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
            started = time.monotonic()
            for c in conns:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-a: ")
            closed = sum(wait_closed(c, 6) for c in conns)
            took = time.monotonic() - started
            for c in conns:
                c.close()
            probe(f"{n} slowloris heads", "all closed by the head timeout (2 s)",
                  f"{closed} closed in {took:.1f} s", closed == n and took < 8)

            # 3. X-Forwarded-For spoofing against the failed-token limit (10 a minute by default)
            codes = [httpx.get(base + MISSING, headers={"Authorization": f"Bearer guess-{i}",
                                                        "X-Forwarded-For": f"203.0.113.{i}"}, timeout=5).status_code
                     for i in range(30)]
            probe("30 guesses, each with a new X-Forwarded-For", "10 x 401 then 429",
                  f"{codes.count(401)} x 401, {codes.count(429)} x 429", codes.count(401) == 10)

            # 4. the valid station behind the same address
            ok = httpx.post(base + "/v1/station/claim", headers={"Authorization": f"Bearer {station}"},
                            timeout=5).status_code
            probe("a valid station token from the limited address", "204 (never refused)", str(ok), ok == 204)

            # 5. a tenant flooding shipments (default quota 120 a minute)
            body = shipment_body([seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])])
            accepted = refused = 0
            started = time.monotonic()
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {customer}"}, timeout=10) as client:
                for _ in range(150):
                    body = shipment_body([seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])])
                    status = client.post("/v1/fpr/shipments", json=body).status_code
                    accepted += status == 201
                    refused += status == 429
            probe("150 shipments posted at once by one tenant", "120 accepted, the rest 429",
                  f"{accepted} accepted, {refused} x 429 in {time.monotonic() - started:.1f} s",
                  accepted == 120 and refused == 30)

            # 6. a token in the query string
            status = httpx.get(f"{base}{MISSING}?access_token={customer}", timeout=5).status_code
            probe("a token in the query string", "400 token_in_query", str(status), status == 400)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                log = server.communicate(timeout=20)[0].decode()
            except subprocess.TimeoutExpired:
                server.kill()
                log = server.communicate()[0].decode()
        probe("the access log", "no token, real peer", "clean" if customer not in log and "203.0.113." not in log
              else "LEAK", customer not in log and "203.0.113." not in log)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{'ok ' if r['ok'] else 'BAD'}  {r['probe']:<48} expected {r['expected']:<38} got {r['got']}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The door under abuse (issue 17, item 3), on a real uvicorn started as `station serve` starts it
(door.server_config) on 127.0.0.1: slowloris heads and bodies, oversized heads and bodies,
unauthenticated bodies never read, the connection cap, X-Forwarded-For spoofing, a station
restarting with a wrong token, tenant quotas, tokens in query strings, the access log, /docs.

Every load here is bounded: at most 40 connections, every wait has a deadline of a few seconds."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from station.customer.orders import seal_item, shipment_body
from station.fulfillment.api import create_app
from station.fulfillment.door import DoorLimits, TenantQuota, peer_address, server_config
from station.fulfillment.errors import RateLimited
from station.fulfillment.store import Role, Store

from .conftest import ROOT

OPTIONS = json.loads((ROOT / "fixtures" / "options" / "okta.json").read_text())
MISSING = "/v1/fpr/shipments/00000000-0000-4000-8000-000000000000"
FAST = dict(head_timeout=1.0, body_timeout=1.0, keep_alive=1.0)


class Served:
    """create_app + uvicorn (door.server_config) in a thread on a loopback socket bound first."""

    def __init__(self, folder, keystore, limits: DoorLimits, **app_options) -> None:
        import uvicorn

        self.store = Store.open(f"sqlite:///{folder}/door.db")
        self.customer = self.store.create_token(Role.CUSTOMER, "acme")
        self.other_customer = self.store.create_token(Role.CUSTOMER, "globex")
        self.station = self.store.create_token(Role.STATION, "station-1")
        app = create_app(self.store, keystore, purge_interval=None, limits=limits, **app_options)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, limits, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)

    def get(self, path: str, token: str | None = None, **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(self.url + path, headers=headers, timeout=10, **kw)

    def post(self, path: str, token: str | None = None, **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.post(self.url + path, headers=headers, timeout=10, **kw)

    def connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return conn

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        self.store.close()


@pytest.fixture
def serve(tmp_path, keystore) -> Iterator:
    started: list[Served] = []

    def start(**kw) -> Served:
        app_options = {k: kw.pop(k) for k in ("failed_token_limit", "failed_token_window") if k in kw}
        folder = tmp_path / f"door-{len(started)}"
        folder.mkdir()
        served = Served(folder, keystore, DoorLimits(**{**FAST, **kw}), **app_options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def closed_within(conn: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(the server closed the connection within `seconds`, what it sent before)."""
    conn.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


# -- authentication before the body, body limits and timeouts ---------------------------------


def test_an_unauthenticated_body_is_never_read_and_the_connection_closes(serve):
    served = serve()
    for token in (None, "guess"):
        conn = served.connect()
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        conn.sendall(f"POST /v1/fpr/shipments HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                     f"Content-Length: 1000000\r\n\r\n".encode())  # the headers only: no byte of the body
        closed, answer = closed_within(conn, 5)
        conn.close()
        assert status_of(answer) == 401 and b"connection: close" in answer.lower()
        assert closed, "the server kept a connection whose body it will never read"


def test_forty_idle_unauthenticated_uploads_are_all_answered_and_closed(serve):
    served = serve()
    conns = [served.connect() for _ in range(40)]
    try:
        for conn in conns:
            conn.sendall(b"POST /v1/fpr/shipments HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 1024)
        results = [closed_within(conn, 5) for conn in conns]
    finally:
        for conn in conns:
            conn.close()
    assert all(closed and status_of(answer) == 401 for closed, answer in results)


def test_a_body_that_does_not_arrive_in_time_is_408(serve):
    served = serve()
    conn = served.connect()
    conn.sendall(f"POST /v1/fpr/shipments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.customer}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"delivery".encode())
    started = time.monotonic()
    closed, answer = closed_within(conn, 6)
    conn.close()
    assert status_of(answer) == 408 and b'"request_timeout"' in answer
    assert closed and time.monotonic() - started < 5


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_is_413_declared_or_streamed(serve, chunked):
    served = serve(max_body_bytes=4096)
    body = b"x" * 10_000
    if chunked:
        answer = served.post("/v1/fpr/shipments", served.customer, content=iter([body[:5000], body[5000:]]))
    else:
        answer = served.post("/v1/fpr/shipments", served.customer, content=body)
    assert answer.status_code == 413 and answer.json()["error_code"] == "payload_too_large"


def test_an_oversized_head_is_refused(serve):
    served = serve(max_header_bytes=4096)
    answer = served.get(MISSING, served.customer, headers={"X-Filler": "a" * 8000})
    assert answer.status_code == 431 and answer.json()["error_code"] == "header_too_large"
    conn = served.connect()  # a head that keeps coming past the limit: h11 refuses it as it arrives
    conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    for _ in range(3):
        conn.sendall(b"X-Filler: " + b"a" * 3000 + b"\r\n")
    closed, raw = closed_within(conn, 5)
    conn.close()
    assert closed and status_of(raw) == 400
    assert served.get(MISSING, served.customer).status_code == 404  # a normal head still passes


# -- slowloris heads, connection cap ------------------------------------------------------------


def test_a_silent_connection_and_a_slowloris_head_are_closed(serve):
    served = serve(head_timeout=1.0)
    silent, slow = served.connect(), served.connect()
    slow.sendall(b"GET /.well-known/transport-keys.jwks HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed_slow = False
    while time.monotonic() - started < 5:  # one header byte every 0.2 s: never a complete head
        try:
            slow.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            closed_slow = True
            break
        time.sleep(0.2)
        slow.settimeout(0.01)
        try:
            if slow.recv(1024) == b"":
                closed_slow = True
                break
        except TimeoutError:
            pass
    assert closed_slow and time.monotonic() - started < 4
    assert closed_within(silent, 4)[0]
    silent.close()
    slow.close()


def test_past_the_connection_cap_new_requests_get_503_and_recover(serve):
    served = serve(max_connections=5, head_timeout=3.0)
    idle = [served.connect() for _ in range(5)]
    time.sleep(0.2)  # let the server accept them
    try:
        assert served.get("/.well-known/transport-keys.jwks").status_code == 503
    finally:
        for conn in idle:
            conn.close()
    deadline = time.monotonic() + 5
    while served.get("/.well-known/transport-keys.jwks").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


# -- the failed-token limiter on the real peer ---------------------------------------------------


def test_x_forwarded_for_is_not_believed_without_a_trusted_proxy(serve):
    served = serve(failed_token_limit=5)
    codes = [served.get(MISSING, f"guess-{i}", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
             for i in range(8)]
    assert codes == [401] * 5 + [429] * 3  # one peer, whatever it claims
    assert served.get(MISSING, served.customer, headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 404


def test_behind_a_trusted_proxy_the_forwarded_client_is_limited_alone(serve):
    served = serve(failed_token_limit=3, trusted_proxies=("127.0.0.1/32",))
    for i in range(3):
        assert served.get(MISSING, f"g{i}", headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 401
    assert served.get(MISSING, "g", headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 429
    # a client cannot pick its identity by prepending: the right-most untrusted hop counts
    assert served.get(MISSING, "g", headers={"X-Forwarded-For": "192.0.2.1, 198.51.100.7"}).status_code == 429
    assert served.get(MISSING, "g", headers={"X-Forwarded-For": "198.51.100.8"}).status_code == 401
    assert served.get(MISSING, served.customer, headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 404


def test_peer_address_rules():
    scope = {"client": ("127.0.0.1", 5000), "headers": [(b"x-forwarded-for", b"192.0.2.1, 10.0.0.2")]}
    import ipaddress

    nets = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))
    assert peer_address(scope, ()) == ("127.0.0.1", None)
    assert peer_address(scope, nets) == ("192.0.2.1", "127.0.0.1")
    bad = {"client": ("127.0.0.1", 5000), "headers": [(b"x-forwarded-for", b"evil, not-an-ip")]}
    assert peer_address(bad, nets) == ("127.0.0.1", None)


def test_a_station_restarting_with_a_wrong_token_locks_out_no_other_station(serve):
    served = serve(failed_token_limit=5)
    wrong = [served.post("/v1/station/claim", "stale-token-from-an-old-config").status_code for _ in range(20)]
    assert wrong[:5] == [401] * 5 and set(wrong[5:]) == {429}
    for _ in range(5):  # the other stations on the same host keep claiming
        assert served.post("/v1/station/claim", served.station).status_code == 204


# -- quotas ---------------------------------------------------------------------------------------


def _shipment(keystore) -> dict:
    return shipment_body([seal_item(transport_jwks=keystore.jwks("transport"), options=[OPTIONS])])


def test_a_tenant_past_its_shipment_quota_gets_429_and_others_do_not(serve, keystore):
    served = serve(shipments_per_minute=2)
    assert [served.post("/v1/fpr/shipments", served.customer, json=_shipment(keystore)).status_code
            for _ in range(2)] == [201, 201]
    third = served.post("/v1/fpr/shipments", served.customer, json=_shipment(keystore))
    assert third.status_code == 429 and third.json()["error_code"] == "quota_exceeded"
    assert 1 <= int(third.headers["retry-after"]) <= 60
    assert served.post("/v1/fpr/shipments", served.other_customer, json=_shipment(keystore)).status_code == 201


def test_a_tenant_past_its_byte_quota_gets_429(serve, keystore):
    one = len(json.dumps(_shipment(keystore)).encode())
    served = serve(shipment_bytes_per_minute=int(one * 1.5))
    assert served.post("/v1/fpr/shipments", served.customer, json=_shipment(keystore)).status_code == 201
    second = served.post("/v1/fpr/shipments", served.customer, json=_shipment(keystore))
    assert second.status_code == 429 and "bytes" in second.json()["error_message"]


def test_refused_shipments_do_not_use_the_quota(serve, keystore):
    served = serve(shipments_per_minute=1)
    assert served.post("/v1/fpr/shipments", served.customer, json={"delivery_type": 1}).status_code == 400
    assert served.post("/v1/fpr/shipments", served.customer, json=_shipment(keystore)).status_code == 201


def test_the_quota_window_slides():
    now = [0.0]
    quota = TenantQuota(2, 10_000, clock=lambda: now[0])
    quota.record("t", 100)
    now[0] = 30
    quota.record("t", 100)
    with pytest.raises(RateLimited) as limited:
        quota.check("t", 100)
    assert limited.value.retry_after == 30 and limited.value.code == "quota_exceeded"
    now[0] = 61
    quota.check("t", 100)
    with pytest.raises(RateLimited):
        quota.check("t", 20_000)


# -- query tokens, access log, /docs ----------------------------------------------------------------


def test_a_token_in_a_query_string_is_refused_and_never_logged(serve, caplog):
    served = serve()
    caplog.set_level(logging.INFO, logger="station.access")
    for name in ("access_token", "token", "Api_Key"):
        answer = served.get(f"{MISSING}?{name}={served.customer}")
        assert answer.status_code == 400 and answer.json()["error_code"] == "token_in_query"
    answer = served.get(f"{MISSING}?access_token={served.customer}", served.customer)
    assert answer.status_code == 400  # not even together with a header
    assert served.customer not in caplog.text and "access_token" not in caplog.text


def test_the_access_log_has_the_real_peer_and_no_token(serve, caplog):
    served = serve()
    caplog.set_level(logging.INFO, logger="station.access")
    access = logging.getLogger("station.access")
    access.addHandler(caplog.handler)  # `station serve` earlier in this process stops its propagation
    access.disabled = False  # and a logging dictConfig (uvicorn, click tests) may have disabled it

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "station.access"]

    try:
        served.get(MISSING, served.customer, headers={"X-Forwarded-For": "203.0.113.99"})
        served.get(MISSING, "a-wrong-token")
        # the door writes its line once the response is sent, on the server's thread: wait for it
        deadline = time.monotonic() + 10
        while len(lines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        access.removeHandler(caplog.handler)
    assert any(line.startswith("127.0.0.1:") and f'"GET {MISSING}" 404' in line and line.endswith("acme")
               for line in lines()), lines()
    assert any(f'"GET {MISSING}" 401' in line for line in lines())
    assert "203.0.113.99" not in caplog.text
    assert served.customer not in caplog.text and "a-wrong-token" not in caplog.text


def test_docs_are_served_only_behind_the_flag(serve):
    assert serve().get("/docs").status_code == 404
    assert serve(docs=True).get("/docs").status_code == 200


def test_the_door_probe_script_passes_against_a_real_station_serve():
    """scripts/door_probe.py (docs/HARDENING.md quotes its output), with 10 connections."""
    from .conftest import load_script

    assert load_script("door_probe").main(["--connections", "10", "--json"]) == 0


def test_serve_refuses_a_bad_trusted_proxy_in_one_line(tmp_path, keystore):
    from click.testing import CliRunner

    from station.cli import cli

    jwks = tmp_path / "published.jwks"
    jwks.write_text(json.dumps(keystore.export_public()))
    result = CliRunner().invoke(cli, ["serve", "--db", f"sqlite:///{tmp_path}/s.db", "--jwks", str(jwks),
                                      "--trusted-proxy", "not-a-network"], env={"STATION_CONFIG": "/dev/null"})
    assert result.exit_code == 1 and result.output.startswith("usage: --trusted-proxy")
    assert result.output.count("\n") == 1


def test_trusted_proxies_come_from_the_environment_comma_separated(monkeypatch):
    from station.config import load_serve_settings

    monkeypatch.setenv("STATION_SERVE_TRUSTED_PROXY", "10.0.0.0/8, 192.168.1.0/24")
    assert load_serve_settings({}, None).trusted_proxy == ["10.0.0.0/8", "192.168.1.0/24"]
    assert load_serve_settings({"trusted_proxy": ("127.0.0.1/32",)}, None).trusted_proxy == ["127.0.0.1/32"]

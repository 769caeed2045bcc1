"""The fulfillment service in this process: uvicorn in a thread, on a socket bound to loopback
before the thread starts (so the port is known and nothing else can take it). Used by
`station demo`, `station bench` and the test suite."""

from __future__ import annotations

import socket
import threading
import time

from station.errors import StationError
from station.fulfillment.api import create_app
from station.fulfillment.door import DoorLimits, server_config
from station.fulfillment.store import Store
from station.protocol.keys import KeyStore, PublishedKeys


class EmbeddedService:
    """`with EmbeddedService(store, keystore) as service: service.url`"""

    def __init__(self, store: Store, keystore: KeyStore | PublishedKeys, *, host: str = "127.0.0.1", **app_options) -> None:
        import uvicorn

        self.store = store
        limits = app_options.pop("limits", None) or DoorLimits()
        app = create_app(store, keystore, limits=limits, **app_options)
        self.server = uvicorn.Server(server_config(app, limits, log_level="warning"))  # as `station serve`
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="embedded-service", daemon=True)

    def start(self, timeout: float = 10.0) -> EmbeddedService:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise StationError("the embedded fulfillment service did not start", code="service")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> EmbeddedService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

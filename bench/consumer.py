"""Consumer benchmark on the local services: messages/s processed by ``outbox_consume``'s loop
with the inbox (exactly-once) against the same loop without it, the handler doing one INSERT;
and, as the ceiling both are under, the handler alone (no broker, no loop) in transactions of
one batch each.

    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/consumer.py [--quick] [--handler orm|sql]

Two handlers, each measured with and without the inbox: ``orm``, one Django ORM
``Shipment.objects.create()``, and ``sql``, the same row through
``connection.cursor().execute("INSERT ...")``, the cheapest real INSERT a handler can write.
Besides the rate, each run prints the CPU time per message of the consumer process (and of its
main thread, which reads and acknowledges the deliveries) and of the PostgreSQL backend that
the worker thread's connection talks to (read from ``/proc``; "-" when PostgreSQL runs on
another machine): the machine has two cores, so the backend's CPU counts too.

It works in its own database (created and migrated if missing) and on a private exchange with
one queue per variant, all getting the same messages; it deletes them at the end. Rounds
alternate the order of the variants so that none always runs on a warmer machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pika
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from environment import EXCHANGE, REPO_ROOT  # first: puts Django in place

from example_project.shipping.models import Shipment
from outbox import IncomingMessage, conf, integration_handler
from outbox.broker import connection_parameters
from outbox.consumer.loop import ConsumerLoop
from outbox.consumer.processing import Outcome, process_batch
from outbox.consumer.registry import registry
from outbox.consumer.topology import declare, topology_for
from outbox.models import InboxMessage

WITH_INBOX = "bench-inbox"
WITHOUT_INBOX = "bench-plain"
WITH_INBOX_SQL = "bench-inbox-sql"
WITHOUT_INBOX_SQL = "bench-plain-sql"
HANDLER_ALONE = "handler-only"
HANDLER_ALONE_SQL = "handler-only-sql"
EVENT_TYPE = "bench.order_placed"
SETTLE_SECONDS = 3
BODY = b'{"order_id":"2f0c3a6e-1d2b-4c55-9a43-5d7f3b1e9c10","sku":"demo-mug","quantity":2}'


def insert_one(message: IncomingMessage) -> None:
    """The handler: one INSERT, like a consumer that records what it was told."""
    Shipment.objects.create(order_id=uuid.uuid4(), sku="bench", quantity=1)


# The row ``insert_one`` writes, without the ORM: the statement a user would write by hand.
INSERT_SHIPMENT = (
    f"INSERT INTO {Shipment._meta.db_table} (order_id, sku, quantity, status, created_at)"
    " VALUES (%s, %s, %s, %s, now())"
)


def insert_one_sql(message: IncomingMessage) -> None:
    """The same INSERT through a cursor: what the handler costs without Django's ORM."""
    with connection.cursor() as cursor:
        cursor.execute(INSERT_SHIPMENT, [uuid.uuid4(), "bench", 1, "pending"])


#: handler name -> (its function, consumer with the inbox, consumer without, handler-alone label)
HANDLERS = {
    "orm": (insert_one, WITH_INBOX, WITHOUT_INBOX, HANDLER_ALONE),
    "sql": (insert_one_sql, WITH_INBOX_SQL, WITHOUT_INBOX_SQL, HANDLER_ALONE_SQL),
}
for _handler, _with_inbox, _without_inbox, _ in HANDLERS.values():
    integration_handler(EVENT_TYPE, consumer=_with_inbox)(_handler)
    integration_handler(EVENT_TYPE, consumer=_without_inbox)(_handler)
INBOX_CONSUMERS = {consumer for _, consumer, _, _ in HANDLERS.values()}


def record_nothing(consumer: str, messages: Sequence[tuple[str, str]], alias: str) -> set[str]:
    """A batch claim that writes no inbox record: every message counts as new."""
    return {message_id for message_id, _ in messages}


class CountingLoop(ConsumerLoop):
    """The consume loop as ``outbox_consume`` runs it, counting its batches, the worker
    thread's CPU time and its PostgreSQL backend's."""

    batches = 0
    worker_cpu = 0.0
    backend_pid: int | None = None
    backend_ticks_first = backend_ticks_last = 0

    def process_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        started = time.thread_time()
        if self.backend_pid is None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.backend_pid = int(cursor.fetchone()[0])
            self.backend_ticks_first = self.backend_ticks_last = backend_ticks(self.backend_pid)
        self.batches += 1
        try:
            return self.claimed_batch(messages)
        finally:
            # Read after each batch: the backend exits with the connection, when the loop ends.
            self.backend_ticks_last = backend_ticks(self.backend_pid)
            self.worker_cpu += time.thread_time() - started

    def claimed_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        return super().process_batch(messages)


class WithoutInboxLoop(CountingLoop):
    """The same loop (batches, one commit per batch), but with no inbox record: the baseline
    cost of consuming, without exactly-once."""

    def claimed_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        return process_batch(self.spec, messages, claim=record_nothing)


def backend_ticks(pid: int) -> int:
    """CPU clock ticks (user + system) of the PostgreSQL backend ``pid``, or 0 when its
    process is not on this machine."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


@dataclass
class Figures:
    """One run: messages per second and microseconds of CPU per message (the process, its
    main thread, the PostgreSQL backend: None when not measured)."""

    rate: float
    cpu: float
    main_cpu: float | None = None
    backend_cpu: float | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument(
        "--handler",
        choices=sorted(HANDLERS),
        action="append",
        help="measure only this handler (repeatable; default: both)",
    )
    options = parser.parse_args()
    logging.getLogger("outbox").setLevel(logging.WARNING)
    settings.DEBUG = False  # as in production: Django keeps no log of the queries
    messages = 1_000 if options.quick else 10_000
    rounds = 1 if options.quick else 3
    handlers = options.handler or list(HANDLERS)

    subprocess.run([sys.executable, "scripts/create_database.py"], cwd=REPO_ROOT, check=True)
    call_command("migrate", verbosity=0)
    consumers = [c for name in handlers for c in HANDLERS[name][1:3]]
    for consumer in consumers:
        declare(consumer)
    figures: dict[str, list[Figures]] = defaultdict(list)
    batch_size = conf.get_int("CONSUMER_BATCH_SIZE")
    try:
        for number in range(rounds):
            fill_queues(messages, consumers)
            order = list(handlers)
            if number % 2:
                order.reverse()
            for name in order:
                handler, with_inbox, without_inbox, alone = HANDLERS[name]
                pair = [with_inbox, without_inbox]
                if number % 2:
                    pair.reverse()
                for consumer in pair:
                    run_figures, batch = run(consumer, messages)
                    figures[consumer].append(run_figures)
                    print(
                        f"round {number + 1}: {consumer:<16} {run_figures.rate:6.0f} messages/s,"
                        f" {batch:4.1f} per batch; us CPU per message: {run_figures.cpu:4.0f}"
                        f" process ({_shown(run_figures.main_cpu)} main thread),"
                        f" {_shown(run_figures.backend_cpu)} PostgreSQL",
                        flush=True,
                    )
                alone_figures = handler_alone(handler, messages, batch_size)
                figures[alone].append(alone_figures)
                print(
                    f"round {number + 1}: {alone:<16} {alone_figures.rate:6.0f} messages/s,"
                    f"               us CPU per message: {alone_figures.cpu:4.0f} process",
                    flush=True,
                )
    finally:
        clean_up(consumers)
    prefetch = conf.get("CONSUMER_PREFETCH")
    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    print(
        f"\n{messages} messages per run, {rounds} round(s), prefetch {prefetch},"
        f" batch size {batch_size}; load average {load}:"
    )
    print(
        f"  {'':24} {'median':>7} {'best':>7} msg/s   median us CPU per message:"
        " process (main thread), PostgreSQL"
    )
    for name in handlers:
        _, with_inbox, without_inbox, alone = HANDLERS[name]
        for label, consumer in (
            ("with the inbox", with_inbox),
            ("without the inbox", without_inbox),
            ("handler alone", alone),
        ):
            runs = figures[consumer]
            print(
                f"  {name + ' ' + label:24} {statistics.median(r.rate for r in runs):7.0f}"
                f" {max(r.rate for r in runs):7.0f}        "
                f" {statistics.median(r.cpu for r in runs):5.0f}"
                f" ({_median_shown([r.main_cpu for r in runs])}),"
                f" {_median_shown([r.backend_cpu for r in runs])}"
            )
        inbox_rates = [r.rate for r in figures[with_inbox]]
        plain_rates = [r.rate for r in figures[without_inbox]]
        median_ratio = statistics.median(inbox_rates) / statistics.median(plain_rates)
        best_ratio = max(inbox_rates) / max(plain_rates)
        # CPU per message: the inverse ratio, so that above 1 means the inbox costs nothing.
        cpu_ratio = statistics.median(r.cpu for r in figures[without_inbox]) / statistics.median(
            r.cpu for r in figures[with_inbox]
        )
        print(
            f"  {name + ' ratio (inbox)':24} {median_ratio:7.2f} {best_ratio:7.2f}        "
            f" {cpu_ratio:5.2f}"
        )


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _median_shown(values: list[float | None]) -> str:
    known = [value for value in values if value is not None]
    return _shown(statistics.median(known) if known else None)


def fill_queues(count: int, consumers: Sequence[str]) -> None:
    """Publish ``count`` messages, which reach the queues of all ``consumers``, and wait for
    them."""
    broker = pika.BlockingConnection(connection_parameters(client_name="bench/consumer"))
    channel = broker.channel()
    for _ in range(count):
        channel.basic_publish(
            EXCHANGE,
            EVENT_TYPE,
            BODY,
            pika.BasicProperties(
                message_id=str(uuid.uuid4()),
                type=EVENT_TYPE,
                content_type="application/json",
                delivery_mode=2,
            ),
        )
    for consumer in consumers:
        queue = topology_for(registry.get(consumer)).queue
        while (channel.queue_declare(queue, passive=True).method.message_count or 0) < count:
            broker.sleep(0.1)
    broker.close()
    # RabbitMQ is still writing the persistent messages for a moment: without a pause, the
    # variant that runs first in a round pays for it.
    time.sleep(SETTLE_SECONDS)


def run(consumer: str, count: int) -> tuple[Figures, float]:
    """Consume ``count`` messages with ``consumer``; return its figures (CPU time, which a
    loaded machine inflates less than the wall-clock rate) and the average batch size."""
    loop_class = CountingLoop if consumer in INBOX_CONSUMERS else WithoutInboxLoop
    loop = loop_class(registry.get(consumer), max_messages=count)
    started, cpu_started = time.perf_counter(), time.process_time()
    settled = loop.run()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert settled == count, (settled, count)
    ticks = loop.backend_ticks_last - loop.backend_ticks_first
    return Figures(
        rate=count / elapsed,
        cpu=cpu / count * 1e6,
        main_cpu=(cpu - loop.worker_cpu) / count * 1e6,
        backend_cpu=ticks / os.sysconf("SC_CLK_TCK") / count * 1e6 if ticks else None,
    ), count / max(1, loop.batches)


def handler_alone(
    handler: Callable[[IncomingMessage], None], count: int, batch_size: int
) -> Figures:
    """Run ``handler`` ``count`` times, ``batch_size`` calls per transaction, in this thread:
    what the handler costs without the broker and the loop."""
    message = IncomingMessage(
        consumer=WITH_INBOX, message_id="handler-only", event_type=EVENT_TYPE, payload={}
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, count, batch_size):
        with transaction.atomic():
            for _ in range(min(batch_size, count - start)):
                handler(message)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Figures(rate=count / elapsed, cpu=cpu / count * 1e6)


def clean_up(consumers: Sequence[str]) -> None:
    broker = pika.BlockingConnection(connection_parameters(client_name="bench/consumer"))
    channel = broker.channel()
    for consumer in consumers:
        topology = topology_for(registry.get(consumer))
        for queue in {topology.queue, topology.dead_letter_queue} | {
            topology.retry_queue(number) for number in range(1, len(topology.retry_delays_ms) + 1)
        }:
            channel.queue_delete(queue)
    channel.exchange_delete(EXCHANGE)
    broker.close()
    Shipment.objects.filter(sku="bench").delete()
    InboxMessage.objects.filter(consumer__in=consumers).delete()


if __name__ == "__main__":
    main()

"""Consumer benchmark on the local services: messages/s processed by ``outbox_consume``'s loop
with the inbox (exactly-once) against the same loop without it, the handler doing one INSERT;
and, as the ceiling both are under, the handler alone (no broker, no loop) in transactions of
one batch each.

    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/consumer.py [--quick]

It works in its own database (created and migrated if missing) and on a private exchange with
two queues, one per variant, that get the same messages; it deletes them at the end. Rounds
alternate the order of the variants so that neither always runs on a warmer machine.
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
from collections.abc import Sequence

import pika
from django.conf import settings
from django.core.management import call_command
from django.db import transaction
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
HANDLER_ALONE = "handler-only"
EVENT_TYPE = "bench.order_placed"
SETTLE_SECONDS = 3
BODY = b'{"order_id":"2f0c3a6e-1d2b-4c55-9a43-5d7f3b1e9c10","sku":"demo-mug","quantity":2}'


def insert_one(message: IncomingMessage) -> None:
    """The handler: one INSERT, like a consumer that records what it was told."""
    Shipment.objects.create(order_id=uuid.uuid4(), sku="bench", quantity=1)


integration_handler(EVENT_TYPE, consumer=WITH_INBOX)(insert_one)
integration_handler(EVENT_TYPE, consumer=WITHOUT_INBOX)(insert_one)


def record_nothing(consumer: str, messages: Sequence[tuple[str, str]], alias: str) -> set[str]:
    """A batch claim that writes no inbox record: every message counts as new."""
    return {message_id for message_id, _ in messages}


class CountingLoop(ConsumerLoop):
    """The consume loop as ``outbox_consume`` runs it, counting its batches."""

    batches = 0

    def process_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        self.batches += 1
        return self.claimed_batch(messages)

    def claimed_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        return super().process_batch(messages)


class WithoutInboxLoop(CountingLoop):
    """The same loop (batches, one commit per batch), but with no inbox record: the baseline
    cost of consuming, without exactly-once."""

    def claimed_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        return process_batch(self.spec, messages, claim=record_nothing)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    options = parser.parse_args()
    logging.getLogger("outbox").setLevel(logging.WARNING)
    settings.DEBUG = False  # as in production: Django keeps no log of the queries
    messages = 1_000 if options.quick else 10_000
    rounds = 1 if options.quick else 3

    subprocess.run([sys.executable, "scripts/create_database.py"], cwd=REPO_ROOT, check=True)
    call_command("migrate", verbosity=0)
    for consumer in (WITH_INBOX, WITHOUT_INBOX):
        declare(consumer)
    rates: dict[str, list[float]] = {WITH_INBOX: [], WITHOUT_INBOX: [], HANDLER_ALONE: []}
    cpus: dict[str, list[float]] = {WITH_INBOX: [], WITHOUT_INBOX: [], HANDLER_ALONE: []}
    batch_size = conf.get_int("CONSUMER_BATCH_SIZE")
    try:
        for number in range(rounds):
            fill_queues(messages)
            order = [WITH_INBOX, WITHOUT_INBOX]
            if number % 2:
                order.reverse()
            for consumer in order:
                rate, batch, cpu = run(consumer, messages)
                rates[consumer].append(rate)
                cpus[consumer].append(cpu)
                print(
                    f"round {number + 1}: {consumer:<12} {rate:8.0f} messages/s,"
                    f" {batch:5.1f} messages per batch, {cpu:4.0f} us CPU per message",
                    flush=True,
                )
            rate, cpu = handler_alone(messages, batch_size)
            rates[HANDLER_ALONE].append(rate)
            cpus[HANDLER_ALONE].append(cpu)
            print(
                f"round {number + 1}: {HANDLER_ALONE:<12} {rate:8.0f} messages/s,"
                f"                        {cpu:4.0f} us CPU per message",
                flush=True,
            )
    finally:
        clean_up()
    prefetch = conf.get("CONSUMER_PREFETCH")
    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    print(
        f"\n{messages} messages per run, {rounds} round(s), prefetch {prefetch},"
        f" batch size {batch_size}; load average {load}:"
    )
    print(f"  {'':18} {'median':>8} {'best':>8}  messages/s   median us CPU per message")
    for label, consumer in (
        ("with the inbox", WITH_INBOX),
        ("without the inbox", WITHOUT_INBOX),
        ("handler alone", HANDLER_ALONE),
    ):
        print(
            f"  {label:18} {statistics.median(rates[consumer]):8.0f} {max(rates[consumer]):8.0f}"
            f"  {statistics.median(cpus[consumer]):25.0f}"
        )
    median_ratio = statistics.median(rates[WITH_INBOX]) / statistics.median(rates[WITHOUT_INBOX])
    best_ratio = max(rates[WITH_INBOX]) / max(rates[WITHOUT_INBOX])
    # CPU per message: the inverse ratio, so that above 1 means the inbox costs nothing either.
    cpu_ratio = statistics.median(cpus[WITHOUT_INBOX]) / statistics.median(cpus[WITH_INBOX])
    print(f"  {'ratio (inbox)':18} {median_ratio:8.2f} {best_ratio:8.2f}  {cpu_ratio:25.2f}")


def fill_queues(count: int) -> None:
    """Publish ``count`` messages, which reach both consumers' queues, and wait for them."""
    connection = pika.BlockingConnection(connection_parameters(client_name="bench/consumer"))
    channel = connection.channel()
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
    for consumer in (WITH_INBOX, WITHOUT_INBOX):
        queue = topology_for(registry.get(consumer)).queue
        while (channel.queue_declare(queue, passive=True).method.message_count or 0) < count:
            connection.sleep(0.1)
    connection.close()
    # RabbitMQ is still writing the persistent messages for a moment: without a pause, the
    # variant that runs first in a round pays for it.
    time.sleep(SETTLE_SECONDS)


def run(consumer: str, count: int) -> tuple[float, float, float]:
    """Consume ``count`` messages with ``consumer``; return messages per second, the average
    batch size and the consumer process's CPU time per message in microseconds (which a
    loaded machine inflates less than the wall-clock rate)."""
    loop_class = CountingLoop if consumer == WITH_INBOX else WithoutInboxLoop
    loop = loop_class(registry.get(consumer), max_messages=count)
    started, cpu_started = time.perf_counter(), time.process_time()
    settled = loop.run()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert settled == count, (settled, count)
    return count / elapsed, count / max(1, loop.batches), cpu / count * 1e6


def handler_alone(count: int, batch_size: int) -> tuple[float, float]:
    """Run the handler ``count`` times, ``batch_size`` calls per transaction, in this thread:
    what the handler costs without the broker and the loop (messages per second, microseconds
    of CPU per message)."""
    message = IncomingMessage(
        consumer=WITH_INBOX, message_id="handler-only", event_type=EVENT_TYPE, payload={}
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, count, batch_size):
        with transaction.atomic():
            for _ in range(min(batch_size, count - start)):
                insert_one(message)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return count / elapsed, cpu / count * 1e6


def clean_up() -> None:
    connection = pika.BlockingConnection(connection_parameters(client_name="bench/consumer"))
    channel = connection.channel()
    for consumer in (WITH_INBOX, WITHOUT_INBOX):
        topology = topology_for(registry.get(consumer))
        for queue in {topology.queue, topology.dead_letter_queue} | {
            topology.retry_queue(number) for number in range(1, len(topology.retry_delays_ms) + 1)
        }:
            channel.queue_delete(queue)
    channel.exchange_delete(EXCHANGE)
    connection.close()
    Shipment.objects.filter(sku="bench").delete()
    InboxMessage.objects.filter(consumer__in=[WITH_INBOX, WITHOUT_INBOX]).delete()


if __name__ == "__main__":
    main()

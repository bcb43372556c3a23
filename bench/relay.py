"""Relay benchmark on the local services: raw pika limit, relay throughput (worker and Celery
task), end-to-end latency at a steady write rate, and the write overhead of publish().

    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/relay.py [--quick] [--kick-only]

It works in its own database (created and migrated if missing; the outbox table is emptied
between phases) and on a private exchange that it deletes at the end. Each phase prints one
line; the summary compares with the targets of docs/performance.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import redis
from cpuwatch import CpuWatch
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from environment import EXCHANGE, REPO_ROOT  # first: puts Django in place

from example_project.shop.models import Order
from outbox import Message, kick, publish, publish_many
from outbox.broker import connection_parameters
from outbox.models import OutboxMessage
from outbox.relay import Relay

PYTHON = sys.executable
# Rows the steady-state phase drains before it starts the clock (connections opened).
WARM_UP = 1_000
BODY = b'{"order_id":"2f0c3a6e-1d2b-4c55-9a43-5d7f3b1e9c10","sku":"demo-mug","quantity":2}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument(
        "--kick-only",
        action="store_true",
        help="only the phases that judge the kick on commit: the three latencies and the two"
        " write overheads (skips the throughput phases)",
    )
    parser.add_argument("--throughput-only", action="store_true", help="only the throughput phases")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 3, 1 --quick)")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="only the relay's CPU time per message in a steady drain, with the publishing"
        " thread's three savings on and then each off (alternating rounds)",
    )
    parser.add_argument("--write-only", action="store_true", help="only the write overhead")
    options = parser.parse_args()
    logging.getLogger("outbox").setLevel(logging.WARNING)
    settings.DEBUG = False  # as in production; see child_environment()
    # The kick is on by auto here (Celery is configured); only its own phases turn it on, so
    # the other phases measure what they did before it existed.
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": False}
    rows = 5_000 if options.quick else 50_000
    latency_seconds = 5 if options.quick else 20
    overhead_transactions = 300 if options.quick else 2_000

    subprocess.run([PYTHON, "scripts/create_database.py"], cwd=REPO_ROOT, check=True)
    call_command("migrate", verbosity=0)
    queue = declare_queue()
    print(f"database {connection.settings_dict['NAME']}, exchange {EXCHANGE}; {cpu_note()}")
    try:
        if options.cpu:
            cpu_per_message(20_000 if not options.quick else 5_000, queue, options.rounds or 3)
            return
        if options.write_only:
            empty_outbox()
            with kick_on_commit(False):
                ratio = write_overhead(overhead_transactions, cpu=True)
            print(f"write overhead of publish():        {ratio:8.2f}x")
            return
        if not options.kick_only:
            throughput(rows, queue, rounds=options.rounds or (1 if options.quick else 3))
        if options.throughput_only:
            return
        low = latency(["outbox_relay"], latency_seconds, queue)
        print(f"latency, outbox_relay worker:       {format_latency(low)}")
        with kick_on_commit(False):
            beat = latency(["celery-beat"], latency_seconds, queue)
        print(f"latency, Celery beat only (1 s):    {format_latency(beat)}")
        with kick_on_commit(True):
            kicked = latency(["celery-beat"], latency_seconds, queue)
        print(
            f"latency, Celery beat + kick:        {format_latency(kicked)}"
            f"  (p50 {kicked[0] / low[0]:.1f}x, p99 {kicked[2] / low[2]:.1f}x the worker's)"
        )
        print(f"  kicks sent: {kick.kicker().sent} for {latency_seconds * 200} commits")
        empty_outbox()  # like every phase: start from an empty outbox table
        with kick_on_commit(False):
            ratio = write_overhead(overhead_transactions)
        print(f"write overhead of publish():        {ratio:8.2f}x")
        empty_outbox()
        with kick_on_commit(True):
            kicked_ratio = write_overhead(overhead_transactions)
        print(f"  ... with the kick on commit:      {kicked_ratio:8.2f}x")
    finally:
        delete_queue(queue)
        delete_celery_queue()
    print()
    print(f"targets: low-latency p50 <= 15 ms ({low[0]:.1f}), p99 <= 100 ms ({low[2]:.1f}),")
    print(f"write overhead <= 1.5x ({ratio:.2f}x);")
    print(f"Celery + kick p50 <= 20 ms ({kicked[0]:.1f}), p99 <= 100 ms ({kicked[2]:.1f}),")
    print(f"write overhead with the kick <= 1.5x ({kicked_ratio:.2f}x)")


def throughput(rows: int, queue: str, rounds: int) -> None:
    """Raw pika against the relay, steady and from a fresh process, in alternating rounds;
    targets: steady >= 0.8x raw, a fresh ``outbox_relay --once`` >= 0.6x (medians)."""
    rates: dict[str, list[float]] = {"raw": [], "steady": [], "fresh": []}
    for round_ in range(rounds):
        rates["raw"].append(raw_pika_rate(rows, queue))
        rates["steady"].append(relay_rate(rows, queue))
        rates["fresh"].append(fresh_relay_rate(rows, queue))
        print(
            f"  round {round_ + 1}: raw {rates['raw'][-1]:.0f}, relay steady"
            f" {rates['steady'][-1]:.0f}, outbox_relay --once {rates['fresh'][-1]:.0f} msg/s",
            flush=True,
        )
    raw, steady, fresh = (statistics.median(rates[name]) for name in ("raw", "steady", "fresh"))
    print(f"raw pika, pipelined confirms:       {raw:8.0f} msg/s  (median of {rounds})")
    print(
        f"relay, one process, steady state:   {steady:8.0f} msg/s  ({steady / raw:.2f}x raw,"
        " target >= 0.8x)"
    )
    print(
        f"outbox_relay --once, process start: {fresh:8.0f} msg/s  ({fresh / raw:.2f}x raw,"
        " target >= 0.6x)"
    )
    task = celery_task_rate(rows, queue)
    print(f"relay, Celery task path:            {task:8.0f} msg/s  ({task / raw:.2f}x raw)")


def cpu_per_message(count: int, queue: str, rounds: int) -> None:
    """CPU time of this process (all its threads) per message over a steady drain of
    ``count`` rows, with raw pika's rate of the same round for scale: the current relay, then
    the same with one saving off (private switches of outbox.relay.publishers and the
    ``PREPARED_INSERT`` setting), so each one's share shows in one run whatever the load."""
    from outbox.relay import publishers

    coalesce, encode = publishers._coalesce_writes, publishers._encode_properties
    variants = {
        "current": {},
        "pika's frame writes": {"coalesce": False},
        "pika's property encoder": {"encode": False},
        "claim not prepared": {"prepared": False},
        "all three off": {"coalesce": False, "encode": False, "prepared": False},
    }
    for round_ in range(rounds):
        watch = CpuWatch(connection.settings_dict["NAME"])
        raw = raw_pika_rate(count, queue)
        raw_rabbitmq = watch.stop()["rabbitmq"] / count
        line = [
            f"round {round_ + 1}: raw {raw:.0f} msg/s, {raw_rabbitmq * 1e6:.0f} us RabbitMQ CPU/msg"
        ]
        for name, off in variants.items():
            publishers._coalesce_writes = coalesce if off.get("coalesce", True) else _no_coalescing
            publishers._encode_properties = encode if off.get("encode", True) else _no_encoder
            prepared = off.get("prepared", True)
            with override_settings(OUTBOX={**settings.OUTBOX, "PREPARED_INSERT": prepared}):
                rate, cpu, postgresql, rabbitmq = relay_rate(count, queue, cpu=True)
            line.append(
                f"{name} {rate:.0f} msg/s, CPU/msg {cpu * 1e6:.0f} us relay +"
                f" {postgresql * 1e6:.0f} us PostgreSQL + {rabbitmq * 1e6:.0f} us RabbitMQ"
            )
        print("; ".join(line), flush=True)
    publishers._coalesce_writes, publishers._encode_properties = coalesce, encode


def _no_coalescing(connection: Any) -> None:
    pass


def _no_encoder(message: Any) -> None:
    return None


@contextmanager
def kick_on_commit(on: bool) -> Iterator[None]:
    """``OUTBOX["KICK_ON_COMMIT"]`` for one phase (the example settings leave it to auto,
    which is on here: Celery is configured)."""
    with override_settings(OUTBOX={**settings.OUTBOX, "KICK_ON_COMMIT": on}):
        yield


def delete_celery_queue() -> None:
    """Kicks sent while no worker ran (the write-overhead phase) are left in Redis."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(EXCHANGE)


def cpu_note() -> str:
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPUs, load average {load:.1f} at start"


# -- broker helpers ------------------------------------------------------------------------


def broker() -> pika.BlockingConnection:
    return pika.BlockingConnection(connection_parameters(client_name="outbox-bench"))


def declare_queue() -> str:
    name = f"{EXCHANGE}-queue"
    with_channel(
        lambda channel: (
            channel.exchange_declare(
                EXCHANGE, exchange_type=pika.exchange_type.ExchangeType("topic"), durable=True
            ),
            channel.queue_declare(name, durable=True),
            channel.queue_bind(name, EXCHANGE, routing_key="#"),
        )
    )
    return name


def purge(queue: str) -> None:
    with_channel(lambda channel: channel.queue_purge(queue))


def delete_queue(queue: str) -> None:
    with_channel(lambda channel: (channel.queue_delete(queue), channel.exchange_delete(EXCHANGE)))


def with_channel(work: Any) -> None:
    connection_ = broker()
    try:
        work(connection_.channel())
    finally:
        connection_.close()


# -- throughput ----------------------------------------------------------------------------


def raw_pika_rate(count: int, queue: str) -> float:
    """The broker's limit for this client, no database: every message written back to back
    on one channel in confirm mode, confirms collected as they come (pipelined)."""
    connection_ = broker()
    channel = connection_.channel()
    core = getattr(channel, "_impl")  # noqa: B009  # pika has no public pipelined confirms
    state = {"selected": False, "confirmed": 0}

    def on_confirm(frame: Any) -> None:
        method = frame.method
        state["confirmed"] = method.delivery_tag if method.multiple else state["confirmed"] + 1

    core.confirm_delivery(on_confirm, callback=lambda frame: state.update(selected=True))
    while not state["selected"]:
        connection_.process_data_events(0.01)  # type: ignore[arg-type]  # stub: int
    started = time.perf_counter()
    for n in range(count):
        properties = pika.BasicProperties(
            message_id=str(uuid.uuid4()),
            type="orders.order_placed",
            content_type="application/json",
            delivery_mode=2,
            timestamp=int(time.time()),
            headers={"aggregate_type": "order", "aggregate_id": str(n)},
        )
        core.basic_publish(EXCHANGE, "orders.order_placed", BODY, properties, mandatory=True)
        if n % 200 == 199:
            connection_.process_data_events(0)
    while state["confirmed"] < count:
        connection_.process_data_events(0.001)  # type: ignore[arg-type]  # stub: int
    elapsed = time.perf_counter() - started
    connection_.close()
    purge(queue)
    return count / elapsed


def fill_outbox(count: int, aggregates: int = 10_000) -> None:
    """``count`` ready rows, ``count / aggregates`` per aggregate, keys interleaved."""
    empty_outbox()
    for start in range(0, count, 2_000):
        with transaction.atomic():
            publish_many(order_messages(range(start, min(start + 2_000, count)), aggregates))


def order_messages(numbers: range, aggregates: int = 10_000) -> Iterator[Message]:
    """One "order placed" message per number, over ``aggregates`` orders (keys interleaved)."""
    for n in numbers:
        yield Message(
            "orders.order_placed",
            {"order_id": n, "sku": "demo-mug", "quantity": 2},
            aggregate_type="order",
            aggregate_id=n % aggregates,
        )


def empty_outbox() -> None:
    # TRUNCATE, not DELETE: the phases must not leave each other dead rows to step over.
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_message")


def relay_rate(count: int, queue: str, *, cpu: bool = False) -> Any:
    """``Relay().drain()`` over ``count`` rows, timed once its connections are open (a
    warm-up batch went first): the steady state of a running relay. With ``cpu``: the rate
    and this process's CPU seconds per message."""
    fill_outbox(WARM_UP)
    relay = Relay()
    assert relay.drain().published == WARM_UP
    fill_outbox(count)
    watch = CpuWatch(connection.settings_dict["NAME"]) if cpu else None
    started, cpu_started = time.perf_counter(), time.process_time()
    result = relay.drain()
    elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    around = watch.stop() if watch is not None else {}
    relay.close()
    assert result.published == count, result
    purge(queue)
    if cpu:
        return (
            count / elapsed,
            cpu_seconds / count,
            around["postgresql"] / count,
            around["rabbitmq"] / count,
        )
    return count / elapsed


def fresh_relay_rate(count: int, queue: str) -> float:
    """A new ``manage.py outbox_relay --once`` process over ``count`` rows, timed from its
    start to its exit: interpreter, Django, connections and the drain."""
    fill_outbox(count)
    connection.close()  # the child's claims should not wait behind this process's session
    started = time.perf_counter()
    subprocess.run(
        [PYTHON, "manage.py", "outbox_relay", "--once", "-v", "0"],
        cwd=REPO_ROOT,
        env=child_environment(),
        check=True,
    )
    elapsed = time.perf_counter() - started
    left = OutboxMessage.objects.exclude(status="published").count()
    assert left == 0, f"{left} rows left unpublished"
    purge(queue)
    return count / elapsed


def child_environment() -> dict[str, str]:
    """The environment of the processes the benchmark starts: DEBUG off, as in production
    (with DEBUG on Django keeps every statement it runs, which the relay would pay for)."""
    return {**os.environ, "DJANGO_DEBUG": "0"}


def celery_task_rate(count: int, queue: str) -> float:
    """A real Celery worker (Redis broker) runs publish_outbox, sent once a second as beat
    would; timed from the first send until every row is published."""
    fill_outbox(count)
    worker = start_celery(["worker", "--pool=solo", "--concurrency=1"])
    try:
        from outbox.tasks import publish_outbox

        started = time.perf_counter()
        while OutboxMessage.objects.filter(status="ready").exists():
            publish_outbox.apply_async(expires=10)
            time.sleep(1.0)
            if time.perf_counter() - started > 600:
                raise RuntimeError("the Celery worker did not drain the outbox in 10 minutes")
        # The loop polls once a second; the last row's publication time is exact.
        last = OutboxMessage.objects.order_by("-published_at").values_list(
            "published_at", flat=True
        )[0]
        first_sent = time.time() - (time.perf_counter() - started)
        assert last is not None
        elapsed = last.timestamp() - first_sent
    finally:
        stop(worker)
    purge(queue)
    return count / elapsed


def start_celery(arguments: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "example_project", *arguments, "--loglevel=WARNING"],
        cwd=REPO_ROOT,
        env=child_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(4)  # Celery start-up; the measurements start afterwards
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- latency -------------------------------------------------------------------------------


SOLO = ("--pool=solo", "--concurrency=1")


def write_orders(seconds: float, committed: dict[str, float], rate: float = 200) -> None:
    """One transaction (an order and its outbox row) every ``1 / rate`` seconds for
    ``seconds``; each row's commit time goes into ``committed`` under its message id."""
    interval = 1 / rate
    next_at = time.perf_counter()
    end = next_at + seconds
    while next_at < end:
        with transaction.atomic():
            order = Order.objects.create(sku="demo-mug", quantity=1)
            row = publish("orders.order_placed", {"order_id": order.pk})
        committed[str(row.message_id)] = time.time()
        next_at += interval
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)


def latency(
    mode: list[str], seconds: int, queue: str, pool: tuple[str, ...] = SOLO
) -> tuple[float, float, float]:
    """Commit-to-receipt latency at 200 transactions/s, each writing one business row and
    one outbox row; returns p50, p95, p99 in milliseconds. ``pool``: the Celery worker's
    pool options."""
    empty_outbox()
    purge(queue)
    if mode == ["outbox_relay"]:
        relay = subprocess.Popen(
            [PYTHON, "manage.py", "outbox_relay"],
            cwd=REPO_ROOT,
            env=child_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2)
    else:
        schedule = f"/tmp/outbox-bench-beat-{uuid.uuid4().hex[:8]}"
        relay = start_celery(["worker", "--beat", f"--schedule={schedule}", *pool])
    committed: dict[str, float] = {}
    received: dict[str, float] = {}
    done = threading.Event()
    consumer = threading.Thread(target=consume, args=(queue, received, done), daemon=True)
    consumer.start()
    try:
        write_orders(seconds, committed)
        deadline = time.monotonic() + 15
        while len(received) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        done.set()
        consumer.join(10)
        stop(relay)
    if len(received) < len(committed):
        raise RuntimeError(f"only {len(received)} of {len(committed)} messages arrived")
    delays = sorted((received[key] - committed[key]) * 1000 for key in committed)
    cuts = statistics.quantiles(delays, n=100)
    return cuts[49], cuts[94], cuts[98]


def consume(queue: str, received: dict[str, float], done: threading.Event) -> None:
    connection_ = broker()
    channel = connection_.channel()

    def on_message(channel_: Any, method: Any, properties: Any, body: bytes) -> None:
        received.setdefault(properties.message_id, time.time())

    channel.basic_consume(queue, on_message, auto_ack=True)
    while not done.is_set():
        connection_.process_data_events(0.05)  # type: ignore[arg-type]  # stub: int
    connection_.close()


def format_latency(cuts: tuple[float, float, float]) -> str:
    return "p50 {:.1f} ms, p95 {:.1f} ms, p99 {:.1f} ms".format(*cuts)


# -- write overhead ------------------------------------------------------------------------


def write_overhead(transactions: int, *, cpu: bool = False) -> float:
    """Median time of a transaction inserting one order, with one publish() against without.

    With ``cpu``, also print the CPU time per transaction of each variant: this process's and
    that of its PostgreSQL backend (from /proc), which a loaded machine does not blur."""

    def plain() -> None:
        with transaction.atomic():
            Order.objects.create(sku="demo-mug", quantity=1)

    def with_outbox() -> None:
        with transaction.atomic():
            order = Order.objects.create(sku="demo-mug", quantity=1)
            publish(
                "orders.order_placed",
                {"order_id": order.pk, "sku": "demo-mug", "quantity": 1},
                aggregate_type="order",
                aggregate_id=order.pk,
            )

    timings: dict[str, list[float]] = {"plain": [], "outbox": []}
    client = {"plain": 0.0, "outbox": 0.0}
    server = {"plain": 0.0, "outbox": 0.0}
    for _ in range(50):  # warm-up
        plain()
        with_outbox()
    backend = connection.connection.info.backend_pid
    for _ in range(transactions):
        # Interleaved, so both variants see the same background load.
        for name, work in (("plain", plain), ("outbox", with_outbox)):
            server_started = process_cpu(backend) if cpu else 0.0
            cpu_started = time.process_time()
            started = time.perf_counter()
            work()
            timings[name].append(time.perf_counter() - started)
            client[name] += time.process_time() - cpu_started
            if cpu:
                server[name] += process_cpu(backend) - server_started
    if cpu:
        for name in ("plain", "outbox"):
            print(
                f"  {name:6s} CPU per transaction: {client[name] / transactions * 1e6:5.0f} us"
                f" here + {server[name] / transactions * 1e6:5.0f} us PostgreSQL backend"
            )
        total = {name: client[name] + server[name] for name in client}
        print(f"  CPU ratio (both processes):       {total['outbox'] / total['plain']:8.2f}x")
    return statistics.median(timings["outbox"]) / statistics.median(timings["plain"])


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()

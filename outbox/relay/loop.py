"""The relay loop: claim ready rows, publish them with confirms, record what the broker said.

One batch is three short steps and never holds a database transaction across broker I/O:

1. claim (one autocommit statement): lease up to BATCH_SIZE rows, each key's run of oldest rows
   behind its head (up to MAX_PER_KEY; see "How the claim works" in docs/relay.md);
2. publish the batch with pipelined confirms (``outbox.relay.publishers``); over a backlog
   the next batch is written while this one is confirmed, and the database work of both
   runs on threads meanwhile (``_Pipeline``, ``_Database``);
3. settle: confirmed rows marked published in one statement, refused rows scheduled for a
   retry (or failed), rows left unanswered by a broker outage released with attempts unchanged.

A crash anywhere leaves leased rows that another relay takes once the lease expires, and a
re-publish carries the same ``message_id``: delivery is at least once. A database error while
settling loses nothing either: the relay keeps what the broker said and writes it first when
the database answers again, before it claims anything. docs/relay.md has the whole story;
``outbox.tasks.publish_outbox`` and ``manage.py outbox_relay`` are thin callers.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from outbox import conf
from outbox.broker import broker_address
from outbox.common.database import is_postgresql, outbox_alias
from outbox.common.words import count
from outbox.operations import metrics
from outbox.relay.listener import NotificationWatcher
from outbox.relay.outgoing import outgoing_message as _outgoing
from outbox.relay.publishers import (
    Publisher,
    PublishOutcome,
    RabbitMQPublisher,
    SentBatch,
)
from outbox.relay.store import (
    ClaimedMessage,
    OutboxStore,
    RetryPolicy,
    RetryResult,
    refuse_inside_atomic,
    store_for,
)
from outbox.relay.unroutable import UnroutableReporter

__all__ = ["BatchResult", "DrainResult", "Relay", "RelaySettings"]

logger = logging.getLogger("outbox.relay")

_Claimed = dict[int, ClaimedMessage]
T = TypeVar("T")
R = TypeVar("R")

# How often a sleeping worker checks whether it was asked to stop.
_STOP_CHECK_SECONDS = 0.25
# Batches the worker keeps in flight before it waits for the oldest one's answers.
_WORKER_IN_FLIGHT = 16
# Over a backlog: claims queued ahead of the batch being sent, and batches sent but not
# answered yet before the drain waits for the oldest one's confirms.
_CLAIMS_AHEAD = 2
_BACKLOG_IN_FLIGHT = 3
# Cap on the wait between two attempts to reach a database that stopped answering. A refused
# connection costs next to nothing, and every second of wait after the database is back adds
# to the outage: an outage of N seconds then costs at most about N + 2 seconds.
_DATABASE_RETRY_MAX_SECONDS = 2.0


@dataclass(frozen=True)
class RelaySettings:
    """The ``OUTBOX`` relay settings, read once per relay (see docs/settings.md)."""

    batch_size: int
    lease_seconds: float
    confirm_timeout: float
    max_attempts: int
    backoff_seconds: float
    backoff_max_seconds: float
    poll_interval: float
    reconnect_backoff_max: float
    on_unroutable: str = "retry"

    @classmethod
    def from_settings(cls) -> RelaySettings:
        """Read the current ``settings.OUTBOX``."""
        return cls(
            batch_size=conf.get_int("BATCH_SIZE"),
            lease_seconds=conf.get_float("LEASE_SECONDS"),
            confirm_timeout=conf.get_float("CONFIRM_TIMEOUT_SECONDS"),
            max_attempts=conf.get_int("MAX_ATTEMPTS"),
            backoff_seconds=conf.get_float("RETRY_BACKOFF_SECONDS"),
            backoff_max_seconds=conf.get_float("RETRY_BACKOFF_MAX_SECONDS"),
            poll_interval=conf.get_float("POLL_INTERVAL_SECONDS"),
            reconnect_backoff_max=conf.get_float("RECONNECT_BACKOFF_MAX_SECONDS"),
            on_unroutable=conf.get_str("ON_UNROUTABLE"),
        )

    def retry_policy(self) -> RetryPolicy:
        """The retry part of these settings, which the store applies."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
        )


@dataclass(frozen=True)
class BatchResult:
    """What one claim-publish-settle round did, in row counts."""

    claimed: int = 0
    published: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    broker_error: str | None = None


@dataclass(frozen=True)
class DrainResult:
    """Totals of ``Relay.drain``; ``broker_error`` is set when it stopped for an outage.
    ``released``: rows handed back unpublished, attempts unchanged, because of that outage."""

    published: int = 0
    retried: int = 0
    failed: int = 0
    batches: int = 0
    broker_error: str | None = None
    released: int = 0


class Relay:
    """Publishes ready outbox rows through ``publisher`` (RabbitMQ unless given one), reading
    and writing them through ``store`` (``store_for(using)`` unless given one; an injected
    store brings its own retry policy).

    A relay is not thread-safe; run one per thread or process. Any number of relays may run
    against one PostgreSQL database at once: leases keep them off each other's rows and the
    claim keeps per-key order. On any other database run only one (docs/concepts.md).
    """

    def __init__(
        self,
        publisher: Publisher | None = None,
        store: OutboxStore | None = None,
        *,
        settings: RelaySettings | None = None,
        name: str | None = None,
        using: str | None = None,
    ) -> None:
        self.publisher = publisher if publisher is not None else RabbitMQPublisher()
        self.settings = settings or RelaySettings.from_settings()
        # The lease owner: unique per relay, readable in the table and the logs.
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if store is None:
            store = store_for(outbox_alias(using), retry=self.settings.retry_policy())
        self.store = store
        self.using = store.alias
        # Broker answers (and rows to give back) that a database error kept from being
        # written; written before the next claim (see _record_leftovers).
        self._unrecorded: list[_Settlement] = []
        self._unroutable = UnroutableReporter()
        # The database threads of drain(), started on first use and stopped by close().
        self._executors: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

    def publish_batch(self) -> BatchResult:
        """Claim one batch, publish it and record the outcome. Database errors propagate.

        What an earlier database error kept from being recorded is written first."""
        self._record_leftovers()
        return self._publish(self._claim())

    def _claim(self) -> list[ClaimedMessage]:
        claimed = self.store.claim(
            owner=self.name,
            limit=self.settings.batch_size,
            lease_seconds=self.settings.lease_seconds,
        )
        if claimed:
            by_id = {message.id: message for message in claimed}
            self._log(logging.DEBUG, "claim", by_id, list(by_id), "claimed %s")
        return claimed

    def _publish(self, claimed: list[ClaimedMessage]) -> BatchResult:
        """Publish ``claimed``, wait for the answers and settle them."""
        if not claimed:
            return BatchResult()
        outcome = self.publisher.publish_batch(
            [_outgoing(message) for message in claimed],
            confirm_timeout=self.settings.confirm_timeout,
        )
        return self._settle(claimed, outcome)

    def _settle(self, claimed: list[ClaimedMessage], outcome: PublishOutcome) -> BatchResult:
        """Record the broker's answers: one statement per kind of answer."""
        refused = dict(outcome.refused)
        by_id = {message.id: message for message in claimed}
        self._unroutable.report(
            [by_id[key] for key in outcome.unroutable],
            relay=self.name,
            recorded=self.settings.on_unroutable == "record",
        )
        unroutable: dict[int, str] = {}
        if self.settings.on_unroutable == "record":
            unroutable = dict(outcome.unroutable)
        else:
            refused.update(outcome.unroutable)
        settlement = _Settlement(
            by_id=by_id,
            claimed=len(claimed),
            confirmed=list(outcome.confirmed),
            unroutable=unroutable,
            refused=refused,
            unanswered=list(outcome.unanswered),
            broker_error=outcome.broker_error,
        )
        return self._record(settlement)

    def _record(self, settlement: _Settlement) -> BatchResult:
        """Write ``settlement`` part by part. A database error leaves what is not written yet
        in ``_unrecorded`` (and propagates): the broker's confirms are not forgotten, so the
        rows are marked once the database is back instead of being sent again after their
        lease expires, and the relay's own leases are given back instead of waiting for it.
        Every part can be written again safely: each statement only changes rows still in
        the state it expects."""
        by_id = settlement.by_id
        try:
            published = self._settle_confirmed(by_id, settlement.confirmed)
            settlement.confirmed = []
            published += self._settle_unroutable(by_id, settlement.unroutable)
            settlement.unroutable = {}
            retry = self._settle_refused(by_id, settlement.refused)
            settlement.refused = {}
            released = self._settle_unanswered(
                by_id, settlement.unanswered, settlement.broker_error
            )
        except DatabaseError:
            if not any(kept is settlement for kept in self._unrecorded):
                self._unrecorded.append(settlement)
            raise
        return BatchResult(
            claimed=settlement.claimed,
            published=published,
            retried=len(retry.retried),
            failed=len(retry.failed),
            released=released,
            broker_error=settlement.broker_error,
        )

    def _record_leftovers(self) -> BatchResult:
        """Write what an earlier database error kept from being recorded, oldest first;
        return the totals (``claimed`` 0: those rows were counted when claimed)."""
        published = retried = failed = released = 0
        while self._unrecorded:
            leftover = self._unrecorded[0]
            result = self._record(leftover)  # on a database error it stays first in line
            del self._unrecorded[0]
            published += result.published
            retried += result.retried
            failed += result.failed
            released += result.released
            if leftover.claimed:
                self._log(
                    logging.INFO,
                    "recovered",
                    leftover.by_id,
                    list(leftover.by_id),
                    "database back: recorded the outcome of %s settled during the outage",
                )
        return BatchResult(0, published, retried, failed, released)

    def _give_back(self, claimed: list[ClaimedMessage]) -> BatchResult:
        """Release rows claimed but never sent (kept for later if the database fails)."""
        return self._record(_Settlement.unsent(claimed))

    def _settle_confirmed(self, by_id: _Claimed, confirmed: list[int]) -> int:
        published = self.store.mark_published(confirmed)
        if confirmed:
            confirmed_at = timezone.now()
            metrics.messages_published(published)
            for key in confirmed:
                metrics.publish_latency((confirmed_at - by_id[key].created_at).total_seconds())
            self._log(logging.INFO, "publish", by_id, confirmed, "published %s")
        return published

    def _settle_unroutable(self, by_id: _Claimed, unroutable: dict[int, str]) -> int:
        recorded = self.store.mark_published_unroutable(unroutable)
        if unroutable:
            metrics.messages_published(recorded)
            self._log(
                logging.WARNING,
                "unroutable",
                by_id,
                list(unroutable),
                "%s dropped by the broker, recorded as published: %s",
                next(iter(unroutable.values())),
                noun="unroutable message",
            )
        return recorded

    def _settle_refused(self, by_id: _Claimed, refused: dict[int, str]) -> RetryResult:
        retry = self.store.schedule_retry(refused, owner=self.name)
        if retry.retried:
            metrics.messages_retried(len(retry.retried))
            self._log(
                logging.WARNING,
                "retry",
                by_id,
                retry.retried,
                "%s refused by the broker, will retry: %s",
                refused[retry.retried[0]],
            )
        if retry.failed:
            metrics.messages_failed(len(retry.failed))
            self._log(
                logging.ERROR,
                "fail",
                by_id,
                retry.failed,
                f"%s failed after {self.store.retry.max_attempts} attempts: %s",
                refused[retry.failed[0]],
            )
        return retry

    def _settle_unanswered(
        self, by_id: _Claimed, unanswered: list[int], broker_error: str | None
    ) -> int:
        released = self.store.release(unanswered, owner=self.name)
        if broker_error:
            self._log(
                logging.WARNING,
                "release",
                by_id,
                unanswered,
                "%s released with attempts unchanged, RabbitMQ at %s unavailable: %s",
                broker_address(),
                broker_error,
            )
        return released

    def _log(
        self,
        level: int,
        event: str,
        by_id: _Claimed,
        ids: Sequence[int],
        message: str,
        *detail: str,
        noun: str = "message",
    ) -> None:
        """One structured line: ``message`` gets the count of ``noun`` (``1 message``,
        ``3 messages``), then ``detail``; ``extra`` carries the event name, the relay, the
        count and the message ids for log processors."""
        if not logger.isEnabledFor(level):
            return  # the ids are not worth formatting for a line nobody reads
        logger.log(
            level,
            message,
            count(len(ids), noun),
            *detail,
            extra={
                "event": event,
                "relay": self.name,
                "count": len(ids),
                "message_ids": [str(by_id[key].message_id) for key in ids],
            },
        )

    def drain(
        self,
        *,
        time_budget: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> DrainResult:
        """Publish batches until nothing is claimable, the broker fails, ``time_budget``
        seconds have passed, or ``should_stop()`` is true. Database errors propagate."""
        return self._drain(time_budget, should_stop, notified=False)

    def _drain(
        self,
        time_budget: float | None,
        should_stop: Callable[[], bool] | None,
        *,
        notified: bool,
    ) -> DrainResult:
        deadline = None if time_budget is None else time.monotonic() + time_budget

        def stopping() -> bool:
            return (deadline is not None and time.monotonic() >= deadline) or (
                should_stop is not None and should_stop()
            )

        # Before any claim: the rows a database error left confirmed-but-unmarked or leased
        # to this relay are recorded, so none of them waits for its lease or is sent again.
        carried = self._record_leftovers()
        refuse_inside_atomic(self.using)
        database = _Database(self)
        try:
            pipeline = _Pipeline(self, database, stopping, notified=notified)
            pipeline.run()
        finally:
            database.close()
        totals = pipeline.totals
        return DrainResult(
            carried.published + totals.published,
            carried.retried + totals.retried,
            carried.failed + totals.failed,
            pipeline.batches,
            pipeline.broker_error,
            carried.released + totals.released,
        )

    def _database_threads(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """The claim thread and the settle thread of drain(), started on first use."""
        if self._executors is None:
            self._executors = (
                ThreadPoolExecutor(1, thread_name_prefix="outbox-relay-claim"),
                ThreadPoolExecutor(1, thread_name_prefix="outbox-relay-settle"),
            )
        return self._executors

    def run(self, should_stop: Callable[[], bool]) -> None:
        """The long-running worker: publish rows as they commit, until stopped.

        It wakes on the LISTEN/NOTIFY signal of committed rows (PostgreSQL only; elsewhere it
        just polls) and at least every POLL_INTERVAL_SECONDS (so a lost notification, or a
        retry coming due, waits at most that long). A notification is served at once, even
        while earlier batches wait for their confirms or their marks (``_Pipeline.work``);
        a backlog is drained as by ``drain``. An unreachable broker or database is retried
        with a capped exponential backoff; neither uses up the rows' attempts.
        """
        woken = threading.Event()

        def wake() -> None:
            woken.set()
            self.publisher.wake()

        watcher = NotificationWatcher(self.using, wake)
        failures = 0
        try:
            while not should_stop():
                pipeline: _Pipeline | None = None
                try:
                    watcher.start()  # LISTEN first: a commit from now on wakes the worker
                    self._record_leftovers()
                    refuse_inside_atomic(self.using)
                    database = _Database(self)
                    try:
                        pipeline = _Pipeline(
                            self, database, should_stop, notified=watcher.listening
                        )
                        pipeline.work(watcher, woken)
                    finally:
                        database.close()
                except DatabaseError as error:
                    # A worker that published before it lost the database starts over at
                    # the shortest backoff.
                    progressed = pipeline is not None and pipeline.totals.published > 0
                    failures = 1 if progressed else failures + 1
                    self._database_lost(error, failures)
                    watcher.close()
                    self._pause(self._database_backoff(failures), should_stop)
                    continue
                assert pipeline is not None  # set once the work ran without a database error
                if pipeline.broker_error is not None:
                    failures = 1 if pipeline.totals.published else failures + 1
                    delay = self._backoff(failures)
                    logger.warning(
                        "RabbitMQ at %s unavailable (%s); retrying in %.1fs",
                        broker_address(),
                        pipeline.broker_error,
                        delay,
                        extra={"event": "backoff", "relay": self.name, "delay": delay},
                    )
                    self._pause(delay, should_stop)
        finally:
            watcher.close()

    def close(self) -> None:
        """Close the broker connection and stop the database thread."""
        self.publisher.close()
        executors, self._executors = self._executors, None
        for executor in executors or ():
            executor.shutdown(wait=True)

    def _database_lost(self, error: Exception, failures: int) -> None:
        # Django reconnects on the next query once the broken connection is closed.
        connections[self.using].close()
        logger.warning(
            "database unavailable (%s); reconnecting",
            error,
            extra={"event": "database_error", "relay": self.name, "failures": failures},
        )

    def _backoff(self, failures: int, cap: float | None = None) -> float:
        ceiling = min(self.settings.reconnect_backoff_max, 0.25 * 2**failures)
        if cap is not None:
            ceiling = min(ceiling, cap)
        return random.uniform(ceiling / 2, ceiling)

    def _database_backoff(self, failures: int) -> float:
        return self._backoff(failures, cap=_DATABASE_RETRY_MAX_SECONDS)

    def _pause(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        """Sleep ``seconds`` unless stopped, answering RabbitMQ's heartbeats meanwhile (a
        long database outage must not cost the broker connection as well)."""
        deadline = time.monotonic() + seconds
        while not should_stop():
            self.publisher.keepalive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, _STOP_CHECK_SECONDS))


@dataclass
class _Settlement:
    """What the broker said about one batch, as the relay still has to record it: each part
    is emptied once written, so after a database error only the rest is written again."""

    by_id: _Claimed
    claimed: int
    confirmed: list[int] = field(default_factory=list)
    unroutable: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    # Released with attempts unchanged: unanswered in a broker outage, or never sent.
    unanswered: list[int] = field(default_factory=list)
    broker_error: str | None = None

    @classmethod
    def unsent(cls, claimed: list[ClaimedMessage]) -> _Settlement:
        """Rows claimed and never sent: only to be released (``claimed`` 0, as they are
        not a batch of their own)."""
        return cls(
            by_id={message.id: message for message in claimed},
            claimed=0,
            unanswered=[message.id for message in claimed],
        )


class _Database:
    """Runs the relay's database work: inline, or once the backlog is large, on two threads.

    A drain starts inline: a few rows (the low-latency worker's usual wake-up) are not worth
    thread switches, which on a busy machine cost more than the statements. Once a claim
    comes back full (on PostgreSQL), ``go_parallel`` moves the work off the publishing
    thread: claims run on the relay's claim thread, which borrows the caller's connection,
    and settles (marking, retries, releases) on its settle thread, on a connection of its
    own, opened for the drain and closed at its end. A statement waiting for PostgreSQL
    releases the GIL, so the publishing thread keeps writing meanwhile, and the marking of
    one batch runs beside the claim of the next. Each thread runs its statements in the
    order they were queued. The caller touches the database only through this object until
    ``close``, which waits for everything submitted.
    """

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._claims: ThreadPoolExecutor | None = None
        self._settles: ThreadPoolExecutor | None = None
        self._submitted: list[Future[Any]] = []
        self._wrapper: BaseDatabaseWrapper | None = None

    def run(self, work: Callable[..., T], *args: Any) -> Future[T]:
        """Claim work: ``work(*args)``, as a future (already done when run inline)."""
        return self._submit(self._claims, work, *args)

    def settle(self, work: Callable[..., T], *args: Any) -> Future[T]:
        """Settle work, as ``run``."""
        return self._submit(self._settles, work, *args)

    def _submit(
        self, executor: ThreadPoolExecutor | None, work: Callable[..., T], *args: Any
    ) -> Future[T]:
        if executor is None:
            done: Future[T] = Future()
            try:
                done.set_result(work(*args))
            except Exception as error:  # raised by result(), as from a thread
                done.set_exception(error)
            return done
        future = executor.submit(work, *args)
        self._submitted.append(future)
        return future

    def go_parallel(self) -> None:
        """From now on, run the work on the relay's database threads (PostgreSQL only:
        elsewhere a second connection may not even see the same database)."""
        alias = self._relay.using
        if self._claims is not None or not is_postgresql(alias):
            return
        self._wrapper = connections[alias]
        self._wrapper.inc_thread_sharing()
        self._claims, self._settles = self._relay._database_threads()
        self.run(_use_connection, alias, self._wrapper)

    def settle_on_thread(self) -> None:
        """From now on, run the settles on the relay's settle thread (PostgreSQL only), and
        the claims inline still: the worker's marks then never delay its next claim."""
        if self._settles is None and is_postgresql(self._relay.using):
            self._settles = self._relay._database_threads()[1]

    def close(self) -> None:
        """Wait for everything submitted; the caller has its connection back."""
        if self._settles is not None:
            # The settle thread's own connection lives for one drain only.
            self.settle(_close_connection, self._relay.using)
        futures_wait(self._submitted)
        self._submitted.clear()
        self._claims = self._settles = None
        if self._wrapper is not None:
            self._wrapper.dec_thread_sharing()
            self._wrapper = None


def _close_connection(alias: str) -> None:
    connections[alias].close()


def _use_connection(alias: str, wrapper: BaseDatabaseWrapper) -> None:
    # Django's connections are per thread; this thread borrows the caller's (as Django's
    # own live-server thread does), which allowed it with inc_thread_sharing().
    connections[alias] = wrapper


class _Pipeline:
    """One drain: the publishing side runs here, the database side through ``_Database``
    (inline, or on its threads over a backlog), overlapped.

    Over a backlog up to ``_BACKLOG_IN_FLIGHT`` batches are in flight (written, not all
    answered): batch N+1 is written while the broker still confirms batch N; once N is
    answered its settle is queued. ``_CLAIMS_AHEAD`` claims are queued on the claim thread
    behind the batch being written (only after a full claim: one that was not full took
    every row there was), so neither thread waits for the other while the backlog lasts.

    Per-key order: a batch is claimed while every batch before it that is not settled yet is
    still leased, which keeps later rows of their keys out of it; and batches go out on one
    channel in the order they were claimed. Nothing is marked published before its confirm.
    The drain ends on an empty claim made after every batch was settled (the one a Celery
    run trusts to have seen every row committed before it started; the worker may skip it,
    see ``_notified_of_the_rest``), on a broker error, on a database error (raised once every
    batch sent is settled or kept in ``_unrecorded``), or when ``stopping()``.
    """

    def __init__(
        self,
        relay: Relay,
        database: _Database,
        stopping: Callable[[], bool],
        *,
        notified: bool = False,
    ) -> None:
        self.relay = relay
        # Rows committed from now on wake the caller by a notification (the worker's LISTEN).
        self.notified = notified
        self.database = database
        self.stopping = stopping
        self.totals = BatchResult()
        self.batches = 0
        self.broker_error: str | None = None
        self.database_error: DatabaseError | None = None
        # Each batch sent and not collected yet, with the time its confirms are due by.
        self._in_flight: deque[tuple[list[ClaimedMessage], SentBatch, float]] = deque()
        self._settling: deque[Future[BatchResult]] = deque()
        # Called when a settle done on a thread finished (the worker's wait returns).
        self._on_settled: Callable[[], None] | None = None
        self._settles_queued = 0
        self._settles_done = 0

    def run(self, first: list[ClaimedMessage] | None = None) -> None:
        """Drain; ``first``: a batch claimed already (by the worker), to start with."""
        relay = self.relay
        # Claims queued on the claim thread, oldest first, each with whether it was queued
        # after every settle (only such an empty claim may end the drain).
        claims: deque[tuple[Future[list[ClaimedMessage]], bool]] = deque()
        if first is None:
            claims.append((self.database.run(relay._claim), True))
        else:
            given: Future[list[ClaimedMessage]] = Future()
            given.set_result(first)
            claims.append((given, False))
        ended = False
        while not ended:
            claimed: list[ClaimedMessage] = []
            last_claim_after_settles = False
            if claims:
                claim, last_claim_after_settles = claims.popleft()
                claimed = self._result(claim, [])
            full = len(claimed) >= relay.settings.batch_size
            if full:
                self.database.go_parallel()  # a backlog: overlap the database work
            if claimed and self._healthy():
                self._send(claimed)
                # A claim that was not full took every row publishable when it ran: the
                # next one has to wait for this batch's settle to find more. A full one
                # means more backlog: claims are queued ahead, so that the claim thread
                # never waits for the publishing one (nor the other way round).
                while full and len(claims) < _CLAIMS_AHEAD and not self.stopping():
                    claims.append((self.database.run(relay._claim), False))
            elif claimed:
                # Claimed during an outage of the other service: handed back unsent.
                self._settle(claimed, None)
            # Over a backlog several batches stay in flight, so that the broker's confirms
            # of one never hold up the next; those already answered are settled at once.
            # Nothing more to send: every batch is collected.
            keep = _BACKLOG_IN_FLIGHT - 1 if claims else 0
            while len(self._in_flight) > keep or (
                self._in_flight and relay.publisher.answered(self._in_flight[0][1])
            ):
                self._collect()
            self._count_settled(wait=False)
            if not claims:
                if not self._healthy() or self.stopping():
                    ended = True
                elif not claimed and last_claim_after_settles:
                    ended = True
                    self.batches += 1  # the last round: an empty claim
                elif claimed and last_claim_after_settles and self._notified_of_the_rest(claimed):
                    ended = True
                else:
                    # Rows of the settled batches' keys may be claimable only now.
                    self._count_settled(wait=True)
                    claims.append((self.database.run(relay._claim), True))
        self._count_settled(wait=True)
        if self.database_error is not None:
            raise self.database_error

    def work(self, watcher: NotificationWatcher, woken: threading.Event) -> None:
        """The long-running worker (``Relay.run``): claim and send as soon as rows commit,
        whatever is still in flight, until stopped, the broker fails or the database does.

        A notification (``watcher``) is served at once: the claim runs while earlier
        batches still wait for their confirms, and their settles run on the settle thread
        (PostgreSQL), so neither delays the next rows. A claim made while batches of this
        relay were unsettled may have stepped over rows behind their leased heads (later
        rows of the same keys): once those batches are settled the worker claims once more
        (``recheck_at``: the number of settles to wait for; settles finish in order).
        A full claim means a backlog: it is drained as ``drain`` does (``run``). Besides,
        the worker claims every POLL_INTERVAL_SECONDS (rows coming due, lost notifications).
        ``woken`` is set (and the publisher's wait interrupted) by notifications and by
        settles that finished on the thread.
        """
        relay = self.relay
        publisher = relay.publisher
        self.database.settle_on_thread()

        def on_settled() -> None:
            woken.set()
            publisher.wake()

        self._on_settled = on_settled
        claim_due = True  # what committed before the worker started
        # Claim again once this many settles are done: rows may wait behind our leases.
        recheck_at: int | None = None
        poll_at = 0.0
        while self._healthy() and not self.stopping():
            woken.clear()
            if watcher.error is not None:
                self.database_error = watcher.error
                break
            if watcher.take():
                claim_due = True
            self._count_settled(wait=False)
            now = time.monotonic()
            if recheck_at is not None and self._settles_done >= recheck_at:
                claim_due, recheck_at = True, None
            if now >= poll_at:
                claim_due = True
            if claim_due and len(self._in_flight) < _WORKER_IN_FLIGHT:
                claim_due = False
                poll_at = now + relay.settings.poll_interval
                unsettled = bool(self._in_flight or self._settling)
                # The settles of every batch unsettled now (they finish in order).
                behind = self._settles_queued + len(self._in_flight)
                claimed = self._result(self.database.run(relay._claim), [])
                target: int | None = behind if unsettled else None
                if not claimed:
                    if not unsettled:
                        recheck_at = None  # it saw every row; later commits notify
                elif not self._healthy():
                    self._settle(claimed, None)
                elif len(claimed) >= relay.settings.batch_size:
                    self.run(first=claimed)  # a backlog; it ends with everything settled
                    recheck_at = target = None
                else:
                    self._send(claimed)
                    if not watcher.listening or not self._took_everything(claimed):
                        # Rows of its own keys may be left: after its own settle too.
                        target = self._settles_queued + len(self._in_flight)
                    elif not unsettled:
                        recheck_at = None
                if target is not None:
                    recheck_at = max(recheck_at or 0, target)
                continue
            collected = False
            while self._in_flight and (
                publisher.answered(self._in_flight[0][1])
                or self._in_flight[0][2] <= now
                or len(self._in_flight) >= _WORKER_IN_FLIGHT
            ):
                self._collect()
                collected = True
            if collected:
                continue
            wait = min(poll_at - now, _STOP_CHECK_SECONDS)
            if self._in_flight:
                wait = min(wait, self._in_flight[0][2] - now)
            publisher.wait(max(0.0, wait), woken)
        while self._in_flight:
            self._collect()
        self._count_settled(wait=True)
        self._on_settled = None
        if self.database_error is not None:
            raise self.database_error

    def _healthy(self) -> bool:
        return self.broker_error is None and self.database_error is None

    def _notified_of_the_rest(self, claimed: list[ClaimedMessage]) -> bool:
        """Whether the long-running worker may skip the last, empty claim after ``claimed``.

        It may when that claim, made with nothing else in flight, took every publishable
        row: it was not full and cut no key's run at the per-key cap. Then whatever becomes
        publishable later committed after it, and its notification wakes the worker at once
        (the claim a Celery run ends on is not skipped: it proves the outbox drained). Rows
        not due yet, or behind a head another relay holds, wait for the poll as always.
        """
        return self.notified and self._took_everything(claimed)

    def _took_everything(self, claimed: list[ClaimedMessage]) -> bool:
        """Whether ``claimed``, claimed with nothing of this relay's in flight, took every
        publishable row: it was not full and cut no key's run at the per-key cap."""
        if len(claimed) >= self.relay.settings.batch_size:
            return False
        cap = getattr(self.relay.store, "max_per_key", None) or self.relay.settings.batch_size
        per_key = Counter(
            (message.aggregate_type, message.aggregate_id)
            for message in claimed
            if message.aggregate_type
        )
        return not per_key or max(per_key.values()) < cap

    def _send(self, claimed: list[ClaimedMessage]) -> None:
        sent = self.relay.publisher.send_batch([_outgoing(message) for message in claimed])
        deadline = time.monotonic() + self.relay.settings.confirm_timeout
        self._in_flight.append((claimed, sent, deadline))
        self.batches += 1

    def _collect(self) -> None:
        claimed, sent, deadline = self._in_flight.popleft()
        outcome = self.relay.publisher.collect(
            sent, confirm_timeout=max(0.0, deadline - time.monotonic())
        )
        if outcome.broker_error is not None and self.broker_error is None:
            self.broker_error = outcome.broker_error
        self._settle(claimed, outcome)

    def _settle(self, claimed: list[ClaimedMessage], outcome: PublishOutcome | None) -> None:
        """Queue the settle of a batch (``None``: never sent, to be given back)."""
        if outcome is None:
            settling = self.database.settle(self.relay._give_back, claimed)
        else:
            settling = self.database.settle(self.relay._settle, claimed, outcome)
        if self._on_settled is not None:
            settling.add_done_callback(lambda _done: self._call_on_settled())
        self._settling.append(settling)
        self._settles_queued += 1

    def _call_on_settled(self) -> None:
        if self._on_settled is not None:
            self._on_settled()

    def _count_settled(self, *, wait: bool) -> None:
        while self._settling and (wait or self._settling[0].done()):
            self.totals = _add(self.totals, self._result(self._settling.popleft(), BatchResult()))
            self._settles_done += 1

    def _result(self, future: Future[R], failed: R) -> R:
        """``future``'s result, or ``failed`` after a database error (kept to be raised
        once the batches in flight are settled; the relay's ``_record`` keeps what it could
        not write in ``_unrecorded``)."""
        try:
            return future.result()
        except DatabaseError as error:
            if self.database_error is None:
                self.database_error = error
            return failed


def _add(total: BatchResult, more: BatchResult) -> BatchResult:
    return BatchResult(
        claimed=total.claimed + more.claimed,
        published=total.published + more.published,
        retried=total.retried + more.retried,
        failed=total.failed + more.failed,
        released=total.released + more.released,
    )

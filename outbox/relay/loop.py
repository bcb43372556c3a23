"""The relay loop: claim ready rows, publish them with confirms, record what the broker said.

One batch is three short steps and never holds a database transaction across broker I/O:

1. claim (one autocommit statement): lease up to BATCH_SIZE rows, each key's run of oldest rows
   behind its head (up to MAX_PER_KEY; see "How the claim works" in docs/relay.md);
2. publish the batch with pipelined confirms (``outbox.relay.publishers``);
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
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.db import DatabaseError, connections
from django.utils import timezone

from outbox import conf, wire
from outbox.common.database import outbox_alias
from outbox.operations import metrics
from outbox.relay.listener import ReadyListener
from outbox.relay.publishers import OutgoingMessage, Publisher, PublishOutcome, RabbitMQPublisher
from outbox.relay.store import (
    ClaimedMessage,
    OutboxStore,
    RetryPolicy,
    RetryResult,
    store_for,
)
from outbox.relay.unroutable import UnroutableReporter

__all__ = ["BatchResult", "DrainResult", "Relay", "RelaySettings"]

logger = logging.getLogger("outbox.relay")

_Claimed = dict[int, ClaimedMessage]

# How often a sleeping worker checks whether it was asked to stop.
_STOP_CHECK_SECONDS = 0.25
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
            self._log(logging.DEBUG, "claim", by_id, list(by_id), "claimed %d messages")
        return claimed

    def _publish(
        self,
        claimed: list[ClaimedMessage],
        while_confirming: Callable[[], None] | None = None,
    ) -> BatchResult:
        """Publish ``claimed`` and settle it; ``while_confirming`` runs once the batch is
        written and the broker is working on the confirms."""
        if not claimed:
            return BatchResult()
        outcome = self.publisher.publish_batch(
            [_outgoing(message) for message in claimed],
            confirm_timeout=self.settings.confirm_timeout,
            after_send=while_confirming,
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
                    "database back: recorded the outcome of %d messages settled during the outage",
                )
        return BatchResult(0, published, retried, failed, released)

    def _give_back(self, claimed: list[ClaimedMessage]) -> int:
        """Release rows claimed but never sent (kept for later if the database fails); return
        how many were released."""
        if not claimed:
            return 0
        return self._record(_Settlement.unsent(claimed)).released

    def _settle_confirmed(self, by_id: _Claimed, confirmed: list[int]) -> int:
        published = self.store.mark_published(confirmed)
        if confirmed:
            confirmed_at = timezone.now()
            metrics.messages_published(published)
            for key in confirmed:
                metrics.publish_latency((confirmed_at - by_id[key].created_at).total_seconds())
            self._log(logging.INFO, "publish", by_id, confirmed, "published %d messages")
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
                "%d unroutable messages dropped by the broker, recorded as published: %s",
                next(iter(unroutable.values())),
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
                "%d messages refused by the broker, will retry: %s",
                refused[retry.retried[0]],
            )
        if retry.failed:
            metrics.messages_failed(len(retry.failed))
            self._log(
                logging.ERROR,
                "fail",
                by_id,
                retry.failed,
                f"%d messages failed after {self.store.retry.max_attempts} attempts: %s",
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
                "broker unavailable, %d messages released with attempts unchanged: %s",
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
    ) -> None:
        """One structured line: ``message`` gets the count (and ``detail``); ``extra`` carries
        the event name, the relay, the count and the message ids for log processors."""
        logger.log(
            level,
            message,
            len(ids),
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
        deadline = None if time_budget is None else time.monotonic() + time_budget
        # Before any claim: the rows a database error left confirmed-but-unmarked or leased
        # to this relay are recorded, so none of them waits for its lease or is sent again.
        carried = self._record_leftovers()
        published, retried, failed = carried.published, carried.retried, carried.failed
        batches = 0
        released = carried.released
        claimed = self._claim()
        while True:
            # The next batch is claimed while the broker confirms this one, so the database
            # round trip costs no time. It cannot break per-key order: this batch's rows are
            # still leased, which keeps every later row of their keys out of the next claim.
            following = _Prefetch(self._claim)
            stopping = (deadline is not None and time.monotonic() >= deadline) or (
                should_stop is not None and should_stop()
            )
            try:
                result = self._publish(claimed, None if stopping else following)
            except DatabaseError:
                # The prefetched rows were never sent: give them back once the database is
                # back rather than publish them late, when their lease may have expired and
                # another relay may already have sent them and later rows of their keys.
                if following.claimed:
                    self._unrecorded.append(_Settlement.unsent(following.claimed))
                raise
            batches += 1
            published += result.published
            retried += result.retried
            failed += result.failed
            released += result.released
            if following.error is not None:
                raise following.error
            if result.broker_error is not None:
                released += self._give_back(following.claimed)
                return DrainResult(
                    published, retried, failed, batches, result.broker_error, released
                )
            if stopping or result.claimed == 0:
                return DrainResult(published, retried, failed, batches, released=released)
            # Rows of this batch's keys may have become claimable only now that it is marked.
            claimed = following.claimed or self._claim()

    def run(self, should_stop: Callable[[], bool]) -> None:
        """The long-running worker: drain, then sleep until rows commit, until stopped.

        It wakes on the LISTEN/NOTIFY signal of committed rows (PostgreSQL only; elsewhere it
        just polls) and at least every POLL_INTERVAL_SECONDS (so a lost notification, or a
        retry coming due, waits at most that long). An unreachable broker or database is
        retried with a capped exponential backoff; neither uses up the rows' attempts.
        """
        listener = ReadyListener(self.using)
        failures = 0
        try:
            while not should_stop():
                try:
                    result = self.drain(should_stop=should_stop)
                except DatabaseError as error:
                    failures += 1
                    self._database_lost(error, failures)
                    self._pause(self._database_backoff(failures), should_stop)
                    continue
                if result.broker_error is not None:
                    failures += 1
                    delay = self._backoff(failures)
                    logger.warning(
                        "broker unavailable; retrying in %.1fs",
                        delay,
                        extra={"event": "backoff", "relay": self.name, "delay": delay},
                    )
                    self._pause(delay, should_stop)
                    continue
                failures = 0
                try:
                    self._wait_for_work(listener, should_stop)
                except DatabaseError as error:
                    failures += 1
                    self._database_lost(error, failures)
                    self._pause(self._database_backoff(failures), should_stop)
        finally:
            listener.close()

    def _wait_for_work(self, listener: ReadyListener, should_stop: Callable[[], bool]) -> None:
        """Return on a notification, after the poll interval, or soon after a stop request
        (the wait is sliced so that SIGTERM is honoured within a fraction of a second)."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not should_stop():
            self.publisher.keepalive()  # answer RabbitMQ's heartbeats while idle
            remaining = deadline - time.monotonic()
            if remaining <= 0 or listener.wait(min(remaining, _STOP_CHECK_SECONDS)):
                return

    def close(self) -> None:
        """Close the broker connection."""
        self.publisher.close()

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


class _Prefetch:
    """Claims the next batch when called; a database error is kept for later, so that the
    batch being confirmed is settled before it is raised."""

    def __init__(self, claim: Callable[[], list[ClaimedMessage]]) -> None:
        self._claim = claim
        self.claimed: list[ClaimedMessage] = []
        self.error: DatabaseError | None = None

    def __call__(self) -> None:
        try:
            self.claimed = self._claim()
        except DatabaseError as error:
            self.error = error


def _outgoing(message: ClaimedMessage) -> OutgoingMessage:
    headers = wire.message_headers(
        message.headers, message.aggregate_type, message.aggregate_id, message.position
    )
    return OutgoingMessage(
        key=message.id,
        message_id=str(message.message_id),
        exchange=message.exchange,
        routing_key=message.routing_key,
        event_type=message.event_type,
        body=message.payload_json.encode(),
        headers=headers,
        timestamp=int(message.created_at.timestamp()),
    )

"""The consume loop behind ``manage.py outbox_consume``: one consumer, one queue, a batch of the
deliveries already waiting at a time, processed in one transaction and acknowledged only after
it committed.

Threads: the main thread owns the pika ``BlockingConnection`` (pika is not thread-safe) and
keeps reading the socket, so heartbeats are answered however long a handler runs. Batches
run one at a time on a single worker thread, which keeps its own database connection; it
wakes the main thread with ``add_callback_threadsafe`` when a batch is done.

``ConsumerLoop`` reconnects; each connection is one ``_Session``, which reads deliveries,
hands them to the worker and settles their outcomes (ack, retry queue or dead-letter queue).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from traceback import format_exception

import pika
import pika.exceptions
from django.db import connections
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from outbox.broker import connection_parameters
from outbox.consumer import dead_letters
from outbox.consumer.fields import install_tolerant_decoding
from outbox.consumer.processing import (
    MAX_ERROR_CHARS,
    Delivery,
    Outcome,
    decode,
    process,
    process_batch,
)
from outbox.consumer.registry import ConsumerSpec, IncomingMessage, load_handlers, registry
from outbox.consumer.republish import dead_letter_headers, republish, retry_headers
from outbox.consumer.settings import ConsumerSettings
from outbox.consumer.topology import declare_topology, topology_for
from outbox.exceptions import ConsumerSetupError
from outbox.operations import metrics

logger = logging.getLogger("outbox.consumer")

# How long the main thread blocks on the socket before looking at its stop flag again.
_POLL_SECONDS = 1

_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    # The broker refused a retry or dead-letter copy (a queue deleted meanwhile, an internal
    # error): starting over declares the queues again and the original is redelivered.
    pika.exceptions.UnroutableError,
    pika.exceptions.NackError,
    ConnectionError,
)
#: Reason of a message whose decoding or processing raised where nothing should: the
#: last-resort guard, so that no message content can stop the loop.
REASON_UNEXPECTED = "unexpected error in the consumer"


class ConsumerLoop:
    """Consume the queue of one consumer until stopped.

    Up to ``batch_size`` (``OUTBOX["CONSUMER_BATCH_SIZE"]``) deliveries that are already
    waiting are processed in one transaction (``processing.process_batch``) and acknowledged
    after its commit; the loop never waits for a batch to fill.
    ``stop()`` (which the command calls on SIGTERM / SIGINT) lets the batch in hand finish
    and be acknowledged; messages prefetched but not started go back to the queue. With
    ``max_messages`` the loop ends after settling that many; with ``until_idle`` once nothing
    has arrived for that many seconds. A lost connection is re-opened with a growing delay,
    capped by ``OUTBOX["RECONNECT_BACKOFF_MAX_SECONDS"]``; so is a batch held while its
    database is unreachable (``processing.is_database_outage``), which uses no attempt.
    No message content stops the loop: what cannot be decoded, routed or copied is
    dead-lettered on its own.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        *,
        exchange: str | None = None,
        prefetch: int | None = None,
        batch_size: int | None = None,
        max_messages: int | None = None,
        until_idle: float | None = None,
    ) -> None:
        self.spec = spec
        self.settings = ConsumerSettings.from_conf()
        self.topology = topology_for(spec, exchange=exchange, settings=self.settings)
        self.prefetch = prefetch or self.settings.prefetch
        self.batch_size = batch_size or self.settings.batch_size
        self.max_attempts = self.settings.max_attempts
        self.max_messages = max_messages
        self.until_idle = until_idle
        self.settled = 0
        self._stop_requested = threading.Event()
        self._went_idle = False
        self._outages = 0
        # Header values pika would otherwise fail to decode must not look like a lost
        # connection, which redelivers the same message forever.
        install_tolerant_decoding()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"consume-{spec.name}")

    def stop(self) -> None:
        """Ask the loop to finish the message in hand and return. Safe from signal handlers."""
        self._stop_requested.set()

    def run(self) -> int:
        """Consume until stopped, reconnecting as needed; return the number of messages settled."""
        delay = self.settings.reconnect_delay
        try:
            while not self.finished():
                try:
                    _Session(self).run()
                    delay = self.settings.reconnect_delay
                except _CONNECTION_ERRORS as error:
                    if self.finished():
                        break
                    logger.warning(
                        "%s: RabbitMQ connection lost (%s: %s); reconnecting in %.1fs",
                        self.spec.name,
                        type(error).__name__,
                        error,
                        delay,
                    )
                    self._stop_requested.wait(delay)
                    delay = min(delay * 2, self.settings.reconnect_backoff_max)
        finally:
            # The worker thread's database connection would otherwise stay open.
            self._worker.submit(connections.close_all).result()
            self._worker.shutdown()
        return self.settled

    def process_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        """Run on the worker thread for each batch of well-formed messages (distinct ids);
        see ``processing.process_batch``."""
        return process_batch(self.spec, messages)

    def process_message(self, message: IncomingMessage) -> Outcome:
        """Run on the worker thread for one message alone (after ``process_batch`` raised,
        which it should never do); see ``processing.process``."""
        return process(self.spec, message)

    def run_batch(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        """``process_batch``, with the last-resort guard: if it raises, each message is
        processed alone, and one whose processing raises too is dead-lettered by itself."""
        try:
            outcomes = self.process_batch(messages)
            if len(outcomes) != len(messages):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(messages)} messages")
            return outcomes
        except Exception:
            logger.exception(
                "%s: unexpected error processing a batch; processing its %d messages one by one",
                self.spec.name,
                len(messages),
            )
        alone: list[Outcome] = []
        for message in messages:
            try:
                alone.append(self.process_message(message))
            except Exception as error:
                alone.append(_unexpected(self, message.message_id, error, "processing"))
        return alone

    def finished(self, in_hand: int = 0) -> bool:
        """Whether the loop should stop: asked to, idle, or ``max_messages`` settled (counting
        ``in_hand`` deliveries about to be settled)."""
        if self._stop_requested.is_set() or self._went_idle:
            return True
        return self.max_messages is not None and self.settled + in_hand >= self.max_messages

    def submit(self, messages: Sequence[IncomingMessage]) -> Future[list[Outcome]]:
        """Start the batch ``messages`` on the worker thread."""
        return self._worker.submit(self.run_batch, messages)

    def batch_limit(self, in_hand: int = 0) -> int:
        """The largest batch to start now: ``batch_size``, or what is left of ``max_messages``
        besides the ``in_hand`` deliveries about to be settled."""
        if self.max_messages is None:
            return self.batch_size
        return max(1, min(self.batch_size, self.max_messages - self.settled - in_hand))

    def outage_backoff(self) -> float:
        """The wait before trying a held message again after one more database outage error:
        ``CONSUMER_RECONNECT_DELAY`` doubled per consecutive error, capped by
        ``RECONNECT_BACKOFF_MAX_SECONDS``."""
        self._outages += 1
        delay = self.settings.reconnect_delay * 2 ** min(self._outages - 1, 32)
        return float(min(delay, self.settings.reconnect_backoff_max))

    def went_idle(self) -> None:
        """Nothing arrived for ``until_idle`` seconds: end the loop."""
        self._went_idle = True

    def settle(self, channel: BlockingChannel, settled: Sequence[tuple[Delivery, Outcome]]) -> None:
        """Settle deliveries whose transaction has committed (or that ran nothing): send each
        failed or malformed one to its retry or dead-letter queue (confirmed first, so it is
        never lost between the two), then acknowledge the rest with one ``multiple=True``.

        That one ack is exact because every delivery of the channel with a lower tag is
        settled already: batches are taken, and settled, whole and in delivery order, and the
        deliveries behind them have higher tags. If a copy cannot be sent for any reason but
        the connection, its original is rejected without requeue, which the broker routes to
        the same dead-letter queue (with its own ``x-death`` header instead of the
        consumer's): never acknowledged and lost.
        """
        self._outages = 0
        to_ack = [
            delivery.tag
            for delivery, outcome in settled
            if self._send_copy(channel, delivery, outcome)
        ]
        if to_ack:
            channel.basic_ack(max(to_ack), multiple=True)
        self.settled += len(settled)
        self._count(settled)

    def _count(self, settled: Sequence[tuple[Delivery, Outcome]]) -> None:
        name = self.spec.name
        kinds = [outcome.kind for _, outcome in settled]
        metrics.consumer_processed(name, kinds.count("processed"))
        metrics.consumer_duplicates(name, kinds.count("duplicate"))
        metrics.consumer_handler_time(
            name,
            [o.handler_seconds for _, o in settled if o.kind in ("processed", "failed")],
        )

    def _send_copy(self, channel: BlockingChannel, delivery: Delivery, outcome: Outcome) -> bool:
        """Send a failed or malformed ``delivery`` on; whether it is still to be acknowledged
        (False: it was rejected)."""
        if outcome.kind == "failed" and outcome.attempt < self.max_attempts:
            return self.retry(channel, delivery, outcome)
        if outcome.kind in ("failed", "malformed"):
            return self.dead_letter(channel, delivery, outcome)
        return True

    def retry(self, channel: BlockingChannel, delivery: Delivery, outcome: Outcome) -> bool:
        """Send a copy of a failed ``delivery`` to the retry queue of its attempt; whether the
        original is to be acknowledged (False: it was rejected into the dead-letter queue)."""
        queue = self.topology.retry_queue(outcome.attempt)
        if not self._republish(channel, queue, delivery, outcome, retry_headers(outcome)):
            self.dead_lettered(delivery, outcome)
            return False
        metrics.consumer_retried(self.spec.name)
        logger.info(
            "%s: message %s retried after attempt %d",
            self.spec.name,
            delivery.properties.message_id,
            outcome.attempt,
        )
        return True

    def dead_letter(self, channel: BlockingChannel, delivery: Delivery, outcome: Outcome) -> bool:
        """Send a copy of ``delivery`` (failed its last attempt, or malformed) to the
        dead-letter queue; whether the original is to be acknowledged (False: it was
        rejected, which dead-letters it through the broker)."""
        queue = self.topology.dead_letter_queue
        copied = self._republish(channel, queue, delivery, outcome, dead_letter_headers(outcome))
        self.dead_lettered(delivery, outcome)
        if copied:
            logger.error(
                "%s: message %s dead-lettered to %s: %s %s",
                self.spec.name,
                delivery.properties.message_id,
                queue,
                outcome.reason,
                outcome.error_message,
            )
            # Once the broker confirmed the copy: the database record of the dead letter.
            dead_letters.record(self.spec.name, self.topology.queue, delivery, outcome)
        return copied

    def dead_lettered(self, delivery: Delivery, outcome: Outcome) -> None:
        """``delivery`` is in the dead-letter queue now (copied there, or rejected into it
        when the copy failed): the one place every dead letter of this consumer passes, so
        what records dead letters is called from here. ``outcome`` says why."""
        metrics.consumer_dead_lettered(self.spec.name)

    def _republish(
        self,
        channel: BlockingChannel,
        queue: str,
        delivery: Delivery,
        outcome: Outcome,
        extra: dict[str, object],
    ) -> bool:
        """Copy ``delivery`` to ``queue``; on any failure but the connection, reject the
        original into the dead-letter queue and return False."""
        try:
            republish(channel, queue, delivery, consumer=self.spec.name, extra=dict(extra))
        except _CONNECTION_ERRORS:
            raise
        except Exception:
            logger.exception(
                "%s: could not send message %s (%s) to %s; rejecting it into %s",
                self.spec.name,
                delivery.properties.message_id,
                outcome.reason or outcome.kind,
                queue,
                self.topology.dead_letter_queue,
            )
            channel.basic_reject(delivery.tag, requeue=False)
            return False
        return True


class _Session:
    """One connection's worth of consuming: open, declare, read deliveries, settle them."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop
        client_name = f"outbox_consume {loop.spec.name} pid {os.getpid()}"
        self.connection = pika.BlockingConnection(connection_parameters(client_name=client_name))
        # Decoded as they arrive, while the worker runs the batch before them.
        self.waiting: deque[tuple[Delivery, IncomingMessage | Outcome]] = deque()
        self.in_flight: tuple[_Batch, Future[list[Outcome]]] | None = None
        # A batch whose processing met a database outage, and when to try it again: it stays
        # unacknowledged in this process, and nothing else starts before it.
        self.held: _Batch | None = None
        self.resume_at = 0.0
        self.cancelled_by_broker = False
        self.last_activity = time.monotonic()

    def run(self) -> None:
        """Consume until the loop is finished; connection errors propagate to the loop."""
        try:
            channel = self._open_channel()
            while not self._step(channel):
                wait: float = _POLL_SECONDS
                if self.held is not None:
                    wait = min(wait, max(0.0, self.resume_at - time.monotonic()))
                # pika takes a float (types-pika says int).
                self.connection.process_data_events(time_limit=wait)  # type: ignore[arg-type]
        finally:
            self._close()

    def _open_channel(self) -> BlockingChannel:
        loop = self.loop
        channel = self.connection.channel()
        # Copies sent to retry and dead-letter queues are confirmed before the original
        # is acknowledged, so a failing message is never lost between the two.
        channel.confirm_delivery()
        try:
            declare_topology(channel, loop.topology)
        except pika.exceptions.ChannelClosedByBroker as error:
            # e.g. PRECONDITION_FAILED: the queue exists with other arguments. Reconnecting
            # cannot fix that, so it is not treated as a lost connection.
            raise ConsumerSetupError(
                f"cannot declare the queues of consumer {loop.spec.name!r}: {error}"
            ) from error
        channel.basic_qos(prefetch_count=loop.prefetch)
        # The broker cancels the consumer when its queue is deleted; starting over
        # declares the queue again.
        channel.add_on_cancel_callback(self._on_cancel)
        channel.basic_consume(loop.topology.queue, self._on_delivery)
        logger.info(
            "%s: consuming %s (bindings %s)",
            loop.spec.name,
            loop.topology.queue,
            ", ".join(loop.topology.binding_keys),
        )
        return channel

    def _on_delivery(
        self,
        _channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        assert method.delivery_tag is not None
        routing_key = method.routing_key or ""
        if isinstance(routing_key, bytes):  # pika's form of a key that is not UTF-8
            routing_key = routing_key.decode("utf-8", errors="replace")
        delivery = Delivery(method.delivery_tag, routing_key, properties, body)
        self.waiting.append((delivery, self._decode(delivery)))

    def _on_cancel(self, _frame: object) -> None:
        self.cancelled_by_broker = True

    def _step(self, channel: BlockingChannel) -> bool:
        """Settle a finished batch, start the next one; True once the session is over."""
        loop = self.loop
        while True:
            if self.in_flight is not None:
                batch, future = self.in_flight
                if not future.done():
                    return False
                self.in_flight = None
                outcomes = self._outcomes(batch, future)
                outage = next((o for o in outcomes if o.kind == "outage"), None)
                if outage is not None:
                    # Messages of the batch that did commit (processing one at a time) are
                    # skipped by the inbox on the next try.
                    self._hold(batch, outage)
                else:
                    settled = batch.settled(outcomes)
                    # The next batch starts first: the worker processes it while this thread
                    # acknowledges (and sends any retry copies of) the one that committed.
                    self._start_ahead(in_hand=len(settled))
                    loop.settle(channel, settled)
                self.last_activity = time.monotonic()
                continue
            if loop.finished():
                return True
            if self.cancelled_by_broker:
                raise pika.exceptions.ConsumerCancelled(
                    f"RabbitMQ cancelled the consumer of {loop.topology.queue}"
                )
            if self.held is not None:
                if time.monotonic() < self.resume_at:
                    return False  # an outage is not idleness: until_idle does not count it
                batch, self.held = self.held, None
                self._submit(batch)
                continue
            if not self.waiting:
                break
            batch = self._take_batch()
            if batch.messages:
                self._submit(batch)
            else:  # only malformed deliveries: nothing to wait for
                loop.settle(channel, batch.settled([]))
            self.last_activity = time.monotonic()
        if loop.until_idle is not None and time.monotonic() - self.last_activity >= loop.until_idle:
            loop.went_idle()
            return True
        return False

    def _start_ahead(self, *, in_hand: int) -> None:
        """Start the next batch while ``in_hand`` deliveries of the one that committed are not
        settled yet. Not when the loop is to end with them, nor for a batch of malformed
        deliveries alone: settled now, its acknowledgement would cover the unsettled ones."""
        if (
            self.held is not None
            or self.cancelled_by_broker
            or not self.waiting
            or self.loop.finished(in_hand)
        ):
            return
        batch = self._take_batch(in_hand=in_hand)
        if batch.messages:
            self._submit(batch)
        else:
            self.waiting.extendleft(reversed(batch.deliveries))

    def _take_batch(self, *, in_hand: int = 0) -> _Batch:
        """The deliveries waiting now, up to the batch limit; a repeated message id ends the
        batch (the copy is the next batch's, after this one committed)."""
        batch = _Batch()
        limit = self.loop.batch_limit(in_hand)
        ids: set[str] = set()
        waiting = self.waiting
        while waiting and len(batch.deliveries) < limit:
            delivery, decoded = waiting[0]
            if isinstance(decoded, IncomingMessage):
                if decoded.message_id in ids:
                    break
                ids.add(decoded.message_id)
            waiting.popleft()
            batch.add(delivery, decoded)
        return batch

    def _decode(self, delivery: Delivery) -> IncomingMessage | Outcome:
        try:
            decoded = decode(self.loop.spec, delivery)
        except Exception as error:
            return _unexpected(self.loop, delivery.properties.message_id, error, "decoding")
        if isinstance(decoded, str):
            return Outcome("malformed", reason=decoded)
        return decoded

    def _submit(self, batch: _Batch) -> None:
        future = self.loop.submit(batch.messages)
        future.add_done_callback(lambda _done: self._wake())  # the main thread settles it
        self.in_flight = (batch, future)

    def _outcomes(self, batch: _Batch, future: Future[list[Outcome]]) -> list[Outcome]:
        try:
            return future.result()
        except Exception as error:  # run_batch catches everything; this is a bug
            return [
                _unexpected(self.loop, message.message_id, error, "processing")
                for message in batch.messages
            ]

    def _hold(self, batch: _Batch, outcome: Outcome) -> None:
        delay = self.loop.outage_backoff()
        logger.warning(
            "%s: database unavailable (%s: %s); %d message(s) kept, no attempt counted,"
            " trying again in %.1fs",
            self.loop.spec.name,
            outcome.error_type,
            outcome.error_message,
            len(batch.messages),
            delay,
        )
        self.held = batch
        self.resume_at = time.monotonic() + delay

    def _wake(self) -> None:
        # If the connection is gone, the main thread notices on its own.
        with contextlib.suppress(*_CONNECTION_ERRORS):
            self.connection.add_callback_threadsafe(lambda: None)

    def _close(self) -> None:
        if self.in_flight is not None:
            # Never run two batches at once, not even across a reconnect: wait for this
            # one. Its delivery tags die with the channel; the broker redelivers the
            # messages and the inbox skips those whose batch committed.
            self.in_flight[1].exception()  # waits; an error was the message's, not ours
        if self.connection.is_open:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                self.connection.close()


class _Batch:
    """Deliveries taken together, in delivery order: the well-formed ones are processed in one
    transaction, the malformed ones (already with their outcome) are settled with them."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[Delivery, IncomingMessage | Outcome]] = []
        self.messages: list[IncomingMessage] = []

    def add(self, delivery: Delivery, decoded: IncomingMessage | Outcome) -> None:
        self.deliveries.append((delivery, decoded))
        if isinstance(decoded, IncomingMessage):
            self.messages.append(decoded)

    def settled(self, outcomes: Sequence[Outcome]) -> list[tuple[Delivery, Outcome]]:
        """Each delivery with its outcome: ``outcomes`` are those of ``messages``, in order."""
        remaining = iter(outcomes)
        return [
            (delivery, decoded if isinstance(decoded, Outcome) else next(remaining))
            for delivery, decoded in self.deliveries
        ]


def _unexpected(loop: ConsumerLoop, message_id: object, error: Exception, stage: str) -> Outcome:
    logger.error(
        "%s: unexpected error %s message %s; dead-lettering it",
        loop.spec.name,
        stage,
        message_id,
        exc_info=error,
    )
    return Outcome(
        "malformed",
        reason=f"{REASON_UNEXPECTED} {stage} it: {type(error).__name__}: {error}"[:MAX_ERROR_CHARS],
        error_type=f"{type(error).__module__}.{type(error).__qualname__}",
        error_message=str(error)[:MAX_ERROR_CHARS],
        traceback="".join(format_exception(error)),
    )


def consume(
    consumer: str,
    *,
    exchange: str | None = None,
    prefetch: int | None = None,
    batch_size: int | None = None,
    max_messages: int | None = None,
    until_idle: float | None = None,
) -> int:
    """Run ``consumer`` in this thread until ``max_messages`` are settled or nothing arrived
    for ``until_idle`` seconds (at least one should be given); return the number settled.

    For scripts and tests; services run ``manage.py outbox_consume``, which adds signal
    handling.
    """
    load_handlers()
    spec = registry.get(consumer)
    loop = ConsumerLoop(
        spec,
        exchange=exchange,
        prefetch=prefetch,
        batch_size=batch_size,
        max_messages=max_messages,
        until_idle=until_idle,
    )
    return loop.run()

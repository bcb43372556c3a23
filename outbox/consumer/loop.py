"""The consume loop behind ``manage.py outbox_consume``: one consumer, one queue, one message
at a time, acknowledged only after its transaction committed.

Threads: the main thread owns the pika ``BlockingConnection`` (pika is not thread-safe) and
keeps reading the socket, so heartbeats are answered however long a handler runs. Handlers
run one at a time on a single worker thread, which keeps its own database connection; it
wakes the main thread with ``add_callback_threadsafe`` when a message is done.

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
from outbox.consumer.processing import MAX_ERROR_CHARS, Delivery, Outcome, decode, process
from outbox.consumer.registry import ConsumerSpec, IncomingMessage, load_handlers, registry
from outbox.consumer.republish import dead_letter_headers, republish, retry_headers
from outbox.consumer.settings import ConsumerSettings
from outbox.consumer.topology import declare_topology, topology_for
from outbox.exceptions import ConsumerSetupError

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

    ``stop()`` (which the command calls on SIGTERM / SIGINT) lets the message in hand finish
    and be acknowledged; messages prefetched but not started go back to the queue. With
    ``max_messages`` the loop ends after settling that many; with ``until_idle`` once nothing
    has arrived for that many seconds. A lost connection is re-opened with a growing delay,
    capped by ``OUTBOX["RECONNECT_BACKOFF_MAX_SECONDS"]``; so is a message held while its
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
        max_messages: int | None = None,
        until_idle: float | None = None,
    ) -> None:
        self.spec = spec
        self.settings = ConsumerSettings.from_conf()
        self.topology = topology_for(spec, exchange=exchange, settings=self.settings)
        self.prefetch = prefetch or self.settings.prefetch
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

    def process_message(self, message: IncomingMessage) -> Outcome:
        """Run on the worker thread for each well-formed message; see ``process``."""
        return process(self.spec, message)

    def finished(self) -> bool:
        """Whether the loop should stop: asked to, idle, or ``max_messages`` settled."""
        if self._stop_requested.is_set() or self._went_idle:
            return True
        return self.max_messages is not None and self.settled >= self.max_messages

    def submit(self, message: IncomingMessage) -> Future[Outcome]:
        """Start ``message`` on the worker thread."""
        return self._worker.submit(self.process_message, message)

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

    def settle(self, channel: BlockingChannel, delivery: Delivery, outcome: Outcome) -> None:
        """Acknowledge ``delivery``, after sending a failed or malformed one to its retry or
        dead-letter queue (confirmed first, so it is never lost between the two).

        If the copy cannot be sent for any reason but the connection, the original is rejected
        without requeue, which the broker routes to the same dead-letter queue (with its own
        ``x-death`` header instead of the consumer's): never acknowledged and lost.
        """
        self._outages = 0
        try:
            self._send_copy(channel, delivery, outcome)
        except _CONNECTION_ERRORS:
            raise
        except Exception:
            logger.exception(
                "%s: could not send message %s (%s) to its retry or dead-letter queue;"
                " rejecting it into %s",
                self.spec.name,
                delivery.properties.message_id,
                outcome.reason or outcome.kind,
                self.topology.dead_letter_queue,
            )
            channel.basic_reject(delivery.tag, requeue=False)
        else:
            channel.basic_ack(delivery.tag)
        self.settled += 1

    def _send_copy(self, channel: BlockingChannel, delivery: Delivery, outcome: Outcome) -> None:
        if outcome.kind == "failed" and outcome.attempt < self.max_attempts:
            queue = self.topology.retry_queue(outcome.attempt)
            self._republish(channel, queue, delivery, retry_headers(outcome))
            logger.info(
                "%s: message %s retried after attempt %d",
                self.spec.name,
                delivery.properties.message_id,
                outcome.attempt,
            )
        elif outcome.kind in ("failed", "malformed"):
            queue = self.topology.dead_letter_queue
            self._republish(channel, queue, delivery, dead_letter_headers(outcome))
            logger.error(
                "%s: message %s dead-lettered to %s: %s %s",
                self.spec.name,
                delivery.properties.message_id,
                queue,
                outcome.reason,
                outcome.error_message,
            )
            dead_letters.record(self.spec.name, self.topology.queue, delivery, outcome)

    def _republish(
        self, channel: BlockingChannel, queue: str, delivery: Delivery, extra: dict[str, object]
    ) -> None:
        republish(channel, queue, delivery, consumer=self.spec.name, extra=dict(extra))


class _Session:
    """One connection's worth of consuming: open, declare, read deliveries, settle them."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop
        client_name = f"outbox_consume {loop.spec.name} pid {os.getpid()}"
        self.connection = pika.BlockingConnection(connection_parameters(client_name=client_name))
        self.waiting: deque[Delivery] = deque()
        self.in_flight: tuple[Delivery, IncomingMessage, Future[Outcome]] | None = None
        # A message whose processing met a database outage, and when to try it again: it
        # stays unacknowledged in this process, and nothing else starts before it.
        self.held: tuple[Delivery, IncomingMessage] | None = None
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
        self.waiting.append(delivery)

    def _on_cancel(self, _frame: object) -> None:
        self.cancelled_by_broker = True

    def _step(self, channel: BlockingChannel) -> bool:
        """Settle a finished message, start the next one; True once the session is over."""
        loop = self.loop
        while True:
            if self.in_flight is not None:
                delivery, message, future = self.in_flight
                if not future.done():
                    return False
                self.in_flight = None
                outcome = self._outcome(delivery, future)
                if outcome.kind == "outage":
                    self._hold(delivery, message, outcome)
                else:
                    loop.settle(channel, delivery, outcome)
                self.last_activity = time.monotonic()
            if loop.finished():
                return True
            if self.cancelled_by_broker:
                raise pika.exceptions.ConsumerCancelled(
                    f"RabbitMQ cancelled the consumer of {loop.topology.queue}"
                )
            if self.held is not None:
                if time.monotonic() < self.resume_at:
                    return False  # an outage is not idleness: until_idle does not count it
                delivery, message = self.held
                self.held = None
                self._submit(delivery, message)
                continue
            if not self.waiting:
                break
            self._start(channel, self.waiting.popleft())
            self.last_activity = time.monotonic()
        if loop.until_idle is not None and time.monotonic() - self.last_activity >= loop.until_idle:
            loop.went_idle()
            return True
        return False

    def _start(self, channel: BlockingChannel, delivery: Delivery) -> None:
        try:
            decoded = decode(self.loop.spec, delivery)
        except Exception as error:
            self.loop.settle(channel, delivery, _unexpected(self.loop, delivery, error, "decoding"))
            return
        if isinstance(decoded, str):
            self.loop.settle(channel, delivery, Outcome("malformed", reason=decoded))
            return
        self._submit(delivery, decoded)

    def _submit(self, delivery: Delivery, message: IncomingMessage) -> None:
        future = self.loop.submit(message)
        future.add_done_callback(lambda _done: self._wake())  # the main thread settles it
        self.in_flight = (delivery, message, future)

    def _outcome(self, delivery: Delivery, future: Future[Outcome]) -> Outcome:
        try:
            return future.result()
        except Exception as error:  # process() catches the handlers' errors; this is a bug
            return _unexpected(self.loop, delivery, error, "processing")

    def _hold(self, delivery: Delivery, message: IncomingMessage, outcome: Outcome) -> None:
        delay = self.loop.outage_backoff()
        logger.warning(
            "%s: database unavailable (%s: %s); message %s kept, its attempt not counted,"
            " trying again in %.1fs",
            self.loop.spec.name,
            outcome.error_type,
            outcome.error_message,
            message.message_id,
            delay,
        )
        self.held = (delivery, message)
        self.resume_at = time.monotonic() + delay

    def _wake(self) -> None:
        # If the connection is gone, the main thread notices on its own.
        with contextlib.suppress(*_CONNECTION_ERRORS):
            self.connection.add_callback_threadsafe(lambda: None)

    def _close(self) -> None:
        if self.in_flight is not None:
            # Never run two handlers at once, not even across a reconnect: wait for this
            # one. Its delivery tag dies with the channel; the broker redelivers the
            # message and the inbox skips it if the handler committed.
            self.in_flight[2].exception()  # waits; an error was the message's, not ours
        if self.connection.is_open:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                self.connection.close()


def _unexpected(loop: ConsumerLoop, delivery: Delivery, error: Exception, stage: str) -> Outcome:
    logger.error(
        "%s: unexpected error %s message %s; dead-lettering it",
        loop.spec.name,
        stage,
        delivery.properties.message_id,
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
        max_messages=max_messages,
        until_idle=until_idle,
    )
    return loop.run()

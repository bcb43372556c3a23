"""The consume loop behind ``manage.py outbox_consume``: one consumer, one queue, one message
at a time, acknowledged only after its transaction committed.

Threads: the main thread owns the pika ``BlockingConnection`` (pika is not thread-safe) and
keeps reading the socket, so heartbeats are answered however long a handler runs. Handlers
run one at a time on a single worker thread, which keeps its own database connection; it
wakes the main thread with ``add_callback_threadsafe`` when a message is done.

Queues of consumer ``c`` on exchange ``e`` (all durable, routed through the default exchange):
``e.c`` bound to ``e`` with the handlers' patterns; ``e.c.retry.<ms>ms``, one per retry delay,
whose messages expire back into ``e.c`` (a queue-wide TTL, because RabbitMQ only expires a
per-message TTL at the head of the queue, where a long delay would hold up shorter ones);
``e.c.dead``, the dead-letter queue, also ``e.c``'s ``x-dead-letter-routing-key``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pika
import pika.exceptions
from django.db import connections, router, transaction
from pika.adapters.blocking_connection import BlockingChannel
from pika.exchange_type import ExchangeType
from pika.spec import Basic, BasicProperties

from outbox import conf, tracing, wire
from outbox.broker import connection_parameters
from outbox.consumer import inbox
from outbox.consumer.registry import ConsumerSpec, IncomingMessage, load_handlers, registry
from outbox.models import InboxMessage

logger = logging.getLogger("outbox.consumer")

#: Handler runs of this message so far, set on copies sent to a retry or dead-letter queue.
HEADER_ATTEMPTS = "x-outbox-attempts"
#: The routing key the producer used; a retried copy arrives with the queue's name instead.
HEADER_ROUTING_KEY = "x-outbox-routing-key"
HEADER_CONSUMER = "x-outbox-consumer"
#: Why a message was dead-lettered: "handler failed" or what is malformed about it.
HEADER_REASON = "x-outbox-dead-letter-reason"
HEADER_ERROR_TYPE = "x-outbox-error-type"
HEADER_ERROR_MESSAGE = "x-outbox-error-message"
HEADER_DEAD_LETTERED_AT = "x-outbox-dead-lettered-at"

REASON_HANDLER_FAILED = "handler failed"
_MAX_ERROR_CHARS = 2000
_MAX_RECONNECT_DELAY = 30.0
# Headers RabbitMQ writes when it dead-letters; copies we republish start a fresh history.
_BROKER_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
_OWN_HEADERS = "x-outbox-"
# How long the main thread blocks on the socket before looking at its stop flag again.
_POLL_SECONDS = 1

_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
)


class ConsumerSetupError(RuntimeError):
    """RabbitMQ refused the consumer's exchange, queues or bindings (e.g. a queue exists with
    other arguments); the consumer stops instead of retrying."""


@dataclass(frozen=True)
class Topology:
    """Names of a consumer's exchange and queues, and its retry schedule."""

    exchange: str
    queue: str
    binding_keys: tuple[str, ...]
    retry_delays_ms: tuple[int, ...]

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dead"

    def retry_queue(self, retry_number: int) -> str:
        """The queue that holds a message before its ``retry_number``-th retry (1-based)."""
        return f"{self.queue}.retry.{self.retry_delays_ms[retry_number - 1]}ms"


def topology_for(spec: ConsumerSpec, *, exchange: str | None = None) -> Topology:
    """The queue names and retry delays of ``spec`` on ``exchange`` (``OUTBOX["EXCHANGE"]``).

    The queue is named ``<exchange>.<consumer>``, so one service can consume several
    exchanges, and parallel test runs with private exchanges never share a queue.
    """
    exchange = exchange or conf.get("EXCHANGE")
    first = float(conf.get("CONSUMER_RETRY_DELAY"))
    backoff = float(conf.get("CONSUMER_RETRY_BACKOFF"))
    retries = conf.get("CONSUMER_MAX_ATTEMPTS") - 1
    delays = tuple(max(1, round(first * backoff**number * 1000)) for number in range(retries))
    return Topology(exchange, f"{exchange}.{spec.name}", spec.binding_keys, delays)


def declare_topology(channel: BlockingChannel, topology: Topology) -> None:
    """Declare the exchange, the consumer's queue with its bindings, retry and dead-letter
    queues. Idempotent; run by every consumer start, and worth running once before the first
    producer publishes, since RabbitMQ drops messages that match no queue."""
    channel.exchange_declare(topology.exchange, exchange_type=ExchangeType("topic"), durable=True)
    channel.queue_declare(topology.dead_letter_queue, durable=True)
    channel.queue_declare(
        topology.queue,
        durable=True,
        arguments={
            # Anything the broker itself dead-letters (a reject, a length limit set by a
            # policy) ends in the same dead-letter queue as the consumer's own dead letters.
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": topology.dead_letter_queue,
        },
    )
    for key in topology.binding_keys:
        channel.queue_bind(topology.queue, topology.exchange, routing_key=key)
    for delay_ms in dict.fromkeys(topology.retry_delays_ms):
        channel.queue_declare(
            f"{topology.queue}.retry.{delay_ms}ms",
            durable=True,
            arguments={
                "x-message-ttl": delay_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": topology.queue,
            },
        )


def declare(consumer: str, *, exchange: str | None = None) -> Topology:
    """Declare ``consumer``'s exchange, queues and bindings on a short connection.

    Run it (``outbox_consume <consumer> --declare-only``) at deploy time, before the first
    message for this consumer is published: until its queue exists, RabbitMQ drops them.
    """
    load_handlers()
    topology = topology_for(registry.get(consumer), exchange=exchange)
    connection = pika.BlockingConnection(
        connection_parameters(client_name=f"outbox_consume {consumer} --declare-only")
    )
    try:
        declare_topology(connection.channel(), topology)
    finally:
        connection.close()
    return topology


@dataclass(frozen=True)
class Delivery:
    tag: int
    routing_key: str
    properties: BasicProperties
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery; decides how the main thread settles it."""

    kind: Literal["processed", "duplicate", "failed", "malformed"]
    attempt: int = 1
    reason: str = ""
    error_type: str = ""
    error_message: str = ""


def decode(spec: ConsumerSpec, delivery: Delivery) -> IncomingMessage | str:
    """The message in ``delivery``, or the reason it is malformed."""
    properties = delivery.properties
    headers = dict(properties.headers or {})
    if not properties.message_id:
        return "no message_id property"
    if not properties.type:
        return "no type property (the event type)"
    try:
        payload = json.loads(delivery.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        return f"body is not UTF-8 JSON: {error}"
    if not isinstance(payload, dict):
        return f"body is a JSON {type(payload).__name__}, not an object"
    if not spec.handlers_for(properties.type):
        return f"consumer {spec.name!r} has no handler for event type {properties.type!r}"
    attempts = headers.get(HEADER_ATTEMPTS, 0)
    timestamp = properties.timestamp
    return IncomingMessage(
        consumer=spec.name,
        message_id=str(properties.message_id),
        event_type=str(properties.type),
        payload=payload,
        headers={
            key: value
            for key, value in headers.items()
            if not key.startswith((_OWN_HEADERS, *_BROKER_DEATH_HEADERS))
        },
        routing_key=str(headers.get(HEADER_ROUTING_KEY) or delivery.routing_key),
        aggregate_type=str(headers.get("aggregate_type") or ""),
        aggregate_id=str(headers.get("aggregate_id") or ""),
        timestamp=datetime.fromtimestamp(timestamp, UTC) if timestamp else None,
        attempt=(attempts if isinstance(attempts, int) else 0) + 1,
    )


def process(spec: ConsumerSpec, message: IncomingMessage) -> Outcome:
    """Run ``message``'s handlers once, in one transaction with its inbox record.

    Never raises: a handler's exception rolls the transaction back and becomes a "failed"
    outcome carrying the error.
    """
    try:
        # The span (a no-op without OpenTelemetry) continues the producer's trace, so spans and
        # outbox messages of the handler join it too.
        with (
            tracing.continue_trace(message.headers, name=f"{spec.name} {message.event_type}"),
            transaction.atomic(using=router.db_for_write(InboxMessage)),
        ):
            if not inbox.claim(spec.name, message.message_id, event_type=message.event_type):
                return Outcome("duplicate", message.attempt)
            for func in spec.handlers_for(message.event_type):
                func(message)
    except Exception as error:
        logger.warning(
            "%s: handler failed on %s %s (attempt %d)",
            spec.name,
            message.event_type,
            message.message_id,
            message.attempt,
            exc_info=True,
        )
        _drop_broken_database_connections()
        return Outcome(
            "failed",
            message.attempt,
            reason=REASON_HANDLER_FAILED,
            error_type=f"{type(error).__module__}.{type(error).__qualname__}",
            error_message=str(error)[:_MAX_ERROR_CHARS],
        )
    return Outcome("processed", message.attempt)


class ConsumerLoop:
    """Consume the queue of one consumer until stopped.

    ``stop()`` (which the command calls on SIGTERM / SIGINT) lets the message in hand finish
    and be acknowledged; messages prefetched but not started go back to the queue. With
    ``max_messages`` the loop ends after settling that many; with ``until_idle`` once nothing
    has arrived for that many seconds. A lost connection is re-opened with a growing delay.
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
        self.topology = topology_for(spec, exchange=exchange)
        self.prefetch = prefetch or conf.get("CONSUMER_PREFETCH")
        self.max_attempts: int = conf.get("CONSUMER_MAX_ATTEMPTS")
        self.max_messages = max_messages
        self.until_idle = until_idle
        self.settled = 0
        self._stop_requested = threading.Event()
        self._went_idle = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"consume-{spec.name}")

    def stop(self) -> None:
        """Ask the loop to finish the message in hand and return. Safe from signal handlers."""
        self._stop_requested.set()

    def run(self) -> int:
        """Consume until stopped, reconnecting as needed; return the number of messages settled."""
        delay = float(conf.get("CONSUMER_RECONNECT_DELAY"))
        try:
            while not self._finished():
                try:
                    self._consume_on_new_connection()
                    delay = float(conf.get("CONSUMER_RECONNECT_DELAY"))
                except _CONNECTION_ERRORS as error:
                    if self._finished():
                        break
                    logger.warning(
                        "%s: RabbitMQ connection lost (%s: %s); reconnecting in %.1fs",
                        self.spec.name,
                        type(error).__name__,
                        error,
                        delay,
                    )
                    self._stop_requested.wait(delay)
                    delay = min(delay * 2, _MAX_RECONNECT_DELAY)
        finally:
            # The worker thread's database connection would otherwise stay open.
            self._worker.submit(connections.close_all).result()
            self._worker.shutdown()
        return self.settled

    def process_message(self, message: IncomingMessage) -> Outcome:
        """Run on the worker thread for each well-formed message; see ``process``."""
        return process(self.spec, message)

    def _finished(self) -> bool:
        if self._stop_requested.is_set() or self._went_idle:
            return True
        return self.max_messages is not None and self.settled >= self.max_messages

    def _consume_on_new_connection(self) -> None:
        client_name = f"outbox_consume {self.spec.name} pid {os.getpid()}"
        connection = pika.BlockingConnection(connection_parameters(client_name=client_name))
        in_flight: tuple[Delivery, Future[Outcome]] | None = None
        try:
            channel = connection.channel()
            # Copies sent to retry and dead-letter queues are confirmed before the original
            # is acknowledged, so a failing message is never lost between the two.
            channel.confirm_delivery()
            try:
                declare_topology(channel, self.topology)
            except pika.exceptions.ChannelClosedByBroker as error:
                # e.g. PRECONDITION_FAILED: the queue exists with other arguments. Reconnecting
                # cannot fix that, so it is not treated as a lost connection.
                raise ConsumerSetupError(
                    f"cannot declare the queues of consumer {self.spec.name!r}: {error}"
                ) from error
            channel.basic_qos(prefetch_count=self.prefetch)
            waiting: deque[Delivery] = deque()

            def on_delivery(
                _channel: BlockingChannel,
                method: Basic.Deliver,
                properties: BasicProperties,
                body: bytes,
            ) -> None:
                assert method.delivery_tag is not None
                waiting.append(
                    Delivery(method.delivery_tag, method.routing_key or "", properties, body)
                )

            cancelled_by_broker: list[object] = []
            # The broker cancels the consumer when its queue is deleted; starting over
            # declares the queue again.
            channel.add_on_cancel_callback(cancelled_by_broker.append)
            channel.basic_consume(self.topology.queue, on_delivery)
            logger.info(
                "%s: consuming %s (bindings %s)",
                self.spec.name,
                self.topology.queue,
                ", ".join(self.topology.binding_keys),
            )
            last_activity = time.monotonic()
            while True:
                if in_flight is not None and in_flight[1].done():
                    delivery, future = in_flight
                    in_flight = None
                    self._settle(channel, delivery, future.result())
                    last_activity = time.monotonic()
                if in_flight is None:
                    if self._finished():
                        return
                    if cancelled_by_broker:
                        raise pika.exceptions.ConsumerCancelled(
                            f"RabbitMQ cancelled the consumer of {self.topology.queue}"
                        )
                    if waiting:
                        delivery = waiting.popleft()
                        decoded = decode(self.spec, delivery)
                        if isinstance(decoded, str):
                            self._settle(channel, delivery, Outcome("malformed", reason=decoded))
                        else:
                            future = self._worker.submit(self.process_message, decoded)
                            future.add_done_callback(
                                lambda _done: _wake(connection)  # main thread settles it
                            )
                            in_flight = (delivery, future)
                        last_activity = time.monotonic()
                        continue
                    if (
                        self.until_idle is not None
                        and time.monotonic() - last_activity >= self.until_idle
                    ):
                        self._went_idle = True
                        return
                connection.process_data_events(time_limit=_POLL_SECONDS)
        finally:
            if in_flight is not None:
                # Never run two handlers at once, not even across a reconnect: wait for this
                # one. Its delivery tag dies with the channel; the broker redelivers the
                # message and the inbox skips it if the handler committed.
                in_flight[1].result()
            if connection.is_open:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    connection.close()

    def _settle(self, channel: BlockingChannel, delivery: Delivery, outcome: Outcome) -> None:
        if outcome.kind == "failed" and outcome.attempt < self.max_attempts:
            self._republish(
                channel,
                self.topology.retry_queue(outcome.attempt),
                delivery,
                {
                    HEADER_ATTEMPTS: outcome.attempt,
                    HEADER_ERROR_TYPE: outcome.error_type,
                    HEADER_ERROR_MESSAGE: outcome.error_message,
                },
            )
            logger.info(
                "%s: message %s retried after attempt %d",
                self.spec.name,
                delivery.properties.message_id,
                outcome.attempt,
            )
        elif outcome.kind in ("failed", "malformed"):
            headers: dict[str, Any] = {
                HEADER_REASON: outcome.reason,
                HEADER_DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
            }
            if outcome.kind == "failed":
                headers[HEADER_ATTEMPTS] = outcome.attempt
                headers[HEADER_ERROR_TYPE] = outcome.error_type
                headers[HEADER_ERROR_MESSAGE] = outcome.error_message
            self._republish(channel, self.topology.dead_letter_queue, delivery, headers)
            logger.error(
                "%s: message %s dead-lettered to %s: %s %s",
                self.spec.name,
                delivery.properties.message_id,
                self.topology.dead_letter_queue,
                outcome.reason,
                outcome.error_message,
            )
        channel.basic_ack(delivery.tag)
        self.settled += 1

    def _republish(
        self, channel: BlockingChannel, queue: str, delivery: Delivery, extra: dict[str, Any]
    ) -> None:
        original = delivery.properties
        headers = {
            key: value
            for key, value in (original.headers or {}).items()
            if not key.startswith(_BROKER_DEATH_HEADERS)
        }
        headers.setdefault(HEADER_ROUTING_KEY, delivery.routing_key)
        headers[HEADER_CONSUMER] = self.spec.name
        headers.update(extra)
        properties = BasicProperties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=headers,
            delivery_mode=wire.PERSISTENT,
            priority=original.priority,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            message_id=original.message_id,
            timestamp=original.timestamp,
            type=original.type,
            app_id=original.app_id,
        )
        # mandatory: a missing queue raises UnroutableError instead of dropping the copy; the
        # loop then reconnects, which declares the queues again.
        channel.basic_publish("", queue, delivery.body, properties, mandatory=True)


def _wake(connection: pika.BlockingConnection) -> None:
    # If the connection is gone, the main thread notices on its own.
    with contextlib.suppress(*_CONNECTION_ERRORS):
        connection.add_callback_threadsafe(lambda: None)


def _drop_broken_database_connections() -> None:
    # A handler error may come from a lost database connection (PostgreSQL restarted). Close
    # it so that the next message opens a fresh one instead of failing the same way.
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.is_usable():
            connection.close()


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

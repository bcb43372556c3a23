"""A consumer's exchange and queues on RabbitMQ, and declaring them.

Queues of consumer ``c`` on exchange ``e`` (all durable, routed through the default exchange):
``e.c`` bound to ``e`` with the handlers' patterns; ``e.c.retry.<ms>ms``, one per retry delay,
whose messages expire back into ``e.c`` (a queue-wide TTL, because RabbitMQ only expires a
per-message TTL at the head of the queue, where a long delay would hold up shorter ones);
``e.c.dead``, the dead-letter queue, also ``e.c``'s ``x-dead-letter-routing-key``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exchange_type import ExchangeType

from outbox.broker import connection_parameters
from outbox.consumer.registry import ConsumerSpec, load_handlers, registry
from outbox.consumer.settings import ConsumerSettings


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


def topology_for(
    spec: ConsumerSpec,
    *,
    exchange: str | None = None,
    settings: ConsumerSettings | None = None,
) -> Topology:
    """The queue names and retry delays of ``spec`` on ``exchange`` (``OUTBOX["EXCHANGE"]``).

    The queue is named ``<exchange>.<consumer>``, so one service can consume several
    exchanges, and parallel test runs with private exchanges never share a queue.
    """
    settings = settings or ConsumerSettings.from_conf()
    exchange = exchange or settings.exchange
    return Topology(
        exchange, f"{exchange}.{spec.name}", spec.binding_keys, settings.retry_delays_ms()
    )


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

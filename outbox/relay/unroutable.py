"""The first unroutable message of an exchange and routing key, said loudly.

RabbitMQ accepts a message that no queue is bound for, confirms it and drops it (returning it
to the publisher). On a first try that is almost always "the consumer's queue was not declared
yet". The relay retries such rows and logs each batch at WARNING; this module adds one ERROR
line per exchange and routing key per relay (a worker process runs one relay) that names
both and says how to declare the queue, so that a new user's first publish never fades into
a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from outbox import conf
from outbox.wire import topic_matches

if TYPE_CHECKING:
    from outbox.relay.store import ClaimedMessage

__all__ = ["UnroutableReporter", "declare_hint"]

logger = logging.getLogger("outbox.relay")


class UnroutableReporter:
    """Logs the first unroutable message of each (exchange, routing key) at ERROR."""

    def __init__(self) -> None:
        self._reported: set[tuple[str, str]] = set()

    def report(self, messages: Iterable[ClaimedMessage], *, relay: str, recorded: bool) -> None:
        """``messages``: the unroutable messages of a batch; ``recorded``: whether they are
        marked published (``ON_UNROUTABLE = "record"``) rather than retried."""
        fate = "recorded as published" if recorded else "the row is retried, then marked failed"
        for message in messages:
            exchange, routing_key = message.exchange, message.routing_key
            message_id = str(message.message_id)
            if (exchange, routing_key) in self._reported:
                continue
            self._reported.add((exchange, routing_key))
            logger.error(
                "no queue is bound to exchange %r for routing key %r: RabbitMQ dropped message"
                " %s (%s); declare the consumer's queue before publishing: %s",
                exchange,
                routing_key,
                message_id,
                fate,
                declare_hint(exchange, routing_key),
                extra={
                    "event": "first_unroutable",
                    "relay": relay,
                    "exchange": exchange,
                    "routing_key": routing_key,
                    "message_ids": [message_id],
                },
            )


def declare_hint(exchange: str, routing_key: str) -> str:
    """The command that declares a queue for ``routing_key`` on ``exchange``: it names the
    consumers of this project whose bindings match, if their handlers are loaded."""
    from outbox.consumer.registry import registry

    consumers = [
        name
        for name in registry.names()
        if any(topic_matches(key, routing_key) for key in registry.get(name).binding_keys)
    ]
    option = "" if exchange == conf.get_str("EXCHANGE") else f" --exchange {exchange}"
    names = consumers or ["<consumer>"]
    return " or ".join(
        f"python manage.py outbox_consume {name} --declare-only{option}" for name in names
    )

"""Consumers: integration events from RabbitMQ to handlers, exactly once per message id.

- ``registry``: ``@integration_handler`` and which handlers each consumer runs;
- ``inbox``: the inbox record that makes a handler's effects happen once;
- ``settings``: the consumer's typed settings, read once;
- ``topology``: a consumer's exchange, queue, retry and dead-letter queues, and declaring them;
- ``processing``: decoding a delivery and running its handlers with the inbox record;
- ``republish``: copies sent to the retry and dead-letter queues;
- ``fields``: header values of other AMQP clients, read tolerantly and copied safely;
- ``loop``: the consume loop (connection, worker thread, reconnects).

Names are exported lazily: ``loop`` and ``processing`` need the models, which cannot be
imported while Django is still loading the apps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from outbox.common.lazy import lazy_exports

if TYPE_CHECKING:
    from outbox.consumer.inbox import claim, idempotent, purge_inbox
    from outbox.consumer.loop import ConsumerLoop, consume
    from outbox.consumer.registry import IncomingMessage, integration_handler, registry
    from outbox.consumer.topology import Topology, declare

__all__ = [
    "ConsumerLoop",
    "IncomingMessage",
    "Topology",
    "claim",
    "consume",
    "declare",
    "idempotent",
    "integration_handler",
    "purge_inbox",
    "registry",
]

_LAZY = {
    "ConsumerLoop": "outbox.consumer.loop",
    "consume": "outbox.consumer.loop",
    "IncomingMessage": "outbox.consumer.registry",
    "integration_handler": "outbox.consumer.registry",
    "registry": "outbox.consumer.registry",
    "Topology": "outbox.consumer.topology",
    "declare": "outbox.consumer.topology",
    "claim": "outbox.consumer.inbox",
    "idempotent": "outbox.consumer.inbox",
    "purge_inbox": "outbox.consumer.inbox",
}


__getattr__ = lazy_exports(__name__, _LAZY)

"""The relay: committed outbox rows to the broker, at least once, in per-key order.

- ``store``: the database side (claim, mark published, schedule a retry, release);
- ``publishers``: the broker side (RabbitMQ with pipelined confirms, in-memory for tests);
- ``loop``: the ``Relay`` that runs claim -> publish -> settle, batch after batch.
"""

from outbox.relay.loop import BatchResult, DrainResult, Relay, RelaySettings

__all__ = ["BatchResult", "DrainResult", "Relay", "RelaySettings"]

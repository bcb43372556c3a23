"""The relay: committed outbox rows to the broker, at least once, in per-key order.

- ``store``: the store protocol and ``store_for``; ``postgresql`` and ``orm`` implement it;
- ``listener``: LISTEN/NOTIFY wake-ups when rows commit;
- ``publishers``: the broker side (RabbitMQ with pipelined confirms, in-memory for tests);
- ``loop``: the ``Relay`` that runs claim -> publish -> settle, batch after batch.
"""

from outbox.relay.loop import BatchResult, DrainResult, Relay, RelaySettings

__all__ = ["BatchResult", "DrainResult", "Relay", "RelaySettings"]

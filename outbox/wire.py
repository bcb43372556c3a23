"""The wire format on RabbitMQ (../shared/DESIGN.md, "Wire format"): what every module that
builds or reads an AMQP message agrees on.

The relay's publisher and the consumer (which republishes to retry and dead-letter queues)
both take their constants from here, and topic matching (which binding routes which key)
is written once.
"""

from __future__ import annotations

__all__ = [
    "AGGREGATE_ID_HEADER",
    "AGGREGATE_TYPE_HEADER",
    "CONTENT_TYPE",
    "FRAMEWORK_HEADER_PREFIX",
    "HEADER_ATTEMPTS",
    "HEADER_CONSUMER",
    "HEADER_DEAD_LETTERED_AT",
    "HEADER_ERROR_MESSAGE",
    "HEADER_ERROR_TYPE",
    "HEADER_POSITION",
    "HEADER_REASON",
    "HEADER_ROUTING_KEY",
    "PERSISTENT",
    "SHORT_STRING_BYTES",
    "topic_matches",
]

#: ``content_type`` of every message: the body is the payload as UTF-8 JSON.
CONTENT_TYPE = "application/json"
#: AMQP ``delivery_mode`` 2: the broker writes the message to disk in durable queues.
PERSISTENT = 2
#: AMQP "short strings" (exchange, routing key, type, header names) hold at most 255 bytes.
SHORT_STRING_BYTES = 255

#: Headers every message carries, naming its aggregate (the ordering key's parts).
AGGREGATE_TYPE_HEADER = "aggregate_type"
AGGREGATE_ID_HEADER = "aggregate_id"

#: Header names with this prefix are the framework's; callers of ``publish()`` cannot set them.
FRAMEWORK_HEADER_PREFIX = "x-outbox-"
#: The row's place in its ordering key's commit order.
HEADER_POSITION = "x-outbox-position"
#: Handler runs of this message so far, set on copies sent to a retry or dead-letter queue.
HEADER_ATTEMPTS = "x-outbox-attempts"
#: The routing key the producer used; a retried copy arrives with the queue's name instead.
HEADER_ROUTING_KEY = "x-outbox-routing-key"
#: The consumer that sent a copy to its retry or dead-letter queue.
HEADER_CONSUMER = "x-outbox-consumer"
#: Why a message was dead-lettered: "handler failed" or what is malformed about it.
HEADER_REASON = "x-outbox-dead-letter-reason"
HEADER_ERROR_TYPE = "x-outbox-error-type"
HEADER_ERROR_MESSAGE = "x-outbox-error-message"
HEADER_DEAD_LETTERED_AT = "x-outbox-dead-lettered-at"


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic exchange routes ``routing_key`` through the binding ``pattern``
    (``*`` is one dot-separated word, ``#`` zero or more)."""
    return _words_match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _words_match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":  # zero or more words
        return any(_words_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return head in ("*", words[0]) and _words_match(rest, words[1:])

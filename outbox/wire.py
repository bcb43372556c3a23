"""The wire format on RabbitMQ (../shared/DESIGN.md, "Wire format"): what every module that
builds or reads an AMQP message agrees on.

The relay's publisher and the consumer (which republishes to retry and dead-letter queues)
both take their constants from here, and topic matching (which binding routes which key)
is written once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from outbox.exceptions import InvalidMessageError

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
    "HEADER_REWRITTEN",
    "HEADER_ROUTING_KEY",
    "PERSISTENT",
    "SHORT_STRING_BYTES",
    "check_aggregate",
    "check_aggregate_id",
    "check_aggregate_type",
    "check_header_name",
    "check_header_value",
    "message_headers",
    "topic_matches",
    "utf8_length",
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
#: On a consumer's retry or dead-letter copy: which headers of the original it could not carry
#: as they were (converted to text, or dropped to fit one frame). See outbox.consumer.fields.
HEADER_REWRITTEN = "x-outbox-rewritten-headers"


#: AMQP's signed 64-bit integer ("l"), the widest integer a header can carry.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# No ':' in an aggregate type keeps "<type>:<id>" ordering keys unambiguous.
_AGGREGATE_TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def utf8_length(name: str, value: str) -> int:
    """The UTF-8 size of ``value``; ``InvalidMessageError`` naming ``name`` if it holds a lone
    surrogate (half of a UTF-16 pair), which no UTF-8 text, and so no AMQP string, can hold."""
    try:
        return len(value.encode())
    except UnicodeEncodeError as error:
        raise InvalidMessageError(
            f"{name} holds a lone surrogate {value[error.start]!r} at index {error.start},"
            " which UTF-8 cannot encode"
        ) from None


def check_aggregate_type(aggregate_type: object) -> str:
    """``aggregate_type`` if it can name an aggregate, else ``InvalidMessageError``.

    1 to 255 letters, digits, ``_``, ``.``, ``-`` or ``/``: no ``:``, so the ordering key
    ``"<type>:<id>"`` is unambiguous. The outbox and the event store share this rule.
    """
    if (
        not isinstance(aggregate_type, str)
        or len(aggregate_type) > SHORT_STRING_BYTES
        or not _AGGREGATE_TYPE_PATTERN.match(aggregate_type)
    ):
        raise InvalidMessageError(
            "aggregate_type must be 1 to 255 letters, digits, '_', '.', '-' or '/';"
            f" got {aggregate_type!r}"
        )
    return aggregate_type


def check_aggregate_id(aggregate_id: object) -> str:
    """The stored (string) form of ``aggregate_id``, else ``InvalidMessageError``.

    A str, int or UUID (not a bool) whose text is 1 to 255 characters, with no NUL character
    (PostgreSQL text cannot hold it) and no lone surrogate (UTF-8 cannot).
    """
    if isinstance(aggregate_id, bool) or not isinstance(aggregate_id, str | int | UUID):
        raise InvalidMessageError(
            f"aggregate_id must be a str, int or UUID, got {type(aggregate_id).__name__}"
        )
    text_id = str(aggregate_id)
    if not 1 <= len(text_id) <= SHORT_STRING_BYTES:
        raise InvalidMessageError(f"aggregate_id must be 1 to 255 characters, got {text_id!r}")
    if "\x00" in text_id:
        raise InvalidMessageError("aggregate_id must not contain the NUL character")
    utf8_length("aggregate_id", text_id)
    return text_id


def check_aggregate(aggregate_type: object, aggregate_id: object) -> tuple[str, str]:
    """Both aggregate arguments checked, or ``("", "")`` for neither (no ordering key)."""
    if aggregate_type is None and aggregate_id is None:
        return "", ""
    if aggregate_type is None or aggregate_id is None:
        raise InvalidMessageError("aggregate_type and aggregate_id go together: give both or none")
    return check_aggregate_type(aggregate_type), check_aggregate_id(aggregate_id)


def check_header_name(path: str, name: object) -> str:
    """``name`` if AMQP can carry it as a field-table key (a non-empty string of at most 255
    UTF-8 bytes), else ``InvalidMessageError`` naming ``path``, where it sits."""
    if not isinstance(name, str) or not name:
        raise InvalidMessageError(f"header name at {path} must be a non-empty string, got {name!r}")
    if utf8_length(f"header name at {path}", name) > SHORT_STRING_BYTES:
        raise InvalidMessageError(
            f"header name {name[:40]!r}... at {path} is longer than {SHORT_STRING_BYTES} bytes"
        )
    return name


def check_header_value(path: str, value: object, *, also: tuple[type, ...] = ()) -> None:
    """Raise ``InvalidMessageError`` naming ``path`` (e.g. ``headers['a'][0]``) unless AMQP
    can carry ``value`` as the relay sends it with pika.

    Accepted: ``None``, ``bool``, ``str``, ``int`` within signed 64 bits, and lists and
    mappings (string keys of at most 255 bytes) of these, to any depth. Refused: ``float``
    (pika has no encoding for it; send a string or an integer in minor units), integers
    beyond 64 bits, ``bytes`` (JSON cannot store them) and every other type. ``also`` adds
    leaf types the caller turns into strings before sending (``publish()``: dates, Decimal,
    UUID, which its JSON encoding writes as text).
    """
    # An explicit stack, not recursion: a deeply nested value cannot exhaust Python's stack.
    pending: list[tuple[str, object]] = [(path, value)]
    while pending:
        where, item = pending.pop()
        if item is None or isinstance(item, bool | str) or (also and isinstance(item, also)):
            continue
        if isinstance(item, int):
            if not _INT64_MIN <= item <= _INT64_MAX:
                raise InvalidMessageError(
                    f"header value at {where} is outside AMQP's signed 64-bit integers: {item}"
                )
        elif isinstance(item, Mapping):
            for key, nested in item.items():
                check_header_name(where, key)
                pending.append((f"{where}[{key!r}]", nested))
        elif isinstance(item, list | tuple):
            pending.extend((f"{where}[{index}]", nested) for index, nested in enumerate(item))
        elif isinstance(item, float):
            raise InvalidMessageError(
                f"header value at {where} is a float ({item!r}), which AMQP headers as the relay"
                " sends them cannot carry; send it as a string or an integer (e.g. minor units)"
            )
        else:
            raise InvalidMessageError(
                f"header value at {where} is a {type(item).__name__}; AMQP headers carry None,"
                " bool, str, 64-bit int, and lists and mappings of these"
            )


def message_headers(
    headers: Mapping[str, object], aggregate_type: str, aggregate_id: str, position: int
) -> dict[str, Any]:
    """The AMQP headers of an outbox row: the caller's, then the aggregate's and the row's
    ``x-outbox-position``. A row without an aggregate has no ordering key, so neither: its
    position would order it against nothing."""
    sent: dict[str, Any] = dict(headers)
    if aggregate_type:
        sent[AGGREGATE_TYPE_HEADER] = aggregate_type
        sent[AGGREGATE_ID_HEADER] = aggregate_id
        sent[HEADER_POSITION] = position
    return sent


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

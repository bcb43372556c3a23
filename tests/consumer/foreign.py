"""Messages as other AMQP clients encode them: field types pika never writes (doubles,
floats, timestamps out of Python's range, strings that are not UTF-8), so that tests can put
on the queue what a Java or Node producer, or an attacker, would."""

from __future__ import annotations

import importlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# pika ships no stubs for its field-table codec.
_pika_data: Any = importlib.import_module("pika.data")


@dataclass(frozen=True)
class RawField:
    """A header value already encoded: the AMQP field type octet and its payload."""

    encoded: bytes


def double(value: float) -> RawField:
    return RawField(b"d" + struct.pack(">d", value))


def single(value: float) -> RawField:
    return RawField(b"f" + struct.pack(">f", value))


def timestamp(seconds: int) -> RawField:
    return RawField(b"T" + struct.pack(">Q", seconds))


def nested_table(depth: int) -> RawField:
    """A table holding a table ... ``depth`` levels deep (pika itself would recurse)."""
    inner = b"F" + struct.pack(">I", 0)
    for _ in range(depth):
        entry = b"\x01k" + inner
        inner = b"F" + struct.pack(">I", len(entry)) + entry
    return RawField(inner)


def long_string(raw: bytes) -> RawField:
    """An AMQP long string holding ``raw`` as is (e.g. bytes that are not UTF-8)."""
    return RawField(b"S" + struct.pack(">I", len(raw)) + raw)


@contextmanager
def foreign_encoding() -> Iterator[None]:
    """While the block runs, pika writes ``RawField`` header values as they are."""
    original = _pika_data.encode_value

    def encode_value(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, RawField):
            pieces.append(value.encoded)
            return len(value.encoded)
        return int(original(pieces, value))

    _pika_data.encode_value = encode_value
    try:
        yield
    finally:
        _pika_data.encode_value = original

"""AMQP header values written by other clients: reading what pika cannot decode, and sending
back (to a retry or dead-letter queue) only what pika can encode.

The relay never writes such values, but a consumer's queue takes messages from anyone who can
publish to the exchange, so both directions must accept anything the broker let through:

- **Decoding.** pika raises while it parses a frame holding an AMQP timestamp beyond
  Python's ``datetime`` (e.g. 2**62 seconds) or a non-finite float; the error surfaces as a
  lost connection, the message is redelivered and the consumer never gets past it.
  ``install_tolerant_decoding()`` makes pika return the raw number for such a field instead
  (the seconds as an ``int``, the ``float`` itself) and decode everything else as before.
  The same goes for tables and arrays nested deeper than Python's recursion limit (a frame
  of 128 KiB holds thousands of levels): the level that overflows decodes to the text
  ``NESTED_TOO_DEEPLY``.
- **Re-encoding.** pika decodes values it cannot encode again: a double of 1e19 becomes an
  ``int`` beyond 64 bits, a tolerant timestamp an ``int`` beyond 64 bits or a ``float``.
  ``sendable_headers()`` turns each top-level header pika cannot encode into its JSON text
  (bytes, decimals and dates inside it as their ``str()``), and if the copy would not fit
  in one AMQP frame, drops the largest caller headers until it does; a note lists what
  changed.
"""

from __future__ import annotations

import importlib
import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

from outbox import wire

__all__ = [
    "HEADER_FRAME_LIMIT",
    "NESTED_TOO_DEEPLY",
    "install_tolerant_decoding",
    "sendable_headers",
]

# pika ships no stubs for its field-table codec.
_pika_data: Any = importlib.import_module("pika.data")

#: Bytes of properties one copy may carry: RabbitMQ's and pika's default ``frame_max``
#: (131,072) less the frame's own 8 bytes and the content header's 12 before the properties.
#: The broker closes the connection on a larger content header, which would redeliver the
#: original and fail the same way forever.
HEADER_FRAME_LIMIT = 131_072 - 8 - 12
# The properties other than headers: at most 13 short strings and small fields. Kept free so
# the check can look at the header table alone.
_OTHER_PROPERTIES_BYTES = 13 * 256 + 64
# The note of what changed, in characters, and the most bytes it (and the table's own length
# field) can take in UTF-8.
_NOTE_CHARS = 1000
_NOTE_BYTES = 4 * _NOTE_CHARS + 64

# Field types whose value pika converts in a way that can raise: its type octet, the struct
# format of its payload and the payload's size.
_FIXED_WIDTH_FIELDS = {b"T": (">Q", 8), b"d": (">d", 8), b"f": (">f", 4)}
# Field types that nest (table, array); both carry their length in bytes first.
_NESTING_FIELDS = (b"F", b"A")
#: What a table or array nested beyond Python's recursion limit decodes to.
NESTED_TOO_DEEPLY = "<AMQP field nested too deeply to decode>"

_installed: Callable[[bytes, int], tuple[Any, int]] | None = None


def install_tolerant_decoding() -> None:
    """Make pika decode out-of-range timestamps and non-finite floats to the raw number,
    and over-deep tables and arrays to ``NESTED_TOO_DEEPLY``, instead of raising.
    Idempotent; every other field decodes exactly as pika does."""
    global _installed
    if _installed is not None and _pika_data.decode_value is _installed:
        return
    strict = _pika_data.decode_value

    def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
        try:
            return strict(encoded, offset)  # type: ignore[no-any-return]
        except RecursionError:
            # Caught at the deepest level first; skipping needs no further Python frames.
            if encoded[offset : offset + 1] not in _NESTING_FIELDS:
                raise
            (length,) = struct.unpack_from(">I", encoded, offset + 1)
            return NESTED_TOO_DEEPLY, offset + 1 + 4 + length
        except (OverflowError, OSError, ValueError):
            kind = encoded[offset : offset + 1]
            if kind not in _FIXED_WIDTH_FIELDS:
                raise
            form, size = _FIXED_WIDTH_FIELDS[kind]
            (raw,) = struct.unpack_from(form, encoded, offset + 1)
            return raw, offset + 1 + size

    # pika's table and array decoders look the function up in their module on every call,
    # so nested values go through the tolerant one too.
    _pika_data.decode_value = decode_value
    _installed = decode_value


def sendable_headers(headers: Mapping[Any, Any]) -> dict[Any, Any]:
    """``headers`` as pika can send them in one frame, with a note of any change under
    ``wire.HEADER_REWRITTEN``.

    Framework headers (``x-outbox-*``) are the consumer's own and always encodable; they are
    kept as they are. Every other header pika cannot encode is replaced by its JSON text;
    then, if the table is larger than fits in a frame, caller headers are dropped, largest
    first, until it fits.
    """
    sizes: dict[Any, int] = {}
    converted: list[str] = []
    result: dict[Any, Any] = {}
    for key, value in headers.items():
        try:
            size = _encoded_size(key, value)
        except Exception:  # pika raises struct.error, TypeError, its own exceptions...
            value = _as_text(value)
            size = _encoded_size(key, value)
            converted.append(_name(key))
        result[key] = value
        sizes[key] = size
    dropped: list[str] = []
    budget = HEADER_FRAME_LIMIT - _OTHER_PROPERTIES_BYTES - _NOTE_BYTES
    total = sum(sizes.values())
    if total > budget:
        for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if total <= budget:
                break
            if _name(key).startswith(wire.FRAMEWORK_HEADER_PREFIX):
                continue
            total -= sizes[key]
            del result[key]
            dropped.append(_name(key))
    notes = []
    if converted:
        notes.append(f"converted to text, AMQP cannot carry the value as decoded: {converted}")
    if dropped:
        notes.append(
            f"{len(dropped)} headers dropped to fit one AMQP frame, largest first:"
            f" {dropped[:20]}{' ...' if len(dropped) > 20 else ''}"
        )
    if notes:
        result[wire.HEADER_REWRITTEN] = "; ".join(notes)[:_NOTE_CHARS]
    return result


def _encoded_size(key: Any, value: Any) -> int:
    pieces: list[bytes] = []
    return int(_pika_data.encode_short_string(pieces, key) + _pika_data.encode_value(pieces, value))


def _as_text(value: Any) -> str:
    # JSON rather than str(): no Python-only spellings such as pika's 64-bit ints ("1L").
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (RecursionError, ValueError):  # nested about as deep as the recursion limit
        return NESTED_TOO_DEEPLY


def _name(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)

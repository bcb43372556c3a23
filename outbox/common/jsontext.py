"""JSON text for payloads, headers and stored events: one rule set for the whole framework."""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

__all__ = ["OutboxJSONEncoder", "encode"]

# json.dumps writes a NUL character as the escape \u0000. The same six characters also appear
# when a string holds a literal backslash followed by "u0000", escaped as \\u0000: the escape
# is a real NUL only when an even number of backslashes (zero included) precedes it.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class OutboxJSONEncoder(DjangoJSONEncoder):
    """JSON plus the values business code hands over most: datetime, date, time and timedelta
    (ISO 8601), Decimal and UUID (strings). Any other object is refused with TypeError."""


def encode(value: Any) -> str:
    """Compact JSON text for ``value``; raises TypeError / ValueError for what JSON cannot hold.

    NaN and infinities are refused (they are not JSON), and so are the NUL character, which
    PostgreSQL's jsonb cannot store, and lone surrogates (half of a UTF-16 pair), which UTF-8
    cannot encode. The six characters ``\\u0000`` written as text are an ordinary string.
    """
    text = json.dumps(
        value, cls=OutboxJSONEncoder, allow_nan=False, ensure_ascii=False, separators=(",", ":")
    )
    # The substring test is the fast path: almost no text holds the six characters at all.
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise ValueError("the NUL character (\\u0000) cannot be stored in PostgreSQL jsonb")
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise ValueError(
            f"a lone surrogate {text[error.start]!r} cannot be encoded as UTF-8"
        ) from None
    return text

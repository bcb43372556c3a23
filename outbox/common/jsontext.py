"""JSON text for payloads, headers and stored events: one rule set for the whole framework."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

__all__ = ["OutboxJSONEncoder", "encode"]


class OutboxJSONEncoder(DjangoJSONEncoder):
    """JSON plus the values business code hands over most: datetime, date, time and timedelta
    (ISO 8601), Decimal and UUID (strings). Any other object is refused with TypeError."""


def encode(value: Any) -> str:
    """Compact JSON text for ``value``; raises TypeError / ValueError for what JSON cannot hold.

    NaN and infinities are refused (they are not JSON), and so is the NUL character, which
    PostgreSQL's jsonb cannot store.
    """
    text = json.dumps(
        value, cls=OutboxJSONEncoder, allow_nan=False, ensure_ascii=False, separators=(",", ":")
    )
    if "\\u0000" in text:
        raise ValueError("the NUL character (\\u0000) cannot be stored in PostgreSQL jsonb")
    return text

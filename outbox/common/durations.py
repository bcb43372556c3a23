"""Durations as people write them: ``7d``, ``12h``, ``30m``, ``45s``, ``250ms``, ``1h30m``.

Every ``outbox_*`` command that takes a length of time parses it here, and every message that
prints one writes it back the same way (``format_duration``), so an operator learns one
spelling. A bare number is read as seconds, the unit of every duration setting.
"""

from __future__ import annotations

import argparse
import math
import re
from datetime import timedelta

__all__ = ["DURATION_SYNTAX", "duration_argument", "format_duration", "parse_duration"]

# Shown in --help and in error messages.
DURATION_SYNTAX = "a duration such as 7d, 12h, 30m, 45s or 1h30m (a bare number is seconds)"

_UNIT_SECONDS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# "ms" before "m" and "s", so that "250ms" is not read as 250 minutes followed by junk.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_BARE_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str) -> timedelta:
    """``text`` as a ``timedelta``; raises ``ValueError`` naming the accepted syntax.

    Parts are a number and a unit (``d``, ``h``, ``m``, ``s``, ``ms``), largest first, as in
    ``1h30m``; a bare number is seconds. Negative durations are refused.
    """
    compact = text.strip().lower()
    if _BARE_NUMBER.fullmatch(compact):
        return timedelta(seconds=float(compact))
    position = 0
    seconds = 0.0
    previous_unit = math.inf
    for part in _PART.finditer(compact):
        unit = _UNIT_SECONDS[part.group(2)]
        if part.start() != position or unit >= previous_unit:
            break
        seconds += float(part.group(1)) * unit
        previous_unit = unit
        position = part.end()
    else:
        if position == len(compact) and position > 0:
            return timedelta(seconds=seconds)
    raise ValueError(f"not a duration: {text!r}; write {DURATION_SYNTAX}")


def format_duration(value: timedelta | float) -> str:
    """``value`` (a ``timedelta`` or seconds) written the way ``parse_duration`` reads it,
    largest units first: ``7d``, ``1h30m``, ``45s``, ``0.5s``."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g}s"
    # From a minute up, a fraction of a second is noise: rounded away.
    whole = round(seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = int(_UNIT_SECONDS[unit])
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def duration_argument(text: str) -> timedelta:
    """argparse ``type=`` for a duration option; the error names the accepted syntax."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error

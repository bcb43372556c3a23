"""How counts read in messages and log lines: ``1 message``, ``3 messages``."""

from __future__ import annotations

__all__ = ["count"]


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` with ``noun`` in the right form: ``1 message``, ``3 messages``."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"

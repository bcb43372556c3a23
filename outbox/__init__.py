"""The transactional outbox: integration events written with the business data, relayed later.

Public names are exported lazily (PEP 562): they need the ``OutboxMessage`` model, which
cannot be imported while Django is still loading the apps in ``INSTALLED_APPS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from outbox.exceptions import (
    InvalidMessageError,
    OutboxError,
    PayloadTooLargeError,
    TransactionRequiredError,
)

if TYPE_CHECKING:
    from outbox.writer import Message, publish, publish_many

__all__ = [
    "InvalidMessageError",
    "Message",
    "OutboxError",
    "PayloadTooLargeError",
    "TransactionRequiredError",
    "publish",
    "publish_many",
]

_LAZY = {"Message", "publish", "publish_many"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from outbox import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'outbox' has no attribute {name!r}")

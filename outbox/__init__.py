"""The transactional outbox: integration events written with the business data, relayed later.

Public names are exported lazily (PEP 562): they need the ``OutboxMessage`` model, which
cannot be imported while Django is still loading the apps in ``INSTALLED_APPS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from outbox.common.lazy import lazy_exports
from outbox.exceptions import (
    InvalidMessageError,
    OutboxError,
    PayloadTooLargeError,
    TransactionRequiredError,
)

if TYPE_CHECKING:
    from outbox.consumer.inbox import idempotent
    from outbox.consumer.registry import IncomingMessage, integration_handler
    from outbox.writer import Message, publish, publish_many

__all__ = [
    "IncomingMessage",
    "InvalidMessageError",
    "Message",
    "OutboxError",
    "PayloadTooLargeError",
    "TransactionRequiredError",
    "idempotent",
    "integration_handler",
    "publish",
    "publish_many",
]

# Public name -> the module that defines it.
_LAZY = {
    "Message": "outbox.writer",
    "publish": "outbox.writer",
    "publish_many": "outbox.writer",
    "IncomingMessage": "outbox.consumer.registry",
    "integration_handler": "outbox.consumer.registry",
    "idempotent": "outbox.consumer.inbox",
}


__getattr__ = lazy_exports(__name__, _LAZY)

"""Helpers for users' own tests."""

from domain_events.eventsourcing.upcasting import isolated_upcasters
from domain_events.registry import registry

#: Context manager: handlers registered inside the block are forgotten when it ends.
isolated_handlers = registry.isolated

__all__ = ["isolated_handlers", "isolated_upcasters"]

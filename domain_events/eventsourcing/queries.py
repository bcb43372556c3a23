"""The event store's named SQL queries, from ``domain_events/sql/event_store.sql``."""

from __future__ import annotations

from outbox.common.sql import load_queries

queries = load_queries("domain_events", "sql/event_store.sql")

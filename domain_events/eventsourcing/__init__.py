"""Event sourcing: aggregates persisted as the sequence of their events.

``aggregate`` is the plain-Python base, ``store`` the repository (``get`` / ``save`` /
``history``), ``snapshots`` the policies that say which saves take a snapshot,
``publishing`` the outbox messages of stored events published, ``serialization`` and
``upcasting`` turn events into JSON and old JSON into current events, ``projections``
replays the store in global order into read models, ``database`` refuses databases other
than PostgreSQL. The public names are re-exported by ``domain_events``.
"""

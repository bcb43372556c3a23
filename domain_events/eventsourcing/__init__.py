"""Event sourcing: aggregates persisted as the sequence of their events.

``aggregate`` is the plain-Python base, ``store`` the repository (``get`` / ``save``),
``serialization`` and ``upcasting`` turn events into JSON and old JSON into current events,
``projections`` replays the store in global order into read models. The public names are
re-exported by ``domain_events``.
"""

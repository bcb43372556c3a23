"""What both packages share: the JSON text rules and the named-SQL loader.

``outbox`` never imports ``domain_events``; ``domain_events`` (the event store) imports
``outbox.common`` so that event data and outbox payloads follow one JSON rule set and every
named query is loaded and read the same way.
"""

"""Settings of the domain-events layer, read from the optional ``DOMAIN_EVENTS`` dict."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULT_MAX_CASCADE_DEPTH = 16


def max_cascade_depth() -> int:
    """``DOMAIN_EVENTS["MAX_CASCADE_DEPTH"]`` (default 16): how deep handlers may cascade.

    Depth 1 is the events of the aggregate being saved; each handler that records events that
    are dispatched in turn adds one level. Past the limit, ``CascadeDepthError`` is raised and
    the transaction rolls back.
    """
    options = getattr(settings, "DOMAIN_EVENTS", {})
    if not isinstance(options, dict):
        raise ImproperlyConfigured("settings.DOMAIN_EVENTS must be a dict")
    unknown = set(options) - {"MAX_CASCADE_DEPTH"}
    if unknown:
        raise ImproperlyConfigured(f"settings.DOMAIN_EVENTS has unknown keys: {sorted(unknown)}")
    depth = options.get("MAX_CASCADE_DEPTH", DEFAULT_MAX_CASCADE_DEPTH)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ImproperlyConfigured(
            f'settings.DOMAIN_EVENTS["MAX_CASCADE_DEPTH"] must be a positive int, got {depth!r}'
        )
    return depth

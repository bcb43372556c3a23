"""System checks of the domain-events layer: ``settings.DOMAIN_EVENTS`` is validated by
``manage.py check`` instead of by the first save that dispatches events."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured

from domain_events import conf


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    """domain_events.E001: ``DOMAIN_EVENTS`` is not a dict, has an unknown key (a typo), or a
    value of the wrong type or range."""
    try:
        conf.max_cascade_depth()
    except ImproperlyConfigured as error:
        return [Error(str(error), hint="known keys: MAX_CASCADE_DEPTH", id="domain_events.E001")]
    return []

"""The ``OUTBOX`` settings dict: defaults, validation, and one accessor for all of it.

Settings are read on every call (a dict lookup) so that ``override_settings`` works in tests
without a reload hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Setting:
    default: Any
    kind: type | tuple[type, ...]
    doc: str
    minimum: float | None = None


SETTINGS: dict[str, Setting] = {
    "BROKER_URL": Setting(
        None, (str, type(None)), "AMQP URL of RabbitMQ, e.g. amqp://guest:guest@127.0.0.1:5672/%2F"
    ),
    "EXCHANGE": Setting("events", str, "topic exchange messages are published to by default"),
    "REQUIRE_ATOMIC": Setting(
        True, bool, "publish() raises outside transaction.atomic (False: autocommit write)"
    ),
    "MAX_PAYLOAD_BYTES": Setting(
        1_048_576, int, "largest JSON-encoded payload publish() accepts, in bytes", minimum=1
    ),
    # --- relay ---
    # --- consumers and inbox ---
    # --- operations ---
    "STUCK_AFTER": Setting(
        300,
        int,
        "seconds a row may stay ready before the admin and outbox_status call it stuck",
        minimum=1,
    ),
    "RETENTION": Setting(
        7 * 24 * 3600,
        int,
        "seconds published rows are kept before outbox_purge deletes them",
        minimum=0,
    ),
    "PURGE_BATCH_SIZE": Setting(
        1000,
        int,
        "rows outbox_purge deletes per statement (one short transaction each)",
        minimum=1,
    ),
}


def get(name: str) -> Any:
    """Return ``settings.OUTBOX[name]``, or its documented default, checked for type and range."""
    setting = SETTINGS[name]
    options = _options()
    value = options.get(name, setting.default)
    kinds = setting.kind if isinstance(setting.kind, tuple) else (setting.kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ImproperlyConfigured(f'settings.OUTBOX["{name}"] must be {expected}, got {value!r}')
    if setting.minimum is not None and isinstance(value, int | float) and value < setting.minimum:
        raise ImproperlyConfigured(
            f'settings.OUTBOX["{name}"] must be at least {setting.minimum}, got {value!r}'
        )
    return value


def unknown_keys() -> list[str]:
    """Keys in ``settings.OUTBOX`` that no setting has (typos), sorted."""
    return sorted(set(_options()) - set(SETTINGS))


def _options() -> dict[str, Any]:
    options = getattr(django_settings, "OUTBOX", {})
    if not isinstance(options, dict):
        raise ImproperlyConfigured(f"settings.OUTBOX must be a dict, got {type(options).__name__}")
    return options

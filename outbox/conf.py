"""The ``OUTBOX`` settings dict: defaults, validation, and typed accessors.

Settings are read on every call (a dict lookup) so that ``override_settings`` works in tests
without a reload hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Setting:
    default: Any
    kind: type | tuple[type, ...]
    doc: str
    minimum: float | None = None
    choices: tuple[str, ...] | None = None


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
    "PREPARED_INSERT": Setting(
        True,
        bool,
        "publish(), the relay's claim and a consumer's inbox claim run as server-side prepared"
        " statements (False behind a pooler that cannot keep prepared statements, such as"
        " PgBouncer before 1.21 in transaction mode)",
    ),
    # --- relay ---
    "BATCH_SIZE": Setting(
        500, int, "rows one relay claims, publishes and marks per round trip", minimum=1
    ),
    "MAX_PER_KEY": Setting(
        None,
        (int, type(None)),
        "most rows of one ordering key in one batch, published in order on one channel"
        " (None: up to BATCH_SIZE; 1: at most one row per key in flight, strict order even"
        " when the broker refuses a message)",
        minimum=1,
    ),
    "LEASE_SECONDS": Setting(
        60.0,
        (int, float),
        "how long a claim keeps other relays off a batch; a crashed relay's rows come back"
        " after it",
        minimum=1,
    ),
    "CONFIRM_TIMEOUT_SECONDS": Setting(
        10.0, (int, float), "longest wait for RabbitMQ's confirms of one batch", minimum=0.1
    ),
    "MAX_ATTEMPTS": Setting(
        10, int, "refusals (nack, unroutable) before a message is marked failed", minimum=1
    ),
    "ON_UNROUTABLE": Setting(
        "retry",
        str,
        'a message no queue is bound for: "retry" (an attempt used, failed in the end) or'
        ' "record" (marked published, the drop noted in last_error and logged)',
        choices=("retry", "record"),
    ),
    "RETRY_BACKOFF_SECONDS": Setting(
        1.0, (int, float), "delay before the first retry; doubles per attempt", minimum=0
    ),
    "RETRY_BACKOFF_MAX_SECONDS": Setting(
        300.0, (int, float), "cap on the delay between two attempts", minimum=0
    ),
    "POLL_INTERVAL_SECONDS": Setting(
        1.0,
        (int, float),
        "outbox_relay worker: longest sleep between two looks at the table when no"
        " notification arrives",
        minimum=0.01,
    ),
    "RECONNECT_BACKOFF_MAX_SECONDS": Setting(
        # At most 4 s between two tries, so an outage of N seconds costs about N + 4 s
        # (issue 10's target: N + 5 s); one connection attempt every 4 s is cheap.
        4.0,
        (int, float),
        "outbox_relay and outbox_consume: cap on the growing wait before reconnecting to an"
        " unreachable broker or database",
        minimum=0.1,
    ),
    "KICK_ON_COMMIT": Setting(
        None,
        (bool, type(None)),
        "send the publish_outbox Celery task as soon as a transaction that wrote outbox rows"
        " commits (None: on when Celery is installed and its app has a broker URL)",
    ),
    "TASK_TIME_BUDGET_SECONDS": Setting(
        10.0,
        (int, float),
        "publish_outbox task: stop claiming new batches after this long",
        minimum=0.1,
    ),
    # --- WAL relay (log tailing with Debezium) ---
    "RELAY_SOURCE": Setting(
        "poll",
        str,
        'where outbox_relay finds committed rows: "poll" (claims on the table) or "wal"'
        " (Debezium reads PostgreSQL's write-ahead log; needs the wal extra and Java 17)",
        choices=("poll", "wal"),
    ),
    "WAL_SLOT_NAME": Setting(
        "outbox_relay",
        str,
        "logical replication slot the WAL relay reads (one WAL relay runs per slot)",
    ),
    "WAL_PUBLICATION_NAME": Setting(
        "outbox_relay",
        str,
        "PostgreSQL publication of the outbox table's inserts that the WAL relay reads",
    ),
    "WAL_MAX_LAG_BYTES": Setting(
        1024**3,
        int,
        "outbox_status reports the WAL slot unhealthy past this much unread WAL, in bytes",
        minimum=1,
    ),
    "WAL_MAX_LAG_SECONDS": Setting(
        300.0,
        (int, float),
        "outbox_status reports the WAL slot unhealthy when, with RELAY_SOURCE wal, the oldest"
        " ready row is older",
        minimum=1,
    ),
    # --- local jobs (durable after-commit handlers) ---
    "JOB_MAX_ATTEMPTS": Setting(
        10, int, "runs of a local job before it is marked failed (1: no retry)", minimum=1
    ),
    "JOB_RETRY_BACKOFF_SECONDS": Setting(
        2.0,
        (int, float),
        "delay before a failed local job's second run; doubles per run, with jitter",
        minimum=0,
    ),
    "JOB_RETRY_BACKOFF_MAX_SECONDS": Setting(
        600.0, (int, float), "cap on the delay between two runs of a local job", minimum=0
    ),
    "JOB_LEASE_SECONDS": Setting(
        60.0,
        (int, float),
        "how long a claimed local job is kept from other runners before it is claimed again"
        " (a runner that died mid-run)",
        minimum=1,
    ),
    "JOB_BATCH_SIZE": Setting(10, int, "local jobs one runner claims at a time", minimum=1),
    # --- consumers and inbox ---
    "CONSUMER_PREFETCH": Setting(
        100, int, "messages RabbitMQ sends a consumer ahead of its acks (basic.qos)", minimum=1
    ),
    "CONSUMER_BATCH_SIZE": Setting(
        50,
        int,
        "deliveries already waiting that a consumer processes in one transaction (1: one"
        " transaction per message)",
        minimum=1,
    ),
    "CONSUMER_MAX_ATTEMPTS": Setting(
        5, int, "handler runs per message before it is dead-lettered (1: no retry)", minimum=1
    ),
    "CONSUMER_RETRY_DELAY": Setting(
        1.0, (int, float), "seconds before the first retry of a failed message", minimum=0.001
    ),
    "CONSUMER_RETRY_BACKOFF": Setting(
        5.0, (int, float), "each further retry waits this many times longer", minimum=1
    ),
    "CONSUMER_RECONNECT_DELAY": Setting(
        1.0,
        (int, float),
        "seconds before outbox_consume reconnects to RabbitMQ, or tries a message again while"
        " its database is unreachable, doubled per failure up to RECONNECT_BACKOFF_MAX_SECONDS",
        minimum=0.01,
    ),
    "INBOX_RETENTION": Setting(
        14 * 24 * 3600,
        (int, float),
        "seconds inbox records are kept before the purge deletes them",
        minimum=0,
    ),
    "INBOX_RETENTION_DAYS": Setting(
        None,
        (int, float, type(None)),
        "deprecated: INBOX_RETENTION in days (every other duration setting is in seconds);"
        " when set, it is used instead",
        minimum=0,
    ),
    "INBOX_PURGE_BATCH_SIZE": Setting(
        5000, int, "inbox records deleted per transaction by the purge", minimum=1
    ),
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
    "PURGE_VACUUM": Setting(
        True,
        bool,
        "after a purge that deleted rows, VACUUM (ANALYZE) the table (PostgreSQL) so the space"
        " is reused even when autovacuum is off or behind",
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
    if setting.choices is not None and value not in setting.choices:
        raise ImproperlyConfigured(
            f'settings.OUTBOX["{name}"] must be one of {setting.choices}, got {value!r}'
        )
    return value


def get_int(name: str) -> int:
    """``settings.OUTBOX[name]`` for an integer setting."""
    value = get(name)
    if not isinstance(value, int):  # pragma: no cover - the table above types it
        raise TypeError(f"OUTBOX[{name!r}] is not an integer setting")
    return value


def get_float(name: str) -> float:
    """``settings.OUTBOX[name]`` for a number setting, as a float (seconds, factors)."""
    value = get(name)
    if not isinstance(value, int | float):  # pragma: no cover - the table above types it
        raise TypeError(f"OUTBOX[{name!r}] is not a number setting")
    return float(value)


def get_str(name: str) -> str:
    """``settings.OUTBOX[name]`` for a text setting."""
    value = get(name)
    if not isinstance(value, str):  # pragma: no cover - the table above types it
        raise TypeError(f"OUTBOX[{name!r}] is not a text setting")
    return value


def get_optional_str(name: str) -> str | None:
    """``settings.OUTBOX[name]`` for a text setting that may be unset (``None``)."""
    value = get(name)
    if value is not None and not isinstance(value, str):  # pragma: no cover
        raise TypeError(f"OUTBOX[{name!r}] is not a text setting")
    return value


def get_optional_bool(name: str) -> bool | None:
    """``settings.OUTBOX[name]`` for an on/off setting that may be left to auto (``None``)."""
    value = get(name)
    if value is not None and not isinstance(value, bool):  # pragma: no cover
        raise TypeError(f"OUTBOX[{name!r}] is not an on/off setting")
    return value


def get_bool(name: str) -> bool:
    """``settings.OUTBOX[name]`` for an on/off setting."""
    value = get(name)
    if not isinstance(value, bool):  # pragma: no cover - the table above types it
        raise TypeError(f"OUTBOX[{name!r}] is not an on/off setting")
    return value


def inbox_retention() -> timedelta:
    """How long inbox records are kept: ``INBOX_RETENTION`` seconds, or the deprecated
    ``INBOX_RETENTION_DAYS`` when a project still sets it (check ``outbox.W003``)."""
    days = get("INBOX_RETENTION_DAYS")
    if days is not None:
        return timedelta(days=days)
    return timedelta(seconds=get_float("INBOX_RETENTION"))


def unknown_keys() -> list[str]:
    """Keys in ``settings.OUTBOX`` that no setting has (typos), sorted."""
    return sorted(set(_options()) - set(SETTINGS))


def _options() -> dict[str, Any]:
    options = getattr(django_settings, "OUTBOX", {})
    if not isinstance(options, dict):
        raise ImproperlyConfigured(f"settings.OUTBOX must be a dict, got {type(options).__name__}")
    return options

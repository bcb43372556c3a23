from django.apps import AppConfig
from django.core import checks


class OutboxConfig(AppConfig):
    name = "outbox"
    verbose_name = "Outbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from outbox.checks import (
            check_database,
            check_settings,
            check_wal_database,
            check_wal_runtime,
        )

        checks.register(check_settings)
        checks.register(check_database)
        checks.register(check_wal_runtime)
        # Reads the server's settings: only from `check --database` and `migrate`.
        checks.register(check_wal_database, checks.Tags.database)

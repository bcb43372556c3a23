from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import autodiscover_modules


class DomainEventsConfig(AppConfig):
    name = "domain_events"
    verbose_name = "Domain events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from domain_events.checks import check_event_store_database, check_settings
        from domain_events.durable import JOB_KIND, run_handler_job
        from outbox.jobs import register_executor

        checks.register(check_settings)
        checks.register(check_event_store_database)
        # Durable after-commit handlers run as the outbox's local jobs of this kind.
        register_executor(JOB_KIND, run_handler_job)
        # Handlers live in each installed app's ``handlers`` module; importing it registers
        # them, as Django does for ``admin`` modules.
        autodiscover_modules("handlers")

from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import autodiscover_modules


class DomainEventsConfig(AppConfig):
    name = "domain_events"
    verbose_name = "Domain events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from domain_events.checks import check_event_store_database, check_settings

        checks.register(check_settings)
        checks.register(check_event_store_database)
        # Handlers live in each installed app's ``handlers`` module; importing it registers
        # them, as Django does for ``admin`` modules.
        autodiscover_modules("handlers")

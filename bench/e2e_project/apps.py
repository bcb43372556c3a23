"""The benchmark project's app: installs the step tracing of ``trace.py`` when asked."""

from django.apps import AppConfig


class E2EConfig(AppConfig):
    name = "e2e_project"

    def ready(self) -> None:
        from e2e_project import trace

        trace.install()

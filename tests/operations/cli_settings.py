"""Settings for command subprocesses of the CLI tests: the test settings with no ``LOGGING``
(as a project made by ``startproject`` has), so what a command prints is its own doing, plus
OUTBOX keys given as JSON in OUTBOX_TEST_OVERRIDES."""

from tests.relay.settings import *  # noqa: F403

LOGGING = {}

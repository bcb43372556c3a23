"""Settings for consumer processes started by the tests: the test settings, plus this package
as an app so that ``outbox_consume`` finds the test handlers in ``tests.consumer.handlers``."""

from typing import Any

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS
from tests.settings import OUTBOX as TEST_OUTBOX

#: Short retry delays so that a message's three attempts take well under a second.
FAST_RETRIES: dict[str, Any] = {
    "CONSUMER_MAX_ATTEMPTS": 3,
    "CONSUMER_RETRY_DELAY": 0.2,
    "CONSUMER_RETRY_BACKOFF": 1.5,
    "CONSUMER_RECONNECT_DELAY": 0.2,
}

INSTALLED_APPS = [*INSTALLED_APPS, "tests.consumer"]
OUTBOX = {**TEST_OUTBOX, **FAST_RETRIES}

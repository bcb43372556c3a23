"""The example shop's settings plus this package, whose ``handlers`` module holds the
benchmark's consumer. No Celery worker runs in the benchmark: the kick on commit is off."""

from example_project.settings import *  # noqa: F403
from example_project.settings import INSTALLED_APPS, OUTBOX

INSTALLED_APPS = [*INSTALLED_APPS, "e2e_project"]
# The example's OUTBOX holds only strings, hence its inferred type.
OUTBOX = {**OUTBOX, "KICK_ON_COMMIT": False}  # type: ignore[dict-item]

"""Settings for relay subprocesses started by tests: the test settings, plus OUTBOX keys
given as JSON in the OUTBOX_TEST_OVERRIDES environment variable (e.g. a short lease)."""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import OUTBOX

OUTBOX = {**OUTBOX, **json.loads(os.environ.get("OUTBOX_TEST_OVERRIDES", "{}"))}

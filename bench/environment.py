"""Shared start of every benchmark: the repository on sys.path, the benchmark's own database and
a private exchange chosen through the environment, then Django set up.

Imported first by each benchmark script (``import environment``), before anything that needs Django.
"""

import os
import sys
import uuid
from pathlib import Path

import django

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("OUTBOX_DB_NAME", "outbox_bench")
# A private exchange, so a benchmark never delivers into queues of a running example.
EXCHANGE = f"bench-{uuid.uuid4().hex[:8]}"
os.environ["OUTBOX_EXCHANGE"] = EXCHANGE
# A private Celery queue too: the benchmark's kicks and beat runs reach only its own workers.
os.environ["CELERY_TASK_DEFAULT_QUEUE"] = EXCHANGE
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
django.setup()

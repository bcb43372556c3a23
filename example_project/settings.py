"""Settings of the example shop. Every service address comes from the environment, with
defaults that match a machine running PostgreSQL, RabbitMQ and Redis on localhost."""

import os
from pathlib import Path

from outbox.schedule import beat_schedule

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "domain_events",
    "outbox",
    "example_project.shop",
    "example_project.bank",
    "example_project.shipping",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("OUTBOX_DB_NAME", "outbox_example"),
        "USER": os.environ.get("OUTBOX_DB_USER", "postgres"),
        "PASSWORD": os.environ.get("OUTBOX_DB_PASSWORD", ""),
        "HOST": os.environ.get("OUTBOX_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("OUTBOX_DB_PORT", "5432"),
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

OUTBOX = {
    "BROKER_URL": os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    "EXCHANGE": os.environ.get("OUTBOX_EXCHANGE", "events"),
}

# Celery's own broker is Redis; RabbitMQ carries only the integration events.
# The bank's receipts are e-mails; printed here, not sent.
EMAIL_BACKEND = os.environ.get(
    "DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend"
)

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# A private queue name keeps parallel test runs on one Redis from taking each other's tasks.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_TASK_IGNORE_RESULT = True
# The outbox relay every second and the two purges hourly, as the library schedules them;
# the tests shorten both periods to see a worker run them.
CELERY_BEAT_SCHEDULE = beat_schedule(
    publish_every=float(os.environ.get("OUTBOX_PUBLISH_EVERY", "1")),
    purge_every=float(os.environ.get("OUTBOX_PURGE_EVERY", "3600")),
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "outbox": {"handlers": ["console"], "level": "INFO"},
        "domain_events": {"handlers": ["console"], "level": "INFO"},
        "example_project": {"handlers": ["console"], "level": "INFO"},
    },
}

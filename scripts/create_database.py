"""Create the PostgreSQL database named in settings.DATABASES["default"] if it is missing."""

import os
import sys

import psycopg
from psycopg import sql

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from django.conf import settings

database = settings.DATABASES["default"]
with psycopg.connect(
    host=database["HOST"],
    port=database["PORT"],
    user=database["USER"],
    password=database["PASSWORD"] or None,
    dbname="postgres",
    autocommit=True,
) as connection:
    exists = connection.execute(
        "SELECT 1 FROM pg_database WHERE datname = %s", [database["NAME"]]
    ).fetchone()
    if not exists:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database["NAME"])))
        print(f"created database {database['NAME']}")

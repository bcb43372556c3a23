"""The example shop's settings plus this package, whose ``handlers`` module holds the
benchmark's consumer."""

from example_project.settings import *  # noqa: F403
from example_project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "e2e_project"]

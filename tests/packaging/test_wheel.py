"""The built wheel installs into a fresh virtual environment and both apps load from it."""

import subprocess
import venv
import zipfile
from pathlib import Path

import pytest

from tests.packaging.test_docs_module import references_in
from tests.wheel import REPO_ROOT, build_wheel

# Run inside the fresh environment: configure Django with only the two apps on SQLite, load
# them and run their migrations, so a missing migration or template file would fail here.
SMOKE_TEST = """
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                    "domain_events", "outbox"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    USE_TZ=True,
)
django.setup()
from django.core.management import call_command
from django.db import transaction
from domain_events import AggregateRoot, DomainEvent, handler
from outbox import publish
from outbox.models import OutboxMessage
call_command("migrate", verbosity=0)
with transaction.atomic():
    publish("smoke.tested", {"ok": True})
assert OutboxMessage.objects.get().payload == {"ok": True}
print("wheel ok")
"""


@pytest.mark.slow
def test_wheel_contains_the_libraries_only_and_installs_cleanly(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "outbox/py.typed" in names
    assert "domain_events/py.typed" in names
    assert "outbox/migrations/0001_initial.py" in names
    assert [n for n in names if n.startswith("outbox/migrations/0")] == [
        "outbox/migrations/0001_initial.py"
    ], "one squashed initial migration before the first release"
    assert not [n for n in names if n.startswith(("example_project/", "tests/", "bench/"))]
    # The docs ship in the package, so that check hints point to pages a user has.
    shipped_docs = {n for n in names if n.startswith("outbox/_docs/")}
    assert shipped_docs == {
        f"outbox/_docs/{page.name}" for page in (REPO_ROOT / "docs").glob("*.md")
    }

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    smoke = subprocess.run(
        [str(python), "-c", SMOKE_TEST], capture_output=True, text=True, cwd=tmp_path
    )
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    assert smoke.stdout.strip() == "wheel ok"

    # Every page and section a hint names, read through the installed package.
    installed = Path(
        subprocess.run(
            [str(python), "-c", "import outbox, os; print(os.path.dirname(outbox.__file__))"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=True,
        ).stdout.strip()
    )
    assert environment in installed.parents
    references = references_in(installed)
    assert references
    for page, section in references:
        shown = subprocess.run(
            [str(python), "-m", "outbox.docs", page], capture_output=True, text=True, cwd=tmp_path
        )
        assert shown.returncode == 0, shown.stderr
        assert section is None or f"\n## {section}\n" in shown.stdout, (page, section)
        located = subprocess.run(
            [str(python), "-m", "outbox.docs", "--path", page],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=True,
        )
        assert Path(located.stdout.strip()).parent == installed / "_docs"

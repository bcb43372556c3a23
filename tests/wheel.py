"""Build the project's wheel the way a release would: from the tracked files only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_wheel(directory: Path) -> Path:
    """Build the wheel of the files ``git ls-files`` lists into ``directory`` and return it.

    A copy of the tracked files is built, not the working tree: setuptools reuses a build/
    folder left in a working tree, and a wheel built there once shipped migrations that no
    longer existed. A new file therefore reaches the wheel once it is ``git add``-ed.
    """
    source = directory / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    wheel_dir = directory / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    [wheel] = wheel_dir.glob("django_transactional_outbox-*.whl")
    return wheel

"""Build hook, next to pyproject.toml (which holds all the metadata): the pages of docs/ ship
inside the wheel as ``outbox/_docs/``, so that system-check hints and ``python -m outbox.docs``
point to documentation that an installed package really has (setuptools' package data only
reaches files inside a package's own folder)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DOCS = Path(__file__).resolve().parent / "docs"


class BuildPyWithDocs(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "outbox" / "_docs"
        self.mkpath(str(target))
        for page in sorted(DOCS.glob("*.md")):
            self.copy_file(str(page), str(target / page.name))


setup(cmdclass={"build_py": BuildPyWithDocs})

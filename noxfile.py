"""Sessions: `nox` runs tests, lint and typecheck; `nox -s bench` measures (not by default)."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

PYPROJECT = nox.project.load_toml("pyproject.toml")
SOURCES = ["asrv", "tests", "examples", "benchmarks", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, against an installed copy of the package."""
    session.install(".")
    session.install(*nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(".")
    session.install(*nox.project.dependency_groups(PYPROJECT, "typecheck"))
    session.run("mypy", "--strict", "asrv")


@nox.session
def bench(session: nox.Session) -> None:
    """Load the server with wrk (installed from Debian if missing); not run by default."""
    if shutil.which("wrk") is None:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "wrk", external=True)
    session.install(".")
    session.run("python", "benchmarks/run.py", *session.posargs)

"""Sessions: `nox` runs tests, lint and typecheck; `nox -s bench` measures,
`nox -s bench_instructions` counts instructions per request and `nox -s build` checks the
packages (none of these three runs by default)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

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
    """Benchmark asrv against nginx, aiohttp and http.server with wrk; not run by default.

    Installs wrk and nginx from Debian when missing (as root); see benchmarks/run.py.
    """
    session.install(".", "aiohttp")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def bench_instructions(session: nox.Session) -> None:
    """Instructions per request of asrv under valgrind's callgrind; not run by default.

    Needs valgrind. Arguments go to benchmarks/instructions.py: to compare two builds,
    `nox -s bench_instructions -- before=/path/to/other/checkout now=.`.
    """
    session.install(".")
    session.run("python", "benchmarks/instructions.py", *session.posargs)


@nox.session
def build(session: nox.Session) -> None:
    """Build the wheel and the sdist, install each (and an editable copy) into a fresh venv,
    and smoke-test every install with its own Python; not run by default."""
    project = Path.cwd()
    smoke = project / "tests" / "smoke_installed.py"
    session.install("build")
    work = Path(tempfile.mkdtemp(prefix="asrv-build-"))
    try:
        dist = work / "dist"
        session.run("python", "-m", "build", "--outdir", str(dist), str(project))
        wheels, sdists = sorted(dist.glob("asrv-*.whl")), sorted(dist.glob("asrv-*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            session.error(f"expected one wheel and one sdist, got {wheels + sdists}")
        installs = {
            "wheel": [str(wheels[0])],
            "sdist": [str(sdists[0])],
            "editable": ["-e", str(project)],
        }
        for kind, target in installs.items():
            venv = work / f"venv-{kind}"
            python = str(venv / "bin" / "python")
            session.log(f"{kind}: install into a fresh venv")
            session.run("python", "-m", "venv", str(venv))
            pip_install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            session.run(*pip_install, *target, external=True)
            expected = project if kind == "editable" else venv
            # From a directory without the source tree, so that the installed copy is tested.
            with session.chdir(work):
                session.run(python, str(smoke), str(expected), external=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

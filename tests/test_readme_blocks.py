"""Every command block of the README runs as written, as a new user would run it: in a fresh
virtual environment made by the quick start's own `pip install .`, on the README's own ports.

A block fenced as `text` is a synopsis, a format or a diagram; every `sh` and `python` block
is run by one test here. The quick start's second command (`nox`) is what CI runs: `.ci/run`
ends with it, word for word, so it is not run again from inside the suite it starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_readme import README, fenced_blocks

REPO = README.parent
UNCOPIED = shutil.ignore_patterns(
    ".git", ".nox", ".venv", "__pycache__", "*.egg-info", ".*_cache", "build", "dist", "demo"
)


def block(first_line: str) -> str:
    """The README's `sh` or `python` block that starts with `first_line`."""
    found = [
        body
        for info, body in fenced_blocks(README.read_text())
        if info in ("sh", "python") and body.startswith(first_line)
    ]
    assert len(found) == 1, f"README blocks starting {first_line!r}: {len(found)}"
    return found[0]


QUICK_START = "python -m pip install . && python -m asrv --threads 4 8080\n"
CURL_EXAMPLES = "curl -I http://127.0.0.1:8080/a.txt"
TLS_TRY_IT = "openssl req -x509 -newkey rsa:2048"
VERIFYING = "mkdir -p demo/root\n"
EMBEDDING = "import asyncio\n"
RUN_HERE = [QUICK_START, CURL_EXAMPLES, TLS_TRY_IT, VERIFYING, EMBEDDING]


def test_every_command_block_is_run_here_or_is_text() -> None:
    infos = {info for info, _ in fenced_blocks(README.read_text())}
    assert infos <= {"sh", "python", "text"}, f"blocks of unknown kind: {infos}"
    runnable = [
        body for info, body in fenced_blocks(README.read_text()) if info in ("sh", "python")
    ]
    unrun = [body.splitlines()[0] for body in runnable if not body.startswith(tuple(RUN_HERE))]
    assert unrun == [], "README blocks that no test runs"
    assert len(runnable) == len(RUN_HERE)


def test_ci_runs_the_quick_starts_test_command() -> None:
    (test_command,) = [line for line in block(QUICK_START).splitlines()[1:] if line.strip()]
    assert test_command == "python -m pip install nox && nox"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == test_command


def free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def need_ports(*ports: int) -> None:
    taken = [port for port in ports if not free(port)]
    if taken:
        pytest.skip(f"the README's port {taken} is taken on this machine")


def run_block(
    text: str, cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs a shell block with `bash -e` in its own process group, and ends whatever it left
    running (a server it put in the background) by that group."""
    shell = start_block(text, cwd, env)
    try:
        out, err = shell.communicate(timeout=timeout)
    finally:
        end_group(shell.pid)
    return subprocess.CompletedProcess(shell.args, shell.returncode, out, err)


def start_block(text: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`bash -e -c text` in a process group of its own, its output in pipes."""
    return subprocess.Popen(
        ["bash", "-e", "-c", text],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def end_group(leader: int) -> None:
    """Ends the process group this module started under `leader`, if anything is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGKILL)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's files, as a new user's clone has them."""
    target = tmp_path_factory.mktemp("clone") / "asrv"
    shutil.copytree(REPO, target, ignore=UNCOPIED)
    return target


@pytest.fixture(scope="module")
def user_env(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh virtual environment first on PATH, `python` there being the user's Python,
    with asrv installed by the quick start's own install command, run in the clone."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    install, _serve = quick_start_line().split(" && ")
    installed = run_block(install, clone, env)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    return env


def quick_start_line() -> str:
    (line,) = [line for line in block(QUICK_START).splitlines() if "8080" in line]
    return line


@pytest.fixture(scope="module")
def quick_start(clone: Path, user_env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """The quick start's first command, whole, run in the clone: installs asrv (again) into
    the fresh environment, then serves the clone on 127.0.0.1:8080 (the audit log on
    standard error)."""
    need_ports(8080)
    (clone / "a.txt").write_text("a file to try the examples on\n" * 10)
    server = start_block(quick_start_line(), clone, user_env)
    try:
        assert server.stdout is not None
        lines: list[str] = []
        while not any("listening on" in line for line in lines):
            line = server.stdout.readline()
            assert line, f"the quick start ended: {''.join(lines)[-2000:]}"
            lines.append(line)
        assert "listening on http://127.0.0.1:8080" in lines[-1], lines[-1]
        yield server
    finally:
        end_group(server.pid)


def stop_quick_start(server: subprocess.Popen[str]) -> tuple[str, list[str]]:
    """SIGTERM to the quick start's group; its diagnostics and its audit log's lines."""
    os.killpg(server.pid, signal.SIGTERM)
    out, err = server.communicate(timeout=60)
    return out, [line for line in err.splitlines() if re.fullmatch(r"[A-Z]+,/.*", line)]


def test_quick_start_installs_and_serves_and_the_curl_examples_run(
    quick_start: subprocess.Popen[str], user_env: dict[str, str], tmp_path: Path
) -> None:
    served = urllib.request.urlopen("http://127.0.0.1:8080/pyproject.toml", timeout=30)
    assert served.read() == (REPO / "pyproject.toml").read_bytes()
    examples = run_block(block(CURL_EXAMPLES), tmp_path, user_env)
    assert examples.returncode == 0, examples.stderr
    assert "ETag: " in examples.stdout and "HTTP/1.1 200 OK" in examples.stdout
    out, log = stop_quick_start(quick_start)
    assert "stopped after 8 requests" in out, out
    assert log == [
        "GET,/pyproject.toml,200,0",
        "HEAD,/a.txt,200,0",
        "GET,/a.txt,206,0",
        "GET,/a.txt,200,0",  # `-C -` with no partial file here yet: the whole file
        "DELETE,/a.txt,200,0",
        "PUT,/b.txt,201,0",
        "GET,/n.txt,404,0",  # the counter: no file yet, so it creates one
        "PUT,/n.txt,201,0",
    ]
    assert (tmp_path / "a.txt").read_text() == "a file to try the examples on\n" * 10


def test_trying_tls_serves_over_https(user_env: dict[str, str], tmp_path: Path) -> None:
    need_ports(8443)
    shutil.copy(README, tmp_path / "README.md")
    tried = run_block(block(TLS_TRY_IT), tmp_path, user_env)
    assert tried.returncode == 0, tried.stderr
    assert README.read_text() in tried.stdout  # after the server's start-up line
    # The log line, amid curl's progress meter on the same standard error.
    assert tried.stderr.count("GET,/README.md,200,0\n") == 1, tried.stderr


def test_verifying_walk_through_checks_three_loads(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    need_ports(8090)
    walked = run_block(block(VERIFYING), tmp_path, user_env)
    assert walked.returncode == 0, walked.stderr
    checks = [line for line in walked.stdout.splitlines() if line.startswith("asrv.check:")]
    assert len(checks) == 3 and all(line.startswith("asrv.check: ok: ") for line in checks), (
        walked.stdout + walked.stderr
    )
    assert "requests checked" in checks[-1]


def test_embedding_snippet_serves_while_the_application_works(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "embed.py").write_text(block(EMBEDDING))
    env = {**user_env, "PYTHONUNBUFFERED": "1"}  # to read the port while it runs
    program = subprocess.Popen(
        ["python", "embed.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert program.stdout is not None
        started = program.stdout.readline()
        assert started.startswith("serving on port "), started
        base = f"http://127.0.0.1:{int(started.split()[-1])}"
        put = urllib.request.Request(f"{base}/note.txt", data=b"kept\n", method="PUT")
        assert urllib.request.urlopen(put, timeout=30).status == 201
        assert urllib.request.urlopen(f"{base}/note.txt", timeout=30).read() == b"kept\n"
        assert program.wait(timeout=60) == 0
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
    assert (tmp_path / "files" / "note.txt").read_text() == "kept\n"
    log = (tmp_path / "audit.log").read_text().splitlines()
    assert log == ["PUT,/note.txt,201,0", "GET,/note.txt,200,0"]

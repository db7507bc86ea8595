"""The examples in examples/ run as documented."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Process, Site

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_embed_example(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "HTTP/1.1 201 Created" in done.stdout
    assert "hello from an embedded server" in done.stdout
    assert done.stdout.endswith("audit log:\nPUT,/greeting.txt,201,1\nGET,/greeting.txt,200,2\n")
    assert (tmp_path / "greeting.txt").read_text() == "hello from an embedded server\n"


def test_curl_example(spawn_server: Callable[..., Process], site: Site) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (.ci/run installs it): examples/curl.sh not run")
    server = spawn_server()
    done = subprocess.run(
        ["sh", str(EXAMPLES / "curl.sh"), str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.replace("\r\n", "\n") == (
        "== PUT a new file: 201 Created\n"
        "HTTP/1.1 100 Continue\n\n"
        "HTTP/1.1 201 Created\nContent-Length: 8\n\nCreated\n"
        "== GET it back: 200 OK\n"
        "hello from curl\n200\n"
        "== GET a file that does not exist: 404 Not Found\n"
        "Not Found\n404\n"
        "== PUT again: the file is replaced, 200 OK\n"
        "OK\n200\n"
        "== GET with Connection: close: the response says Connection: close too\n"
        "HTTP/1.1 200 OK\nContent-Length: 9\nConnection: close\n\nreplaced\n"
    )
    assert server.stop() == 0
    assert site.log_lines() == [
        "PUT,/hello.txt,201,curl-1",
        "GET,/hello.txt,200,curl-2",
        "GET,/missing.txt,404,curl-3",
        "PUT,/hello.txt,200,curl-4",
        "GET,/hello.txt,200,curl-5",
    ]
    assert (site.root / "hello.txt").read_text() == "replaced\n"


def test_verify_example() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "verify.py"), "300"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check: 300 requests, 300 log lines, 0 violations" in done.stdout

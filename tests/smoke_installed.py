"""Smoke test of an installed asrv, run by `nox -s build` with the Python of a fresh venv.

    python tests/smoke_installed.py EXPECTED_DIR

Checks that `asrv` is imported from EXPECTED_DIR (the venv for a wheel or an sdist, the source
tree for an editable install), that the console script and `python -m asrv` answer, and that
the installed server starts, serves a PUT and a GET, and stops cleanly on SIGTERM.
Standard library only: the venv holds asrv and its dependencies, nothing else.
"""

from __future__ import annotations

import importlib.metadata
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT = 60


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    return done.stdout


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def check_import(expected_dir: Path) -> None:
    import asrv  # noqa: PLC0415 (after the checks of sys.path below)

    location = Path(asrv.__file__).resolve()
    assert location.is_relative_to(expected_dir), (location, expected_dir)
    assert asrv.__version__ == importlib.metadata.version("asrv"), asrv.__version__
    assert (location.parent / "py.typed").is_file(), "py.typed is not installed"
    config = asrv.Config(port=0, host="127.0.0.1", threads=1)
    assert callable(asrv.serve) and isinstance(asrv.Server(config), asrv.Server)
    print(f"import asrv {asrv.__version__} from {location.parent}")


def check_commands(script: Path) -> None:
    version = run(str(script), "--version")
    assert version == f"asrv {importlib.metadata.version('asrv')}\n", version
    usage = run(sys.executable, "-m", "asrv", "--help")
    assert usage.startswith("usage: python -m asrv ") and "--threads" in usage, usage[:200]
    usage = run(str(script), "--help")
    assert usage.startswith("usage: asrv ") and "--threads" in usage, usage[:200]
    print(f"{script.name} --version: {version.strip()}; --help and python -m asrv --help: ok")


def check_serving(script: Path) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root, log = Path(directory, "root"), Path(directory, "audit.log")
        root.mkdir()
        argv = [str(script), "--host", "127.0.0.1", "--root", str(root), "--log", str(log), "0"]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert server.stderr is not None
            ready, _, _ = select.select([server.stderr], [], [], TIMEOUT)
            assert ready, f"no start-up line within {TIMEOUT} s"
            line = server.stderr.readline().decode()
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+) ", line)
            assert match is not None, line
            port = int(match[1])
            put = b"PUT /smoke.txt HTTP/1.1\r\nContent-Length: 6\r\nRequest-Id: 1\r\n\r\nsmoke\n"
            created = b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\nCreated\n"
            assert exchange(port, put) == created
            get = b"GET /smoke.txt HTTP/1.1\r\nRequest-Id: 2\r\n\r\n"
            assert exchange(port, get) == b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsmoke\n"
            server.send_signal(signal.SIGTERM)
            assert server.wait(TIMEOUT) == 0, server.returncode
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(TIMEOUT)
            if server.stderr is not None:
                server.stderr.close()
        assert log.read_text() == "PUT,/smoke.txt,201,1\nGET,/smoke.txt,200,2\n", log.read_text()
        assert (root / "smoke.txt").read_bytes() == b"smoke\n"
    print(f"{script.name} served a PUT and a GET on port {port}, logged both, exited 0")


def main() -> None:
    expected_dir = Path(sys.argv[1]).resolve()
    # The installed copy, not a source tree that happens to be the current directory.
    assert not Path("asrv").exists(), "run this from a directory without an asrv/ folder"
    script = Path(sys.executable).parent / "asrv"
    assert script.is_file(), f"console script missing: {script}"
    check_import(expected_dir)
    check_commands(script)
    check_serving(script)


if __name__ == "__main__":
    main()

"""The audit log's file: standard error redirected to a file is read back and recovered, a
log that cannot be read back never lets recovery guess, and one log has one server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from asrv import Config, ExitStatus, Server, StartupError
from tests.conftest import HOST, Process, Site, get, put, response, split_response


def tagged_intent(site: Site, offset: int, name: str) -> Path:
    return site.root / f".asrv~{os.stat(site.log).st_ino:x}~{offset}~{name}"


def start_with_log_on_stderr(
    spawn_server: Callable[..., Process], site: Site, *args: str
) -> tuple[Process, IO[bytes]]:
    """`python -m asrv -l - 2>>LOG`, the course's way of keeping the log."""
    log = open(site.log, "ab")  # noqa: SIM115 (handed to the child, closed by the caller)
    server = spawn_server("-l", "-", *args, diagnostics="stdout", stderr=log)
    return server, log


def test_stderr_redirected_to_a_file_is_recovered(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    site.log.write_bytes(b"PUT,/a,201,1\nPUT,/b,20")  # b's line was cut by the crash
    tagged_intent(site, 13, "a").write_bytes(b"logged")
    server, log = start_with_log_on_stderr(spawn_server, site)
    try:
        assert "redid 1 logged PUTs and DELETEs" in server.earlier_lines[0]
        assert "cut 9 bytes" in server.earlier_lines[0]
        assert split_response(asyncio.run(get(server.port, "a", 2))) == (200, b"logged")
        assert server.stop() == 0
    finally:
        log.close()
    assert site.log_lines() == ["PUT,/a,201,1", "GET,/a,200,2"]


def test_a_put_through_a_log_on_stderr_names_that_log(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    server, log = start_with_log_on_stderr(spawn_server, site)
    try:
        assert asyncio.run(put(server.port, "a", b"x", 1)) == response(201, "Created")
        assert server.stop() == 0
    finally:
        log.close()
    assert site.log_lines() == ["PUT,/a,201,1"]


@pytest.mark.parametrize("log", ["/dev/stdout", "-"])
def test_a_log_that_cannot_be_read_back_never_lets_recovery_guess(site: Site, log: str) -> None:
    debris = site.root / ".asrv~1f~13~a"
    debris.write_bytes(b"maybe logged")
    # Standard output and error are pipes here: nothing to read the log back from.
    done = subprocess.run(
        [sys.executable, "-m", "asrv", "--host", HOST, "--root", str(site.root), "-l", log, "0"],
        capture_output=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == ExitStatus.RECOVERY_FAILED
    diagnostics = done.stdout if log == "-" else done.stderr
    assert diagnostics.decode().count("\n") == 1
    assert b".asrv~1f~13~a" in diagnostics and b"cannot be read back" in diagnostics
    assert debris.read_bytes() == b"maybe logged"
    assert not (site.root / "a").exists()


@pytest.mark.asyncio
async def test_one_log_belongs_to_one_server(site: Site, tmp_path: Path) -> None:
    other_root = tmp_path / "other"
    other_root.mkdir()
    first = Config(root=site.root, log=str(site.log), host=HOST, port=0)
    second = Config(root=other_root, log=str(site.log), host=HOST, port=0)
    async with Server(first):
        with pytest.raises(StartupError, match="used by another asrv") as refused:
            await Server(second).start()
        assert refused.value.status == ExitStatus.LOG_UNUSABLE
    async with Server(second) as server:  # free again once the first has closed
        assert await put(server.port, "b", b"b") == response(201, "Created")


def test_one_log_on_stderr_belongs_to_one_server(
    site: Site, spawn_server: Callable[..., Process], tmp_path: Path
) -> None:
    server, log = start_with_log_on_stderr(spawn_server, site)
    other_root = tmp_path / "other"
    other_root.mkdir()
    try:
        with open(site.log, "ab") as same_log:
            done = subprocess.run(
                [sys.executable, "-m", "asrv", "--host", HOST, "--root", str(other_root), "0"],
                stdout=subprocess.PIPE,
                stderr=same_log,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        assert done.returncode == ExitStatus.LOG_UNUSABLE
        assert b"used by another asrv" in done.stdout  # not into the log it does not own
        assert server.stop() == 0
    finally:
        log.close()
    assert site.log.read_bytes() == b""


def test_a_log_on_stderr_without_append_is_appended_to(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    # `2<>audit.log`, or a service manager's `file:`: standard error is open at offset 0
    # without O_APPEND. Lines must still go to the end, never over the old ones.
    site.log.write_bytes(b"GET,/old,404,1\n")
    with open(site.log, "r+b") as log:
        server = spawn_server("-l", "-", diagnostics="stdout", stderr=log)
    assert asyncio.run(get(server.port, "new", 2)) == response(404, "Not Found")
    assert server.stop() == 0
    assert site.log_lines() == ["GET,/old,404,1", "GET,/new,404,2"]

"""Start-up recovery, and the crash test it exists for: kill -9 under load, restart, and the
log must still explain the files."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from asrv import Config
from asrv.check import check
from asrv.errors import ExitStatus, StartupError
from asrv.etags import EtagStamper, current_etag
from asrv.load import LoadOptions, Summary, run_load
from asrv.logfile import LogFile
from asrv.recovery import RecoveryReport, recover
from tests.conftest import Process, ServerFactory, Site, exchange, get, put, split_response


def body_for(request_id: str) -> bytes:
    """A PUT body that the request id alone determines, so a replay can rebuild files."""
    seed = hashlib.sha256(request_id.encode()).digest()
    return seed * (1 + seed[0] * 8)


def recover_dir(root: Path, log: Path) -> RecoveryReport:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    log_file = LogFile.open(Config(root=root, log=str(log)))
    try:
        return recover(root_fd, log_file)
    finally:
        os.close(root_fd)
        log_file.close()


def intent(site: Site, offset: int, name: str) -> Path:
    """The path of a PUT's intent file for the line ending at `offset` of `site.log`."""
    site.log.touch()
    return site.root / f".asrv~{os.stat(site.log).st_ino:x}~{offset}~{name}"


def test_recovery_settles_every_kind_of_debris(site: Site) -> None:
    (site.root / "a").write_bytes(b"old a")
    lines = b"GET,/x,404,1\nPUT,/a,200,2\nPUT,/b,201,3\n"
    site.log.write_bytes(lines + b"PUT,/c,20")  # the last line was cut by the crash
    end_of_a = len(b"GET,/x,404,1\nPUT,/a,200,2\n")
    intent(site, end_of_a, "a").write_bytes(b"new a")  # logged: redo
    intent(site, len(lines) + 13, "c").write_bytes(b"c")  # line incomplete: undo
    (site.root / ".asrv_upload_0123").write_bytes(b"partial body")  # never committed

    report = recover_dir(site.root, site.log)

    assert report == RecoveryReport(cut_bytes=9, redone=1, removed=2)
    assert site.log.read_bytes() == lines
    assert sorted(p.name for p in site.root.iterdir()) == ["a"]
    assert (site.root / "a").read_bytes() == b"new a"
    # Idempotent: a second pass (say, after a crash during the first) finds nothing to do.
    assert not recover_dir(site.root, site.log)


def test_later_logged_put_wins_when_both_are_pending(site: Site) -> None:
    first, second = b"PUT,/f,201,1\n", b"PUT,/f,200,2\n"
    site.log.write_bytes(first + second)
    intent(site, len(first), "f").write_bytes(b"one")
    intent(site, len(first + second), "f").write_bytes(b"two")
    assert recover_dir(site.root, site.log).redone == 2
    assert (site.root / "f").read_bytes() == b"two"


@pytest.mark.parametrize(
    ("lines", "name", "why"),
    [
        # The line at its offset is another request's: this intent is not from this log.
        (b"GET,/x,404,1\n", "x", "does not match"),
        # A PUT of that name, but one that changed nothing (403): never renamed anything.
        (b"PUT,/x,403,1\n", "x", "does not match"),
        (b"PUT,/y,201,1\n", "x", "does not match"),
    ],
)
def test_an_intent_the_log_does_not_explain_stops_the_start(
    site: Site, lines: bytes, name: str, why: str
) -> None:
    site.log.write_bytes(lines)
    debris = intent(site, len(lines), name)
    debris.write_bytes(b"?")
    with pytest.raises(StartupError, match=why) as refused:
        recover_dir(site.root, site.log)
    assert refused.value.status == ExitStatus.RECOVERY_FAILED
    assert debris.read_bytes() == b"?"  # neither applied nor deleted
    assert not (site.root / name).exists()


def test_an_intent_of_another_log_stops_the_start(site: Site, tmp_path: Path) -> None:
    other = tmp_path / "other.log"
    other.write_bytes(b"PUT,/a,201,1\n")
    site.log.write_bytes(b"PUT,/a,201,1\n")
    debris = site.root / f".asrv~{os.stat(other).st_ino:x}~13~a"
    debris.write_bytes(b"from the other log")
    with pytest.raises(StartupError, match="another audit log"):
        recover_dir(site.root, site.log)
    assert debris.exists() and not (site.root / "a").exists()


def test_names_asrv_never_makes_are_left_and_reported(site: Site) -> None:
    site.log.write_bytes(b"PUT,/a,201,1\n")
    tag = f"{os.stat(site.log).st_ino:x}"
    strays = [
        f".asrv~{tag}~013~a",  # leading zero: not an offset asrv writes
        f".asrv~{tag}~13~..",  # no PUT writes ".." or "."
        f".asrv~{tag}~13~.",
        ".asrv~x",
    ]
    for stray in strays:
        (site.root / stray).write_bytes(b"stray")
    report = recover_dir(site.root, site.log)
    assert report == RecoveryReport(strays=tuple(sorted(strays)))
    assert sorted(p.name for p in site.root.iterdir()) == sorted(strays)


def test_an_untagged_intent_of_an_earlier_version_is_still_redone(site: Site) -> None:
    site.log.write_bytes(b"PUT,/a,201,1\n")
    (site.root / ".asrv~13~a").write_bytes(b"logged by 0.1")
    assert recover_dir(site.root, site.log) == RecoveryReport(redone=1)
    assert (site.root / "a").read_bytes() == b"logged by 0.1"


@pytest.mark.asyncio
async def test_server_recovers_before_listening(site: Site, running_server: ServerFactory) -> None:
    site.log.write_bytes(b"PUT,/a,201,1\n")
    intent(site, 13, "a").write_bytes(b"recovered")
    async with running_server() as server:
        assert server.recovery == RecoveryReport(redone=1)
        assert split_response(await get(server.port, "a", 2)) == (200, b"recovered")
    assert site.log_lines() == ["PUT,/a,201,1", "GET,/a,200,2"]


def replay(log_lines: list[str]) -> dict[str, bytes]:
    """The files the log says exist, and their contents; each status must be the one a
    single-threaded server would have given."""
    files: dict[str, bytes] = {}
    for line in log_lines:
        method, uri, status, request_id = line.split(",")
        name = uri[1:]
        if method == "PUT":
            assert status == ("200" if name in files else "201"), line
            files[name] = body_for(request_id)
        elif method == "DELETE":
            assert status == ("200" if name in files else "404"), line
            files.pop(name, None)
    return files


@pytest.mark.parametrize("log_on", ["file", "stderr"], ids=["-l FILE", "-l - 2>>FILE"])
def test_kill_9_under_load_then_restart(
    site: Site, spawn_server: Callable[..., Process], log_on: str
) -> None:
    rounds = int(os.environ.get("ASRV_CRASH_ROUNDS", "5"))
    rng = random.Random(int(os.environ.get("ASRV_CRASH_SEED", "1")))
    acknowledged: dict[str, tuple[int, bytes]] = {}

    def start(*args: str) -> Process:
        if log_on == "file":
            return spawn_server(*args)
        # The course's way: the log is standard error, appended to a file by the shell.
        with open(site.log, "ab") as log:
            return spawn_server("-l", "-", *args, diagnostics="stdout", stderr=log)

    for round_number in range(rounds):
        server = start("-t", "4")

        async def load(port: int, deadline: float, round_number: int = round_number) -> None:
            async def client(i: int) -> None:
                for j in range(10_000):
                    rid = f"{round_number}.{i}.{j}"
                    name = f"f{rng.randrange(3)}"
                    try:
                        if j % 3 == 0:
                            answer = await get(port, name, rid)
                        elif j % 5 == 4:
                            answer = await delete(port, name, rid)
                        else:
                            answer = await put(port, name, body_for(rid), rid)
                    except (ConnectionError, asyncio.IncompleteReadError):
                        return
                    if not answer:
                        return  # killed before answering
                    acknowledged[rid] = split_response(answer)

            await asyncio.wait(
                [asyncio.ensure_future(client(i)) for i in range(16)],
                timeout=deadline,
            )

        async def crash_during_load(server: Process = server) -> None:
            task = asyncio.ensure_future(load(server.port, 30))
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            server.popen.send_signal(signal.SIGKILL)
            server.popen.wait(30)
            await asyncio.wait_for(task, 30)

        asyncio.run(crash_during_load())

    # One more start recovers the last crash; then check everything against the log.
    final = start()
    assert final.stop() == 0
    log_bytes = site.log.read_bytes()
    assert log_bytes.endswith(b"\n")
    lines = log_bytes.decode().splitlines()
    logged = {line.rsplit(",", 1)[1]: line for line in lines}
    assert len(logged) == len(lines), "a request id logged twice"
    for rid, (code, _) in acknowledged.items():
        assert rid in logged, f"acknowledged request {rid} is not in the log"
        assert logged[rid].split(",")[2] == str(code)
    assert sorted(p.name for p in site.root.iterdir()) == sorted(replay(lines))
    for name, content in replay(lines).items():
        assert (site.root / name).read_bytes() == content, name
    # Acknowledged GETs saw what the log order says they saw.
    files: dict[str, bytes] = {}
    for line in lines:
        method, uri, _, rid = line.split(",")
        if method == "PUT":
            files[uri] = body_for(rid)
        elif method == "DELETE":
            files.pop(uri, None)
        elif rid in acknowledged:
            expected = (200, files[uri]) if uri in files else (404, b"Not Found\n")
            assert acknowledged[rid] == expected, line
    assert len(acknowledged) > rounds * 10, "the load did not get going"
    assert any(line.startswith("DELETE") and ",200," in line for line in lines)


async def delete(port: int, name: str, request_id: str) -> bytes:
    return await exchange(
        port, f"DELETE /{name} HTTP/1.1\r\nRequest-Id: {request_id}\r\n\r\n".encode()
    )


def test_a_logged_put_with_a_long_request_id_is_redone(site: Site) -> None:
    # A Request-Id may make a line longer than the piece of log read at a time.
    line = b"PUT,/a,201," + b"r" * 9000 + b"\n"
    site.log.write_bytes(b"GET,/x,404,1\n" + line)
    intent(site, site.log.stat().st_size, "a").write_bytes(b"logged")
    assert recover_dir(site.root, site.log) == RecoveryReport(redone=1)
    assert (site.root / "a").read_bytes() == b"logged"


def test_the_log_under_an_upload_name_in_the_root_is_never_removed(site: Site) -> None:
    log = site.root / ".asrv_upload_log"
    log.write_bytes(b"GET,/x,404,1\n")
    (site.root / ".asrv_upload_0123").write_bytes(b"partial body")
    report = recover_dir(site.root, log)
    assert report == RecoveryReport(removed=1, strays=(".asrv_upload_log",))
    assert log.read_bytes() == b"GET,/x,404,1\n"


def deletion_intent(site: Site, offset: int, name: str) -> Path:
    """The path a DELETE moves `name` to until its line, ending at `offset`, is durable."""
    site.log.touch()
    return site.root / f".asrv-deleted~{os.stat(site.log).st_ino:x}~{offset}~{name}"


def test_a_logged_delete_is_finished_and_an_unlogged_one_undone(site: Site) -> None:
    lines = b"PUT,/a,201,1\nDELETE,/a,200,2\n"
    site.log.write_bytes(lines)
    # A DELETE links its file to its intent, and unlinks the name once its line is durable.
    (site.root / "a").write_bytes(b"a")
    os.link(site.root / "a", deletion_intent(site, len(lines), "a"))  # logged: both go
    (site.root / "b").write_bytes(b"b")
    os.link(site.root / "b", deletion_intent(site, len(lines) + 16, "b"))  # not logged: stays
    report = recover_dir(site.root, site.log)
    assert report == RecoveryReport(redone=1, undone=1)
    assert sorted(p.name for p in site.root.iterdir()) == ["b"]
    assert (site.root / "b").read_bytes() == b"b"
    assert not recover_dir(site.root, site.log)


def test_a_logged_delete_spares_a_file_a_later_put_installed(site: Site) -> None:
    lines = b"DELETE,/a,200,1\nPUT,/a,201,2\n"
    site.log.write_bytes(lines)
    deletion_intent(site, 16, "a").write_bytes(b"deleted")  # its unlink did not survive
    (site.root / "a").write_bytes(b"put after the delete")
    assert recover_dir(site.root, site.log) == RecoveryReport(redone=1)
    assert sorted(p.name for p in site.root.iterdir()) == ["a"]
    assert (site.root / "a").read_bytes() == b"put after the delete"


def test_a_logged_delete_stops_the_start_over_a_file_no_later_put_explains(
    site: Site,
) -> None:
    lines = b"DELETE,/a,200,1\nGET,/a,404,2\n"
    site.log.write_bytes(lines)
    debris = deletion_intent(site, 16, "a")
    debris.write_bytes(b"deleted")
    (site.root / "a").write_bytes(b"from nowhere")
    with pytest.raises(StartupError, match="no PUT after byte 16"):
        recover_dir(site.root, site.log)
    assert debris.exists() and (site.root / "a").read_bytes() == b"from nowhere"


def test_without_hard_links_a_moved_file_is_given_back_or_removed(site: Site) -> None:
    # Where link(2) is refused, a DELETE moves its file to the intent instead.
    lines = b"DELETE,/a,200,1\n"
    site.log.write_bytes(lines)
    deletion_intent(site, len(lines), "a").write_bytes(b"a")  # logged: removed
    deletion_intent(site, len(lines) + 16, "b").write_bytes(b"b")  # not logged: back
    assert recover_dir(site.root, site.log) == RecoveryReport(redone=1, undone=1)
    assert sorted(p.name for p in site.root.iterdir()) == ["b"]
    assert (site.root / "b").read_bytes() == b"b"


@pytest.mark.parametrize(
    "lines",
    [b"DELETE,/a,404,1\n", b"DELETE,/b,200,1\n", b"PUT,/a,200,1\n"],
    ids=["not-a-deleting-status", "another-file", "another-method"],
)
def test_a_deletion_intent_the_log_does_not_explain_stops_the_start(
    site: Site, lines: bytes
) -> None:
    site.log.write_bytes(lines)
    debris = deletion_intent(site, len(lines), "a")
    debris.write_bytes(b"?")
    with pytest.raises(StartupError, match="does not match"):
        recover_dir(site.root, site.log)
    assert debris.read_bytes() == b"?"


def test_an_unlogged_delete_is_not_undone_over_another_file(site: Site) -> None:
    site.log.write_bytes(b"")
    deletion_intent(site, 20, "a").write_bytes(b"deleted")
    (site.root / "a").write_bytes(b"unexplained")
    with pytest.raises(StartupError, match="the name is taken"):
        recover_dir(site.root, site.log)
    assert (site.root / "a").read_bytes() == b"unexplained"


def test_a_redone_put_keeps_the_etag_it_was_stamped_with(site: Site) -> None:
    site.log.write_bytes(b"PUT,/a,201,1\n")
    staged = intent(site, 13, "a")
    staged.write_bytes(b"stamped")
    fd = os.open(staged, os.O_RDONLY)
    try:
        etag = EtagStamper.for_log(os.stat(site.log).st_ino).stamp(fd, 13)
    finally:
        os.close(fd)
    assert recover_dir(site.root, site.log) == RecoveryReport(redone=1)
    fd = os.open(site.root / "a", os.O_RDONLY)
    try:
        assert current_etag(fd, os.fstat(fd)) == etag
    finally:
        os.close(fd)


@pytest.mark.parametrize("round_number", range(3))
def test_kill_9_under_a_mixed_load_then_the_log_still_explains_everything(
    site: Site, spawn_server: Callable[..., Process], round_number: int
) -> None:
    """Every kind of request at once (GET, HEAD, ranges, PUT, DELETE, conditional
    read-modify-writes), a kill -9 at a random moment, a restart that recovers: the log
    must be a linearization of what the clients saw, and the files its replay."""
    rng = random.Random(round_number)
    server = spawn_server("-t", "4")
    history = site.log.with_name("history.jsonl")
    options = LoadOptions(
        port=server.port,
        root=site.root,
        history=history,
        clients=24,
        requests=4000,
        uris=3,
        get_ratio=0.25,
        head_ratio=0.1,
        delete_ratio=0.15,
        range_ratio=0.2,
        cas=True,
        keep_alive=True,
        max_body=300_000,
        seed=round_number,
        request_timeout=10,
    )

    async def crash_during_load() -> Summary:
        load = asyncio.ensure_future(run_load(options))
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        server.popen.send_signal(signal.SIGKILL)
        server.popen.wait(30)
        return await asyncio.wait_for(load, 120)

    summary = asyncio.run(crash_during_load())
    assert summary.statuses and summary.failures, summary.line()  # the crash came mid-run
    restarted = spawn_server()
    assert restarted.stop() == 0
    report = check(site.log, history, final_dir=site.root)
    assert report.ok, report.render()
    assert not [p.name for p in site.root.iterdir() if p.name.startswith(".asrv")]

"""asrv.auditlog with real threads and a real file: order, durability, group commit,
reserved slots, and failure.

Where a test needs a flush to be *in progress*, it holds the leader inside `os.fdatasync` or
`os.write` for the log's descriptor only (a `Gate`), so the interleaving is fixed by events,
not by timing. Every wait and join is bounded.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asrv.auditlog import AuditLog, LogFailure, Reservation
from asrv.errors import FatalError
from tests.threads import TIMEOUT, Worker, finish, join, spawn, wait_until

APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def waiters(log: AuditLog) -> int:
    """Threads blocked in the log's condition (CPython keeps one lock per waiter)."""
    return len(log._cond._waiters)  # type: ignore[attr-defined]


class Gate:
    """Stops the thread that calls `os.<name>` on `fd` until the test opens the gate.

    Calls on other descriptors pass straight through.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, fd: int) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        real = getattr(os, name)

        def gated(target: int, *args: Any) -> Any:
            if target == fd:
                self.entered.set()
                if not self._open.wait(TIMEOUT):
                    raise TimeoutError(f"gate on os.{name} never opened")
            return real(target, *args)

        monkeypatch.setattr(os, name, gated)

    def wait_entered(self) -> None:
        assert self.entered.wait(TIMEOUT), "nobody reached the gate"

    def open(self) -> None:
        self._open.set()


class Calls:
    """Records os-level calls on the files chosen descriptors are open on (through those
    descriptors or duplicates of them), in order, and performs them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fds: dict[int, str]) -> None:
        self.log: list[str] = []
        files = {_identity(fd): name for fd, name in fds.items()}
        for name in ("write", "fsync", "fdatasync"):
            self._wrap(monkeypatch, name, files)

    def _wrap(
        self, monkeypatch: pytest.MonkeyPatch, name: str, files: dict[tuple[int, int], str]
    ) -> None:
        real = getattr(os, name)

        def recorded(fd: int, *args: Any) -> Any:
            file = files.get(_identity(fd))
            if file is not None:
                self.log.append(f"{name}({file})")
            return real(fd, *args)

        monkeypatch.setattr(os, name, recorded)


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return (info.st_dev, info.st_ino)


@pytest.fixture
def fds() -> Iterator[list[int]]:
    """Descriptors to close after the test."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def open_log(path: Path, fds: list[int]) -> Callable[..., AuditLog]:
    """An AuditLog on `path`, opened for appending; keyword arguments go to AuditLog."""

    def make(**options: Any) -> AuditLog:
        fd = os.open(path, APPEND_FLAGS, 0o644)
        fds.append(fd)
        options.setdefault("sync_data", True)
        return AuditLog(fd, **options)

    return make


def entry(n: int) -> bytes:
    return f"GET,/f{n}.txt,200,{n}\n".encode()


# --- append and sync -----------------------------------------------------------------------


def test_append_returns_increasing_seqs_and_writes_nothing(
    open_log: Callable[..., AuditLog], path: Path
) -> None:
    log = open_log()
    assert (log.last_seq, log.durable_seq, log.syncs, log.failure) == (0, 0, 0, None)
    assert [log.append(entry(n)) for n in range(1, 6)] == [1, 2, 3, 4, 5]
    assert log.last_seq == 5
    assert log.durable_seq == 0
    assert log.syncs == 0
    assert path.read_bytes() == b""


def test_sync_returns_after_the_line_is_in_the_file(
    open_log: Callable[..., AuditLog], path: Path
) -> None:
    log = open_log()
    first = log.append(entry(1))
    second = log.append(entry(2))
    log.sync(second)
    assert log.durable_seq >= second
    assert path.read_bytes().startswith(entry(1) + entry(2))
    third = log.append(entry(3))
    assert log.last_seq == third == 3
    log.sync(third)
    assert log.durable_seq == third
    assert path.read_bytes() == entry(1) + entry(2) + entry(3)
    assert first == 1


def test_one_flush_takes_every_ready_line(open_log: Callable[..., AuditLog], path: Path) -> None:
    log = open_log()
    seqs = [log.append(entry(n)) for n in range(10)]
    log.sync(seqs[0])
    assert log.syncs == 1
    assert log.durable_seq == seqs[-1]
    assert path.read_bytes() == b"".join(entry(n) for n in range(10))


def test_sync_of_a_durable_seq_does_not_flush_again(
    open_log: Callable[..., AuditLog], path: Path
) -> None:
    log = open_log()
    seq = log.append(entry(1))
    log.sync(seq)
    assert log.syncs == 1
    log.sync(seq)
    log.sync(0)
    assert log.syncs == 1
    assert path.read_bytes() == entry(1)


def test_base_offset_does_not_rewrite_existing_content(
    open_log: Callable[..., AuditLog], path: Path
) -> None:
    path.write_bytes(b"PUT,/old,201,0\n")
    log = open_log(base_offset=15)
    log.sync(log.append(entry(1)))
    assert path.read_bytes() == b"PUT,/old,201,0\n" + entry(1)


def test_partial_writes_are_completed(
    open_log: Callable[..., AuditLog], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    real_write = os.write
    sizes: list[int] = []

    def short_write(fd: int, data: Any) -> int:
        sizes.append(len(data))
        return real_write(fd, bytes(data[:5]))

    lines = [entry(n) for n in range(20)]
    for line in lines:
        log.append(line)
    monkeypatch.setattr(os, "write", short_write)
    log.sync(log.last_seq)
    monkeypatch.undo()
    assert path.read_bytes() == b"".join(lines)
    assert len(sizes) > 1


def test_flush_is_one_write_and_one_fdatasync(
    open_log: Callable[..., AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    calls = Calls(monkeypatch, {log._fd: "log"})
    for n in range(5):
        log.append(entry(n))
    log.sync(log.last_seq)
    assert calls.log == ["write(log)", "fdatasync(log)"]


def test_no_fsync_mode_only_writes(
    open_log: Callable[..., AuditLog], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(sync_data=False)
    calls = Calls(monkeypatch, {log._fd: "log"})
    seq = log.append(entry(1))
    log.sync(seq)
    assert calls.log == ["write(log)"]
    assert log.syncs == 1
    assert path.read_bytes() == entry(1)


def test_directory_is_synced_before_a_batch_with_renames(
    open_log: Callable[..., AuditLog],
    tmp_path: Path,
    fds: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fds.append(dir_fd)
    log = open_log(dir_fd=dir_fd)
    calls = Calls(monkeypatch, {log._fd: "log", dir_fd: "dir"})

    log.sync(log.append(entry(1)))
    assert calls.log == ["write(log)", "fdatasync(log)"]

    calls.log.clear()
    put = b"PUT,/a,201,2\n"
    reservation = log.reserve(put)
    log.fill(reservation, put, dir_sync=True)
    log.sync(reservation.seq)
    assert calls.log == ["fsync(dir)", "write(log)", "fdatasync(log)"]

    calls.log.clear()
    failed = b"PUT,/a,500,3\n"
    reservation = log.reserve(failed)
    log.fill(reservation, failed, dir_sync=False)
    log.sync(reservation.seq)
    assert calls.log == ["write(log)", "fdatasync(log)"]


def test_no_directory_sync_without_fsync(
    open_log: Callable[..., AuditLog],
    tmp_path: Path,
    fds: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fds.append(dir_fd)
    log = open_log(sync_data=False, dir_fd=dir_fd)
    calls = Calls(monkeypatch, {log._fd: "log", dir_fd: "dir"})
    put = b"PUT,/a,201,2\n"
    reservation = log.reserve(put)
    log.fill(reservation, put, dir_sync=True)
    log.sync(reservation.seq)
    assert calls.log == ["write(log)"]


# --- many threads: group commit ------------------------------------------------------------


def test_group_commit_many_threads(
    open_log: Callable[..., AuditLog], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    real_fdatasync = os.fdatasync

    def disk_like_fdatasync(fd: int) -> None:
        # At least half a millisecond per sync, as on a real disk, even where /tmp is tmpfs.
        real_fdatasync(fd)
        if fd == log._fd:
            time.sleep(0.0005)

    monkeypatch.setattr(os, "fdatasync", disk_like_fdatasync)
    threads, per_thread = 16, 200
    start = threading.Barrier(threads)
    written: list[list[tuple[int, bytes]]] = [[] for _ in range(threads)]

    def client(index: int) -> None:
        start.wait(TIMEOUT)
        for n in range(per_thread):
            line = f"PUT,/t{index:02d}-{n:04d},201,{index}.{n}\n".encode()
            seq = log.append(line)
            log.sync(seq)
            assert log.durable_seq >= seq
            # Lines are unique and end in "\n": a match after a "\n" is this whole line.
            assert b"\n" + line in b"\n" + path.read_bytes(), f"{line!r} not in the file"
            written[index].append((seq, line))

    finish(*(spawn(lambda i=i: client(i), f"client-{i}") for i in range(threads)))

    total = threads * per_thread
    in_seq_order = sorted(pair for pairs in written for pair in pairs)
    assert [seq for seq, _ in in_seq_order] == list(range(1, total + 1))
    # Every line exactly once, whole, and in sequence order.
    assert path.read_bytes() == b"".join(line for _, line in in_seq_order)
    assert log.durable_seq == log.last_seq == total
    # Group commit: one fsync covered many lines.
    assert log.syncs <= total // 4, f"{log.syncs} flushes for {total} lines"


def test_concurrent_appends_without_sync_keep_seq_order(
    open_log: Callable[..., AuditLog], path: Path
) -> None:
    log = open_log(sync_data=False)
    threads, per_thread = 8, 250
    written: list[tuple[int, bytes]] = []
    mutex = threading.Lock()

    def client(index: int) -> None:
        for n in range(per_thread):
            line = f"GET,/c{index}-{n},404,{n}\n".encode()
            seq = log.append(line)
            with mutex:
                written.append((seq, line))
            if n % 50 == 0:
                log.sync(seq)

    finish(*(spawn(lambda i=i: client(i), f"client-{i}") for i in range(threads)))
    log.sync(log.last_seq)
    written.sort()
    assert path.read_bytes() == b"".join(line for _, line in written)


# --- reserve and fill ----------------------------------------------------------------------


def test_reservation_end_offset_with_base_offset(
    open_log: Callable[..., AuditLog], path: Path
) -> None:
    existing = b"GET,/before,200,0\n"
    path.write_bytes(existing)
    log = open_log(base_offset=len(existing))
    get = b"GET,/a.txt,200,1\n"
    put = b"PUT,/b.txt,201,2\n"
    log.append(get)
    reservation = log.reserve(put)
    assert reservation == Reservation(
        seq=2, end_offset=len(existing) + len(get) + len(put), length=len(put)
    )
    log.fill(reservation, put, dir_sync=False)
    log.sync(reservation.seq)
    data = path.read_bytes()
    assert data == existing + get + put
    assert data[reservation.end_offset - reservation.length : reservation.end_offset] == put
    assert reservation.end_offset == len(data)


def test_reservation_offsets_match_the_file(open_log: Callable[..., AuditLog], path: Path) -> None:
    path.write_bytes(b"x" * 1000 + b"\n")
    log = open_log(base_offset=1001)
    rng = random.Random(7)
    reserved: list[tuple[Reservation, bytes]] = []
    for n in range(200):
        line = f"PUT,/{'y' * rng.randint(1, 60)},201,{n}\n".encode()
        if rng.random() < 0.5:
            log.append(line)
        else:
            reservation = log.reserve(line)
            log.fill(reservation, line, dir_sync=False)
            reserved.append((reservation, line))
        if rng.random() < 0.1:
            log.sync(log.last_seq)
    log.sync(log.last_seq)
    data = path.read_bytes()
    assert reserved
    for reservation, line in reserved:
        assert data[reservation.end_offset - len(line) : reservation.end_offset] == line


def test_lines_after_an_unfilled_reservation_wait_for_it(
    open_log: Callable[..., AuditLog], path: Path
) -> None:
    log = open_log()
    first = b"GET,/a,200,1\n"
    put = b"PUT,/b,201,2\n"
    after = b"GET,/c,404,3\n"
    log.sync(log.append(first))
    reservation = log.reserve(put)
    later = log.append(after)

    waiter = spawn(lambda: log.sync(later), "waiter")
    wait_until(lambda: waiters(log) == 1, "the waiter waits for the slot")
    assert path.read_bytes() == first
    assert log.durable_seq == 1

    with pytest.raises(ValueError, match="length"):
        log.fill(reservation, b"PUT,/b,201,22\n", dir_sync=False)
    with pytest.raises(ValueError, match="length"):
        log.fill(reservation, b"PUT,/b,21,2\n", dir_sync=False)
    assert path.read_bytes() == first
    assert waiter.is_alive()
    assert waiters(log) == 1

    log.fill(reservation, put, dir_sync=False)
    finish(waiter)
    assert path.read_bytes() == first + put + after
    assert log.durable_seq == later


def test_sync_of_the_reserved_seq_waits_for_fill(
    open_log: Callable[..., AuditLog], path: Path
) -> None:
    log = open_log()
    line = b"PUT,/x,201,1\n"
    reservation = log.reserve(line)
    waiter = spawn(lambda: log.sync(reservation.seq), "waiter")
    wait_until(lambda: waiters(log) == 1, "the waiter waits for the slot")
    assert path.read_bytes() == b""
    # A same-length line of another status (a failed rename) is allowed.
    failed = b"PUT,/x,500,1\n"
    log.fill(reservation, failed, dir_sync=False)
    finish(waiter)
    assert path.read_bytes() == failed


def test_reservations_filled_out_of_order(open_log: Callable[..., AuditLog], path: Path) -> None:
    log = open_log()
    one, two = b"PUT,/1,201,1\n", b"PUT,/2,201,2\n"
    r1 = log.reserve(one)
    r2 = log.reserve(two)
    assert r2.end_offset == r1.end_offset + len(two)
    log.fill(r2, two, dir_sync=False)
    waiter = spawn(lambda: log.sync(r2.seq), "waiter")
    wait_until(lambda: waiters(log) == 1, "the waiter waits for the first slot")
    assert path.read_bytes() == b""
    log.fill(r1, one, dir_sync=False)
    finish(waiter)
    assert path.read_bytes() == one + two
    assert log.syncs == 1


def test_fill_of_a_written_slot_is_an_error(open_log: Callable[..., AuditLog]) -> None:
    log = open_log()
    line = b"PUT,/x,201,1\n"
    reservation = log.reserve(line)
    log.fill(reservation, line, dir_sync=False)
    log.sync(reservation.seq)
    with pytest.raises(ValueError, match="no reserved slot"):
        log.fill(reservation, line, dir_sync=False)


# --- group commit, step by step -----------------------------------------------------------


def test_line_covered_by_a_flush_in_progress_needs_no_other(
    open_log: Callable[..., AuditLog], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    gate = Gate(monkeypatch, "fdatasync", log._fd)
    seqs = [log.append(entry(n)) for n in range(3)]
    leader = spawn(lambda: log.sync(seqs[0]), "leader")
    try:
        gate.wait_entered()  # lines 0-2 are written, their fdatasync is under way
        assert path.read_bytes() == entry(0) + entry(1) + entry(2)
        follower = spawn(lambda: log.sync(seqs[2]), "follower")
        wait_until(lambda: waiters(log) == 1, "the follower waits for the leader's sync")
        # Written is not durable: the follower must not return before the sync ends.
        assert follower.is_alive()
        assert log.durable_seq == 0
    finally:
        gate.open()
    finish(leader, follower)
    assert log.durable_seq == seqs[2]
    assert log.syncs == 1


def test_waiters_ride_the_next_flush(
    open_log: Callable[..., AuditLog], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    gate = Gate(monkeypatch, "fdatasync", log._fd)
    first = log.append(entry(0))
    leader = spawn(lambda: log.sync(first), "leader")
    followers: list[Worker] = []
    try:
        gate.wait_entered()
        for n in range(1, 9):
            seq = log.append(entry(n))
            followers.append(spawn(lambda s=seq: log.sync(s), f"follower-{n}"))
        wait_until(lambda: waiters(log) == 8, "the followers wait for the leader")
    finally:
        gate.open()
    finish(leader, *followers)
    # The eight lines that arrived during the first sync were made durable by one more.
    assert log.syncs == 2
    assert path.read_bytes() == b"".join(entry(n) for n in range(9))


# --- failure -------------------------------------------------------------------------------


@pytest.fixture
def read_only_log(path: Path, fds: list[int]) -> AuditLog:
    """A log whose descriptor cannot be written: os.write raises EBADF."""
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    fds.append(fd)
    return AuditLog(fd, sync_data=True)


def test_write_failure_is_fatal(read_only_log: AuditLog, path: Path) -> None:
    log = read_only_log
    seq = log.append(entry(1))
    with pytest.raises(LogFailure) as info:
        log.sync(seq)
    assert isinstance(info.value, FatalError)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EBADF
    assert log.failure is info.value
    assert log.durable_seq == 0
    assert log.syncs == 0

    with pytest.raises(LogFailure):
        log.append(entry(2))
    with pytest.raises(LogFailure):
        log.reserve(entry(3))
    with pytest.raises(LogFailure):
        log.sync(seq)
    assert log.last_seq == 1
    assert path.read_bytes() == b""


def test_sync_failure_is_fatal(
    open_log: Callable[..., AuditLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    real = os.fdatasync

    def broken(fd: int) -> None:
        if fd == log._fd:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", broken)
    seq = log.append(entry(1))
    with pytest.raises(LogFailure, match="Input/output error"):
        log.sync(seq)
    assert log.failure is not None
    assert log.durable_seq == 0
    with pytest.raises(LogFailure):
        log.append(entry(2))


def test_waiting_thread_is_woken_with_the_failure(
    read_only_log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = read_only_log
    gate = Gate(monkeypatch, "write", log._fd)
    first = log.append(entry(1))
    leader = spawn(lambda: log.sync(first), "leader")
    waiter: Worker | None = None
    try:
        gate.wait_entered()  # the leader is about to write, and will fail
        second = log.append(entry(2))
        waiter = spawn(lambda: log.sync(second), "waiter")
        wait_until(lambda: waiters(log) == 1, "the second thread waits for the leader")
    finally:
        gate.open()
    assert waiter is not None
    join(leader, waiter)
    assert isinstance(leader.error, LogFailure)
    assert isinstance(waiter.error, LogFailure)
    assert leader.error is log.failure
    assert waiter.error is log.failure


def test_failure_fails_the_lines_behind_an_unfilled_slot(read_only_log: AuditLog) -> None:
    # A failure while lines wait behind an unfilled slot fails them all; the slot can
    # still be filled (as a failed PUT would), but nothing becomes durable.
    log = read_only_log
    first = log.append(entry(1))
    reservation = log.reserve(b"PUT,/r,201,2\n")
    later = log.append(entry(3))
    waiter = spawn(lambda: log.sync(later), "waiter")
    # The waiter leads the flush of line 1, which fails; it must not then wait for the slot.
    join(waiter)
    assert isinstance(waiter.error, LogFailure)
    with pytest.raises(LogFailure):
        log.sync(first)
    log.fill(reservation, b"PUT,/r,500,2\n", dir_sync=False)  # filling is still harmless
    with pytest.raises(LogFailure):
        log.sync(reservation.seq)


def test_a_stamped_file_is_synced_before_the_directory_and_its_line(
    open_log: Callable[..., AuditLog],
    tmp_path: Path,
    fds: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    version = os.open(tmp_path / "version", os.O_WRONLY | os.O_CREAT, 0o644)
    fds += [dir_fd, version]
    log = open_log(dir_fd=dir_fd)
    calls = Calls(monkeypatch, {log._fd: "log", dir_fd: "dir", version: "version"})
    put = b"PUT,/a,201,1\n"
    reservation = log.reserve(put)
    log.fill(reservation, put, dir_sync=True, sync_fd=version)
    fds.remove(version)
    os.close(version)  # the log syncs a descriptor of its own
    log.sync(reservation.seq)
    assert calls.log == ["fsync(version)", "fsync(dir)", "write(log)", "fdatasync(log)"]


def test_a_failed_log_takes_no_more_lines(open_log: Callable[..., AuditLog], path: Path) -> None:
    log = open_log()
    log.sync(log.append(entry(1)))
    pending = log.append(entry(2))
    failure = log.fail("cannot install a logged PUT")
    assert isinstance(failure, LogFailure) and log.failure is failure
    with pytest.raises(LogFailure, match="cannot install"):
        log.sync(pending)  # a line appended before, never made durable
    with pytest.raises(LogFailure):
        log.append(entry(3))
    assert path.read_bytes() == entry(1)


def test_a_log_stopped_during_a_flush_writes_nothing_more(
    open_log: Callable[..., AuditLog],
    path: Path,
    tmp_path: Path,
    fds: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fds.append(dir_fd)
    log = open_log(dir_fd=dir_fd)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if fd == dir_fd:  # another thread stops the log while this leader syncs
            log.fail("cannot finish logged DELETE /x")

    monkeypatch.setattr(os, "fsync", fsync)
    put = b"PUT,/a,201,1\n"
    reservation = log.reserve(put)
    log.fill(reservation, put, dir_sync=True)
    with pytest.raises(LogFailure, match="cannot finish logged DELETE"):
        log.sync(reservation.seq)
    assert path.read_bytes() == b""
    assert str(log.failure) == "cannot finish logged DELETE /x"  # the first failure stays

"""asrv.locks with real threads: sharing, exclusion, fairness both ways, and table hygiene.

Orders are made deterministic with events: each holder thread enters, records its name,
and stays inside until the test releases it. To know that a thread has reached its wait
(rather than not having run yet), the tests watch the lock's own queue counters; every
wait and join is bounded, so a broken lock fails the test instead of hanging it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from asrv.locks import LockTable, RWLock
from tests.threads import TIMEOUT, finish, spawn, wait_until


def waiting(lock: RWLock, *, readers: int = 0, writers: int = 0) -> Callable[[], bool]:
    """True once exactly this many threads are queued on `lock`."""
    return lambda: lock._waiting_readers == readers and lock._waiting_writers == writers


class Monitor:
    """Counts who is inside a critical section and records any breach of reader/writer rules."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.readers = 0
        self.writers = 0
        self.max_readers = 0
        self.violations: list[str] = []

    def enter(self, kind: str) -> None:
        with self._mutex:
            if kind == "write":
                if self.readers or self.writers:
                    self.violations.append(
                        f"writer entered with {self.readers} readers, {self.writers} writers"
                    )
                self.writers += 1
            else:
                if self.writers:
                    self.violations.append(f"reader entered with {self.writers} writers")
                self.readers += 1
                self.max_readers = max(self.max_readers, self.readers)

    def leave(self, kind: str) -> None:
        with self._mutex:
            if kind == "write":
                self.writers -= 1
            else:
                self.readers -= 1


class Holder:
    """A thread that takes a lock, records its entry, and holds it until released."""

    def __init__(
        self,
        name: str,
        kind: str,
        context: Callable[[], AbstractContextManager[None]],
        order: list[str],
        monitor: Monitor,
    ) -> None:
        self.name = name
        self.kind = kind
        self._context = context
        self._order = order
        self._monitor = monitor
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread = spawn(self._run, name)

    def _run(self) -> None:
        with self._context():
            self._monitor.enter(self.kind)
            self._order.append(self.name)
            self.entered.set()
            released = self.release.wait(TIMEOUT)
            self._monitor.leave(self.kind)
        if not released:
            raise TimeoutError(f"{self.name} was never released")

    def wait_entered(self) -> None:
        assert self.entered.wait(TIMEOUT), f"{self.name} never entered"

    def finish(self) -> None:
        self.release.set()
        finish(self.thread)


class Scene:
    """Holders on one lock, with a shared entry order and monitor; cleans up after a failure."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.monitor = Monitor()
        self.holders: list[Holder] = []

    def reader(self, name: str, context: Callable[[], AbstractContextManager[None]]) -> Holder:
        return self._add(Holder(name, "read", context, self.order, self.monitor))

    def writer(self, name: str, context: Callable[[], AbstractContextManager[None]]) -> Holder:
        return self._add(Holder(name, "write", context, self.order, self.monitor))

    def _add(self, holder: Holder) -> Holder:
        self.holders.append(holder)
        return holder

    def close(self) -> None:
        for holder in self.holders:
            holder.release.set()
        for holder in self.holders:
            holder.thread.join(TIMEOUT)


@pytest.fixture
def scene() -> Iterator[Scene]:
    scene = Scene()
    try:
        yield scene
    finally:
        scene.close()
    assert scene.monitor.violations == []


def acquires_promptly(action: Callable[[], Any]) -> None:
    """Run `action` in a thread; fail if it does not complete (a lock left held)."""
    finish(spawn(action, "probe"))


def size(table: LockTable) -> int:
    """len(table), asked from another thread so that a table mutex left held fails the test."""
    result: list[int] = []
    acquires_promptly(lambda: result.append(len(table)))
    return result[0]


# --- RWLock: sharing and exclusion ---------------------------------------------------------


def test_readers_share() -> None:
    lock = RWLock()
    parties = 4
    # The barrier only opens when all readers are inside the lock at the same time.
    barrier = threading.Barrier(parties)

    def read() -> None:
        with lock.read():
            barrier.wait(TIMEOUT)

    finish(*(spawn(read, f"reader-{i}") for i in range(parties)))


def test_writer_excludes_readers_and_writers(scene: Scene) -> None:
    lock = RWLock()
    w1 = scene.writer("W1", lock.write)
    w1.wait_entered()
    r = scene.reader("R", lock.read)
    wait_until(waiting(lock, readers=1), "R is queued")
    w2 = scene.writer("W2", lock.write)
    wait_until(waiting(lock, readers=1, writers=1), "W2 is queued")
    assert not r.entered.is_set()
    assert not w2.entered.is_set()

    w1.finish()
    r.wait_entered()
    assert not w2.entered.is_set()  # a reader is inside
    r.finish()
    w2.wait_entered()
    w2.finish()
    assert scene.order == ["W1", "R", "W2"]


def test_reader_excludes_writer(scene: Scene) -> None:
    lock = RWLock()
    r = scene.reader("R", lock.read)
    r.wait_entered()
    w = scene.writer("W", lock.write)
    wait_until(waiting(lock, writers=1), "W is queued")
    assert not w.entered.is_set()
    r.finish()
    w.wait_entered()
    w.finish()
    assert scene.order == ["R", "W"]


def test_writer_serializes_a_read_modify_write() -> None:
    lock = RWLock()
    counter = [0]
    threads, rounds = 8, 200

    def bump() -> None:
        for _ in range(rounds):
            with lock.write():
                value = counter[0]
                time.sleep(0)  # invite a switch between read and write
                counter[0] = value + 1

    finish(*(spawn(bump, f"writer-{i}") for i in range(threads)))
    assert counter[0] == threads * rounds


def test_random_mix_keeps_the_rules() -> None:
    lock = RWLock()
    monitor = Monitor()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            kind = "write" if rng.random() < 0.3 else "read"
            with lock.write() if kind == "write" else lock.read():
                monitor.enter(kind)
                time.sleep(0)
                monitor.leave(kind)

    finish(*(spawn(lambda s=seed: work(s), f"mixer-{seed}") for seed in range(8)))
    assert monitor.violations == []
    assert monitor.readers == monitor.writers == 0

    # Ends unlocked: a writer gets in at once.
    def write_once() -> None:
        with lock.write():
            pass

    acquires_promptly(write_once)


@pytest.mark.parametrize("kind", ["read", "write"])
def test_exception_inside_releases(kind: str) -> None:
    lock = RWLock()
    with pytest.raises(RuntimeError), lock.read() if kind == "read" else lock.write():
        raise RuntimeError("inside")

    def write_then_read() -> None:
        with lock.write():
            pass
        with lock.read():
            pass

    acquires_promptly(write_then_read)


# --- RWLock: fairness ----------------------------------------------------------------------


def test_waiting_writer_goes_before_later_readers(scene: Scene) -> None:
    lock = RWLock()
    r1 = scene.reader("R1", lock.read)
    r2 = scene.reader("R2", lock.read)
    r1.wait_entered()
    r2.wait_entered()
    w = scene.writer("W", lock.write)
    wait_until(waiting(lock, writers=1), "W is queued behind the readers")
    # Readers are inside, yet a reader arriving after the writer must queue behind it.
    r3 = scene.reader("R3", lock.read)
    wait_until(waiting(lock, readers=1, writers=1), "R3 is queued behind W")
    assert not r3.entered.is_set()

    r1.finish()
    assert not w.entered.is_set()  # R2 is still inside
    r2.finish()
    w.wait_entered()
    assert not r3.entered.is_set()
    w.finish()
    r3.wait_entered()
    r3.finish()
    assert sorted(scene.order[:2]) == ["R1", "R2"]
    assert scene.order[2:] == ["W", "R3"]


def test_stream_of_readers_does_not_starve_a_writer() -> None:
    lock = RWLock()
    stop = threading.Event()
    reads = [0] * 4

    def read_forever(index: int) -> None:
        # Overlapping holds: with reader preference some reader would always be inside.
        while not stop.is_set():
            with lock.read():
                reads[index] += 1
                time.sleep(0.0005)

    readers = [spawn(lambda i=i: read_forever(i), f"reader-{i}") for i in range(4)]
    try:
        wait_until(lambda: all(reads), "every reader has read")
        writer_in = threading.Event()

        def write_once() -> None:
            with lock.write():
                writer_in.set()

        writer = spawn(write_once, "writer")
        assert writer_in.wait(TIMEOUT), "the writer starved behind a stream of readers"
        finish(writer)
        before = sum(reads)
        wait_until(lambda: sum(reads) > before + 4, "readers read again after the writer")
    finally:
        stop.set()
        finish(*readers)


def test_readers_queued_behind_a_writer_go_as_a_batch(scene: Scene) -> None:
    lock = RWLock()
    w1 = scene.writer("W1", lock.write)
    w1.wait_entered()
    w2 = scene.writer("W2", lock.write)
    wait_until(waiting(lock, writers=1), "W2 is queued")
    batch = [scene.reader(f"R{i}", lock.read) for i in (1, 2, 3)]
    wait_until(waiting(lock, readers=3, writers=1), "R1-R3 are queued")

    w1.finish()
    # All three are inside at once (none has been released yet), W2 still waits.
    for reader in batch:
        reader.wait_entered()
    assert scene.monitor.max_readers == 3
    assert not w2.entered.is_set()

    # A reader arriving now queues behind the waiting writer W2.
    r4 = scene.reader("R4", lock.read)
    wait_until(waiting(lock, readers=1, writers=1), "R4 is queued behind W2")
    for reader in batch:
        reader.finish()
    w2.wait_entered()
    assert not r4.entered.is_set()

    # A writer arriving while W2 holds waits behind R4, which queued before it.
    w3 = scene.writer("W3", lock.write)
    wait_until(waiting(lock, readers=1, writers=1), "W3 is queued")
    w2.finish()
    r4.wait_entered()
    assert not w3.entered.is_set()
    r4.finish()
    w3.wait_entered()
    w3.finish()

    assert scene.order[0] == "W1"
    assert sorted(scene.order[1:4]) == ["R1", "R2", "R3"]
    assert scene.order[4:] == ["W2", "R4", "W3"]


def test_batch_readers_are_inside_together() -> None:
    lock = RWLock()
    holding = threading.Event()
    release = threading.Event()
    parties = 3
    barrier = threading.Barrier(parties)

    def write() -> None:
        with lock.write():
            holding.set()
            assert release.wait(TIMEOUT)

    def read() -> None:
        with lock.read():
            barrier.wait(TIMEOUT)

    writer = spawn(write, "writer")
    try:
        assert holding.wait(TIMEOUT)
        readers = [spawn(read, f"reader-{i}") for i in range(parties)]
        wait_until(waiting(lock, readers=parties), "the readers are queued")
    finally:
        release.set()
    finish(writer, *readers)


def test_stream_of_writers_does_not_starve_readers() -> None:
    lock = RWLock()
    stop = threading.Event()
    writes = [0, 0]

    def write_forever(index: int) -> None:
        while not stop.is_set():
            with lock.write():
                writes[index] += 1
                time.sleep(0.0005)

    writers = [spawn(lambda i=i: write_forever(i), f"writer-{i}") for i in range(2)]
    try:
        # Writers barge past each other, so wait for the stream, not for each writer.
        wait_until(lambda: sum(writes) >= 4, "the writers are writing")
        reader_in = threading.Event()

        def read_once() -> None:
            with lock.read():
                reader_in.set()

        reader = spawn(read_once, "reader")
        assert reader_in.wait(TIMEOUT), "the reader starved behind a stream of writers"
        finish(reader)
    finally:
        stop.set()
        finish(*writers)


# --- LockTable -----------------------------------------------------------------------------


def test_table_is_empty_after_use() -> None:
    table = LockTable()
    assert size(table) == 0
    with table.read("a"):
        assert size(table) == 1
        with table.read("a"):
            assert size(table) == 1
        with table.write("b"):
            assert size(table) == 2
        assert size(table) == 1
    assert size(table) == 0
    with table.write("a"):
        assert size(table) == 1
    assert size(table) == 0


@pytest.mark.parametrize("kind", ["read", "write"])
def test_table_is_empty_after_an_exception_inside(kind: str) -> None:
    table = LockTable()
    with pytest.raises(KeyError), table.read("k") if kind == "read" else table.write("k"):
        raise KeyError("inside")
    assert size(table) == 0

    def reuse() -> None:
        with table.write("k"):
            pass
        with table.read("k"):
            pass

    acquires_promptly(reuse)
    assert size(table) == 0


def test_table_readers_of_one_key_share() -> None:
    table = LockTable()
    parties = 4
    barrier = threading.Barrier(parties + 1)
    leave = threading.Event()

    def read() -> None:
        with table.read("k"):
            barrier.wait(TIMEOUT)
            assert leave.wait(TIMEOUT)

    readers = [spawn(read, f"reader-{i}") for i in range(parties)]
    try:
        barrier.wait(TIMEOUT)  # every reader is inside
        assert size(table) == 1
    finally:
        leave.set()
    finish(*readers)
    assert size(table) == 0


def test_table_writer_excludes_on_the_same_key(scene: Scene) -> None:
    table = LockTable()
    w1 = scene.writer("W1", lambda: table.write("k"))
    w1.wait_entered()
    w2 = scene.writer("W2", lambda: table.write("k"))
    r = scene.reader("R", lambda: table.read("k"))
    wait_until(lambda: table._entries["k"].users == 3, "W2 and R wait on k")
    entry = table._entries["k"].lock
    wait_until(waiting(entry, readers=1, writers=1), "W2 and R are queued")
    assert not w2.entered.is_set()
    assert not r.entered.is_set()
    assert size(table) == 1

    w1.finish()
    r.wait_entered()  # the queued reader goes before the next writer
    r.finish()
    w2.wait_entered()
    w2.finish()
    assert scene.order == ["W1", "R", "W2"]
    assert size(table) == 0


def test_table_does_not_wait_under_its_mutex(scene: Scene) -> None:
    table = LockTable()
    holder = scene.writer("A", lambda: table.write("a"))
    holder.wait_entered()
    blocked = scene.writer("B", lambda: table.write("a"))
    wait_until(
        lambda: table._entries["a"].users == 2 and table._entries["a"].lock._waiting_writers == 1,
        "B waits for a's write lock",
    )

    def other_key() -> None:
        with table.write("b"):
            assert size(table) == 2
        with table.read("b"):
            pass
        assert size(table) == 1

    # While B waits on "a", the table stays usable for every other key.
    acquires_promptly(other_key)
    assert not blocked.entered.is_set()

    holder.finish()
    blocked.wait_entered()
    assert size(table) == 1  # still B's entry
    blocked.finish()
    assert scene.order == ["A", "B"]
    assert size(table) == 0


def test_entry_survives_while_a_waiter_needs_it(scene: Scene) -> None:
    table = LockTable()
    reader = scene.reader("R", lambda: table.read("k"))
    reader.wait_entered()
    entry = table._entries["k"]
    writer = scene.writer("W", lambda: table.write("k"))
    wait_until(lambda: entry.lock._waiting_writers == 1, "W is queued")

    reader.finish()
    writer.wait_entered()
    # The writer still uses the very entry it queued on.
    assert table._entries["k"] is entry
    assert size(table) == 1
    writer.finish()
    assert size(table) == 0


def test_table_keys_are_independent() -> None:
    table = LockTable()
    keys = ["a", "b", "c", "d"]
    monitors = {key: Monitor() for key in keys}

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            key = rng.choice(keys)
            kind = "write" if rng.random() < 0.3 else "read"
            with table.write(key) if kind == "write" else table.read(key):
                monitors[key].enter(kind)
                time.sleep(0)
                monitors[key].leave(kind)

    finish(*(spawn(lambda s=seed: work(s), f"worker-{seed}") for seed in range(12)))
    for monitor in monitors.values():
        assert monitor.violations == []
    assert size(table) == 0

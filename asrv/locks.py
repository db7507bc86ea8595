"""Per-URI reader/writer locks, taken by worker threads around a request's critical step.

`RWLock` is phase-fair enough for a file server: a waiting writer stops new readers from
entering (so a stream of GETs cannot starve a PUT), and when a writer leaves, every reader
that queued behind it is admitted as one batch before the next writer (so a stream of PUTs
cannot starve GETs). Writers go in the order they arrived (a ticket each), so a thread
that releases and re-acquires at once cannot keep another writer out.

`LockTable` hands out one `RWLock` per URI and forgets it when nobody
holds or waits for it, so the table stays as small as the set of URIs in use.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    """A reader/writer lock for threads; neither side can starve the other."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._active_readers = 0
        self._writer_active = False
        self._waiting_writers = 0
        self._waiting_readers = 0
        self._next_ticket = 0  # writers are served in ticket order
        self._serving = 0
        # Bumped each time a writer leaves and admits the queued readers as a batch; a queued
        # reader waits for the bump rather than re-checking the state, because by then it
        # has already been counted as active on its behalf.
        self._batch = 0

    def acquire_read(self) -> None:
        with self._mutex:
            if not self._writer_active and self._waiting_writers == 0:
                self._active_readers += 1
                return
            self._waiting_readers += 1
            batch = self._batch
            while self._batch == batch:
                self._cond.wait()

    def release_read(self) -> None:
        with self._mutex:
            self._active_readers -= 1
            # Only a writer can be waiting for the readers to leave.
            if self._active_readers == 0 and self._waiting_writers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._mutex:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting_writers += 1
            while self._serving != ticket or self._writer_active or self._active_readers > 0:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer_active = True

    def release_write(self) -> None:
        with self._mutex:
            self._writer_active = False
            self._serving += 1
            admitted = self._waiting_readers
            if admitted:
                self._active_readers += admitted
                self._waiting_readers = 0
                self._batch += 1
            if admitted or self._waiting_writers:
                self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = RWLock()
        self.users = 0


SPARE_LOCKS = 64
"""Idle locks kept for reuse: building a lock (a Condition and its mutex) costs more than
the rest of an uncontended GET's locking."""


class LockTable:
    """One `RWLock` per key, created on first use and dropped when no thread needs it.

    The table's own mutex is held only to find or drop an entry, never while waiting for
    an entry's lock, so a contended URI does not slow down requests for other URIs.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._spare: list[_Entry] = []

    def __len__(self) -> int:
        with self._mutex:
            return len(self._entries)

    def read(self, key: str) -> _Hold:
        """`with table.read(key):` hold `key` shared."""
        return _Hold(self, key, exclusive=False)

    def write(self, key: str) -> _Hold:
        """`with table.write(key):` hold `key` exclusively."""
        return _Hold(self, key, exclusive=True)

    def _checkout(self, key: str) -> _Entry:
        with self._mutex:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._spare.pop() if self._spare else _Entry()
                self._entries[key] = entry
            entry.users += 1
            return entry

    def _checkin(self, key: str, entry: _Entry) -> None:
        with self._mutex:
            entry.users -= 1
            if entry.users == 0:
                # Nobody holds or waits for it: its lock is idle and can serve another key.
                del self._entries[key]
                if len(self._spare) < SPARE_LOCKS:
                    self._spare.append(entry)


class _Hold:
    """A held (or about to be held) entry of a `LockTable`, as a context manager."""

    __slots__ = ("_entry", "_exclusive", "_key", "_table")

    def __init__(self, table: LockTable, key: str, *, exclusive: bool) -> None:
        self._table = table
        self._key = key
        self._exclusive = exclusive

    def __enter__(self) -> None:
        entry = self._entry = self._table._checkout(self._key)
        if self._exclusive:
            entry.lock.acquire_write()
        else:
            entry.lock.acquire_read()

    def __exit__(self, *exc_info: object) -> None:
        entry = self._entry
        if self._exclusive:
            entry.lock.release_write()
        else:
            entry.lock.release_read()
        self._table._checkin(self._key, entry)

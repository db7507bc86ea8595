"""The audit log: ordered, whole lines, made durable by group commit.

Threads append lines in memory under a short mutex; each line gets a sequence number, and
the order of sequence numbers is the order of the lines in the file. Nothing is written
at append time. Whoever first needs a line on disk becomes the *leader*: it takes every
ready line, writes them with one `write` and makes them durable with one `fdatasync`, then
publishes `durable_seq`. Lines appended during that sync ride the next one, so under load
one fsync covers many requests. The leader is always a thread that needed the flush anyway
(a worker): the log never starts a thread of its own.

A PUT needs its line durable *before* its rename takes effect (write-ahead), and the temp
file it will rename must be findable from the line after a crash. So a PUT first
`reserve`s its slot, which fixes the line's end offset in the file; it then renames its temp
file to a name carrying that offset and `fill`s the slot. A flush never writes past an
unfilled slot, and fsyncs the root directory before writing a batch that holds filled PUT
slots, so a durable PUT line always has its renamed temp file durable beside it (and,
before that, fsyncs each new version, so that its ETag stamp is durable too).

Any write or sync error is fatal: the log records the failure, wakes every waiter with
`LogFailure`, and accepts nothing more. A request whose line is not durable is never
acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from dataclasses import dataclass

from asrv.errors import FatalError


class LogFailure(FatalError):
    """The audit log could not be written or synced; nothing more can be acknowledged."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A PUT's place in the log: its sequence number and the file offset its line ends at."""

    seq: int
    end_offset: int
    length: int


class _Slot:
    __slots__ = ("line", "needs_dir_sync", "seq", "sync_fd")

    def __init__(self, seq: int, line: bytes | None) -> None:
        self.seq = seq
        self.line = line  # None while reserved and not yet filled
        self.needs_dir_sync = False
        self.sync_fd: int | None = None


class AuditLog:
    """Group-committed appends to one open file descriptor.

    `fd` is written with plain `write` calls (open it with O_APPEND). `sync_data` chooses
    whether flushes fdatasync the log (and fsync `dir_fd` for PUT batches); without it a
    flush only writes, which still keeps the order of lines and effects. `base_offset` is
    the log's size when the server took it over.
    """

    def __init__(
        self,
        fd: int,
        *,
        sync_data: bool,
        dir_fd: int | None = None,
        base_offset: int = 0,
    ) -> None:
        self._fd = fd
        self._sync_data = sync_data
        self._dir_fd = dir_fd
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[_Slot] = deque()
        self._last_seq = 0
        self._end_offset = base_offset
        self._durable_seq = 0
        self._flushing = False
        self._failure: LogFailure | None = None
        self.syncs = 0
        """How many flushes wrote to the file: the number of fsyncs when `sync_data`."""

    @property
    def durable_seq(self) -> int:
        """Every line up to this sequence number is on disk (or written, without sync)."""
        return self._durable_seq

    @property
    def last_seq(self) -> int:
        """The sequence number of the most recent append or reservation."""
        return self._last_seq

    @property
    def failure(self) -> LogFailure | None:
        return self._failure

    def append(self, line: bytes) -> int:
        """Queue a whole line and return its sequence number; the line is not yet on disk."""
        with self._cond:
            self._check_alive()
            slot = self._new_slot(line, len(line))
            return slot.seq

    def reserve(self, line: bytes) -> Reservation:
        """Take the next place in the log for `line`, to be filled by `fill` later.

        Later lines stay unwritten until this slot is filled, so fill it promptly and
        always, even when the request fails (with a line of the same length).
        """
        with self._cond:
            self._check_alive()
            slot = self._new_slot(None, len(line))
            return Reservation(slot.seq, self._end_offset, len(line))

    def fill(
        self,
        reservation: Reservation,
        line: bytes,
        *,
        dir_sync: bool,
        sync_fd: int | None = None,
    ) -> None:
        """Give a reserved slot its line; `dir_sync` if it renamed a file in the root, and
        `sync_fd` open on a file whose metadata must be durable before the line (a PUT's
        new version, stamped with its ETag). The log syncs a duplicate of `sync_fd` that
        it owns: the caller may close its own whenever it likes (say, when the log fails
        while a leader is still syncing this slot)."""
        if len(line) != reservation.length:
            raise ValueError("a reserved line must keep its length (its end offset is fixed)")
        owned = None if sync_fd is None else os.dup(sync_fd)
        with self._cond:
            for slot in self._pending:
                if slot.seq == reservation.seq:
                    slot.line = line
                    slot.needs_dir_sync = dir_sync
                    slot.sync_fd = owned
                    break
            else:
                if owned is not None:
                    os.close(owned)
                raise ValueError(f"no reserved slot {reservation.seq}")
            # A flush may be waiting for this slot to become ready.
            self._cond.notify_all()

    def fail(self, reason: str) -> LogFailure:
        """Stop the log for good: nothing more is appended or made durable, and every
        waiter gets the failure, which is returned to be raised. For when the files can no
        longer be made to agree with lines already durable: any later line could depend on
        an effect that did not happen."""
        with self._cond:
            return self._stop(LogFailure(reason))

    def _stop(self, failure: LogFailure) -> LogFailure:
        """Under the mutex: record the log's first failure (later ones only follow from it),
        release what the slots that will never be written hold, wake every waiter."""
        if self._failure is None:
            self._failure = failure
        for slot in self._pending:
            _release(slot)
        self._cond.notify_all()
        return self._failure

    def sync(self, seq: int) -> None:
        """Block until every line up to `seq` is durable, leading flushes as needed."""
        if seq > self._last_seq:
            raise ValueError(f"line {seq} was never appended")
        while True:
            with self._cond:
                batch = self._wait_for_turn(seq)
            if batch is None:
                return
            self._write_batch(batch)

    def _new_slot(self, line: bytes | None, length: int) -> _Slot:
        self._last_seq += 1
        self._end_offset += length
        slot = _Slot(self._last_seq, line)
        self._pending.append(slot)
        return slot

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _wait_for_turn(self, seq: int) -> list[_Slot] | None:
        """Under the mutex: None once `seq` is durable, else a batch this thread must write."""
        while True:
            self._check_alive()
            if self._durable_seq >= seq:
                return None
            if not self._flushing:
                batch = self._take_ready()
                if batch:
                    return batch
            # Another thread is flushing, or an earlier reserved slot is not filled yet:
            # both end with a notify.
            self._cond.wait()

    def _take_ready(self) -> list[_Slot]:
        """Under the mutex: the filled slots at the head of the queue, and the lead."""
        batch: list[_Slot] = []
        pending = self._pending
        while pending and pending[0].line is not None:
            batch.append(pending.popleft())
        if batch:
            self._flushing = True
        return batch

    def _write_batch(self, batch: list[_Slot]) -> None:
        """As leader, outside the mutex: make `batch` durable, then publish it."""
        try:
            needs_dir_sync = any(slot.needs_dir_sync for slot in batch)
            if self._sync_data:
                for slot in batch:
                    if slot.sync_fd is not None:
                        os.fsync(slot.sync_fd)
            if self._sync_data and self._dir_fd is not None and needs_dir_sync:
                # The renamed temp files of these PUTs must be durable before their lines
                # can be: recovery finds them by the offsets in their names.
                os.fsync(self._dir_fd)
            # A log stopped meanwhile (`fail`) makes nothing more durable.
            self._check_alive()
            _write_all(self._fd, b"".join(slot.line or b"" for slot in batch))
            if self._sync_data:
                os.fdatasync(self._fd)
        except (OSError, LogFailure) as error:
            with self._cond:
                self._flushing = False
                if isinstance(error, LogFailure):
                    raise self._stop(error) from None
                raise self._stop(LogFailure(f"audit log: {error.strerror or error}")) from error
        finally:
            for slot in batch:
                _release(slot)
        with self._cond:
            self._durable_seq = batch[-1].seq
            self._flushing = False
            self.syncs += 1
            self._cond.notify_all()


def _release(slot: _Slot) -> None:
    """Close the descriptor a slot owns, once it is synced or will never be."""
    fd, slot.sync_fd = slot.sync_fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

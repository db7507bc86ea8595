"""`LogFile`: the audit log's file, with one owner that opens it, locks it, knows whether it
can be read back, and names the intent files that refer to it.

The log is either a path (`--log FILE`) or standard error (`-`, the course's
`python -m asrv 2>>audit.log`). Either may be a regular file, which asrv reads back at
start-up to settle what a crash left (`recovery`), or something that cannot be read back (a
pipe, a terminal), against which nothing can be verified. Standard error is reopened
through /proc for reading back: its own descriptor is usually write-only.

One log belongs to one server: the owner holds an exclusive `flock` on an open file
description of its own for as long as it runs, so a second server on the same log (even one
with another root) is refused at start-up. A PUT's intent file carries the log's inode
number besides its line's offset (`.asrv~INODE~OFFSET~NAME`), so recovery never matches it
against another log's lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from dataclasses import dataclass

from asrv.config import Config
from asrv.errors import ExitStatus, StartupError

_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class LogFile:
    fd: int
    """Where lines are appended (O_APPEND)."""
    readback_fd: int | None
    """A descriptor of the same file that reads (and, open for writing, cuts) it; None when
    the log cannot be read back."""
    writable_readback: bool
    """Whether `readback_fd` can also cut a torn last line off."""
    inode: int | None
    """The log's inode number when it is a regular file."""
    device: int | None
    name: str
    """How messages name the log."""
    _owned: tuple[int, ...]
    """Descriptors this object opened, closed by `close`."""

    @property
    def is_file(self) -> bool:
        return self.inode is not None

    @property
    def tag(self) -> str:
        """What intent files carry to say which log they refer to ("-" for a log that is
        not a file: such intents can never be verified)."""
        return "-" if self.inode is None else format(self.inode, "x")

    @property
    def identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino): the file the server must never serve or replace."""
        if self.inode is None or self.device is None:
            return None
        return (self.device, self.inode)

    @classmethod
    def open(cls, config: Config) -> LogFile:
        """Open, classify and lock the configured log; StartupError with one line if not."""
        owned: list[int] = []
        try:
            if config.log_is_stderr:
                log = cls._open_stderr(owned)
            else:
                log = cls._open_path(config.log, owned)
            log._lock()
        except BaseException:
            for fd in owned:
                os.close(fd)
            raise
        return log

    @classmethod
    def _open_path(cls, path: str, owned: list[int]) -> LogFile:
        try:
            fd = os.open(path, _APPEND_FLAGS, 0o644)
        except OSError as error:
            raise StartupError(
                f"asrv: cannot open log {path}: {error.strerror}", ExitStatus.LOG_UNUSABLE
            ) from None
        owned.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return cls(fd, None, False, None, None, path, tuple(owned))
        return cls(fd, fd, True, info.st_ino, info.st_dev, path, tuple(owned))

    @classmethod
    def _open_stderr(cls, owned: list[int]) -> LogFile:
        name = "standard error"
        try:
            info = os.fstat(2)
        except OSError as error:
            raise StartupError(
                f"asrv: cannot use standard error as the log: {error.strerror}",
                ExitStatus.LOG_UNUSABLE,
            ) from None
        if not stat.S_ISREG(info.st_mode):
            return cls(2, None, False, None, None, name, ())
        # Standard error is often open write-only (2>>file): reopen the file it names, for
        # appending too. Lines go through that descriptor: standard error itself may lack
        # O_APPEND (2<>file, a service manager's file:), and would overwrite the log.
        try:
            flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
            readback, writable = os.open("/proc/self/fd/2", flags), True
        except OSError:
            try:
                readback, writable = os.open("/proc/self/fd/2", os.O_RDONLY | os.O_CLOEXEC), False
            except OSError as error:
                raise StartupError(
                    f"asrv: cannot read back the audit log on standard error: {error.strerror}",
                    ExitStatus.LOG_UNUSABLE,
                ) from None
        owned.append(readback)
        reopened = os.fstat(readback)
        if (reopened.st_dev, reopened.st_ino) != (info.st_dev, info.st_ino):
            raise StartupError(
                "asrv: standard error changed while it was opened as the log",
                ExitStatus.LOG_UNUSABLE,
            )
        append_fd = readback if writable else 2
        if not writable and not fcntl.fcntl(2, fcntl.F_GETFL) & os.O_APPEND:
            raise StartupError(
                "asrv: standard error is not open for appending, and asrv cannot reopen it: "
                "lines would overwrite the log",
                ExitStatus.LOG_UNUSABLE,
            )
        return cls(
            append_fd,
            readback,
            writable,
            info.st_ino,
            info.st_dev,
            name,
            tuple(owned),
        )

    def _lock(self) -> None:
        """One server per log. A lock on a description of our own: descriptors inherited
        from a shell (standard error) may be shared with another process."""
        if self.readback_fd is None:
            return  # a pipe or a terminal: nothing to read back, so nothing to corrupt
        try:
            fcntl.flock(self.readback_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StartupError(
                f"asrv: log {self.name} is used by another asrv", ExitStatus.LOG_UNUSABLE
            ) from None

    def size_now(self) -> int:
        """The log's size now (read after recovery, which may cut a torn line off)."""
        return os.fstat(self.fd).st_size if self.is_file else 0

    def close(self) -> None:
        for fd in self._owned:
            with contextlib.suppress(OSError):
                os.close(fd)

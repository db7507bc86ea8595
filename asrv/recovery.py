"""Start-up recovery: make the files and the audit log agree again after a crash.

The invariant to restore is "files = replay of the log". A crash can leave three kinds of
debris, all settled here before the server listens:

- an incomplete last log line (the write of a batch was cut): it was never durable as a
  whole, so no client was answered for it; cut it off.
- upload temp files (".asrv_upload_*"): bodies of PUTs that never reached their critical
  step; remove them.
- intent files (".asrv~INODE~OFFSET~NAME"): a PUT renamed its upload to this name, with
  INODE the log's inode number and OFFSET the end of its log line, before the line was
  flushed. If the log holds the whole line `PUT,/NAME,200|201,...` ending exactly at OFFSET,
  the PUT is logged (and may have been acknowledged) but its final rename may not have
  survived: redo it. If the log ends before OFFSET, the line never made it to disk, so the
  PUT never happened: remove the file.

Recovery never guesses. An intent it cannot verify against this log (the log cannot be read
back, the intent names another log, or the log holds some other line at its offset) stops
the start with one line naming it: applying it or deleting it could each contradict the log.
Names under asrv's prefixes that asrv never makes are left alone and reported.

Every step is idempotent, so a crash during recovery is recovered by the next start.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from asrv.errors import ExitStatus, StartupError
from asrv.logfile import LogFile
from asrv.store import COMMIT_PREFIX, UPLOAD_PREFIX

_OFFSET = r"(0|[1-9][0-9]{0,19})"
_TARGET = r"(?!\.\.?$)([a-zA-Z0-9.-]{1,63})"  # a name a PUT can write: not "." or ".."
_INTENT = re.compile(re.escape(COMMIT_PREFIX) + r"([0-9a-f]{1,16}|-)~" + _OFFSET + "~" + _TARGET)
# Made by asrv 0.1 before intents named their log: verified against the lines alone.
_UNTAGGED_INTENT = re.compile(re.escape(COMMIT_PREFIX) + _OFFSET + "~" + _TARGET)
_LOGGED_PUT = re.compile(rb"PUT,/([a-zA-Z0-9.-]{1,63}),20[01],[^,\n]*\n")
_TAIL = 4096
"""Bytes read from the end of the log to find its last newline (a line is far shorter)."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    cut_bytes: int = 0
    redone: int = 0
    removed: int = 0
    strays: tuple[str, ...] = ()
    """Files under asrv's prefixes that asrv never makes: left alone."""

    def __bool__(self) -> bool:
        return any((self.cut_bytes, self.redone, self.removed, self.strays))

    def describe(self) -> str:
        parts = [
            f"cut {self.cut_bytes} bytes of an incomplete last log line",
            f"redid {self.redone} logged PUTs",
            f"removed {self.removed} temp files",
        ]
        if self.strays:
            parts.append(f"left {len(self.strays)} unknown files ({', '.join(self.strays)})")
        return "recovered: " + ", ".join(parts)


def _refuse(message: str) -> StartupError:
    return StartupError(f"asrv: cannot recover: {message}", ExitStatus.RECOVERY_FAILED)


def recover(root_fd: int, log: LogFile) -> RecoveryReport:
    """Settle a crash's debris in the root against `log`; StartupError if it cannot."""
    cut = _cut_incomplete_line(log)
    size = log.size_now()
    redo: list[tuple[int, str, str]] = []
    remove: list[str] = []
    strays: list[str] = []
    for name in sorted(os.listdir(root_fd)):
        if name.startswith(UPLOAD_PREFIX):
            if _is_the_log(root_fd, name, log):
                strays.append(name)  # the log itself, under an upload's name: never removed
            else:
                remove.append(name)
            continue
        if not name.startswith(COMMIT_PREFIX):
            continue
        match = _INTENT.fullmatch(name)
        untagged = _UNTAGGED_INTENT.fullmatch(name) if match is None else None
        if match is not None:
            tag, offset, target = match[1], int(match[2]), match[3]
        elif untagged is not None:
            tag, offset, target = log.tag, int(untagged[1]), untagged[2]
        else:
            strays.append(name)
            continue
        if log.readback_fd is None:
            raise _refuse(f"{name} needs the audit log, and {log.name} cannot be read back")
        if tag != log.tag:
            raise _refuse(f"{name} refers to another audit log than {log.name}")
        if offset > size:
            remove.append(name)  # its line never reached the log: the PUT never happened
            continue
        logged = _LOGGED_PUT.fullmatch(_line_ending_at(log.readback_fd, offset))
        if logged is None or logged[1].decode() != target:
            raise _refuse(f"{name} does not match line ending at byte {offset} of {log.name}")
        redo.append((offset, name, target))
    if redo:
        assert log.readback_fd is not None
        # A line found in the log may still be only in the page cache (the crash came
        # between its write and its fdatasync): make it durable before the PUT it logs
        # takes effect, or a power cut could keep the effect and lose the line.
        os.fsync(log.readback_fd)
    for name in remove:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=root_fd)
    # Oldest first: if a file has several, the one logged last must end up in place.
    for _, name, target in sorted(redo):
        try:
            os.rename(name, target, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except OSError as error:
            raise _refuse(
                f"cannot redo the logged PUT of {target} ({name}): {error.strerror}"
            ) from None
    if redo or remove:
        os.fsync(root_fd)
    return RecoveryReport(cut, len(redo), len(remove), tuple(strays))


def _is_the_log(root_fd: int, name: str, log: LogFile) -> bool:
    try:
        info = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == log.identity


def _cut_incomplete_line(log: LogFile) -> int:
    fd = log.readback_fd
    if fd is None:
        return 0
    size = os.fstat(fd).st_size
    end = size
    keep = 0
    while end > 0:
        start = max(0, end - _TAIL)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    if keep < size:
        if not log.writable_readback:
            raise _refuse(f"{log.name} ends in an incomplete line, and asrv may not cut it off")
        os.ftruncate(fd, keep)
        os.fsync(fd)
    return size - keep


def _line_ending_at(fd: int, offset: int) -> bytes:
    """The whole line whose newline is the byte just before `offset`, or b"" if none is.
    Read backwards as far as the line goes: a Request-Id may make it longer than _TAIL."""
    end = offset
    data = b""
    while end > 0:
        start = max(0, end - _TAIL)
        data = os.pread(fd, end - start, start) + data
        end = start
        if not data.endswith(b"\n"):
            return b""
        newline = data.rfind(b"\n", 0, len(data) - 1)
        if newline >= 0:
            return data[newline + 1 :]
    return data

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
- deletion intents (".asrv-deleted~INODE~OFFSET~NAME"): a DELETE gave the file this second
  name before its line was flushed, and unlinks NAME only once the line is durable. If the
  log holds `DELETE,/NAME,200,...` ending at OFFSET, the DELETE happened: finish it (unlink
  NAME if it is still this file, and the intent). If the log ends before OFFSET, it never
  happened: NAME still holds the file, and only the intent goes. (On a filesystem without
  hard links the DELETE moved the file to the intent instead: then NAME is absent, and an
  unlogged DELETE gives the file its name back.)

Recovery never guesses. An intent it cannot verify against this log (the log cannot be read
back, the intent names another log, or the log holds some other line at its offset) stops
the start with one line naming it: applying it or deleting it could each contradict the log.
Names under asrv's prefixes that asrv never makes are left alone and reported.

Every step is idempotent, so a crash during recovery is recovered by the next start.
"""

from __future__ import annotations

import contextlib
import enum
import mmap
import os
import re
from dataclasses import dataclass
from typing import NamedTuple

from asrv.errors import ExitStatus, StartupError
from asrv.logfile import LogFile
from asrv.store import COMMIT_PREFIX, DELETE_PREFIX, UPLOAD_PREFIX

_OFFSET = r"(0|[1-9][0-9]{0,19})"
_TARGET = r"(?!\.\.?$)([a-zA-Z0-9.-]{1,63})"  # a name a PUT can write: not "." or ".."
_INTENT = re.compile(re.escape(COMMIT_PREFIX) + r"([0-9a-f]{1,16}|-)~" + _OFFSET + "~" + _TARGET)
# Made by asrv 0.1 before intents named their log: verified against the lines alone.
_UNTAGGED_INTENT = re.compile(re.escape(COMMIT_PREFIX) + _OFFSET + "~" + _TARGET)
_DELETE_INTENT = re.compile(
    re.escape(DELETE_PREFIX) + r"([0-9a-f]{1,16}|-)~" + _OFFSET + "~" + _TARGET
)
_LOGGED_PUT = re.compile(rb"PUT,/([a-zA-Z0-9.-]{1,63}),20[01],[^,\n]*\n")
_LOGGED_DELETE = re.compile(rb"DELETE,/([a-zA-Z0-9.-]{1,63}),200,[^,\n]*\n")
_TAIL = 4096
"""Bytes read from the end of the log to find its last newline (a line is far shorter)."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    cut_bytes: int = 0
    redone: int = 0
    """Logged PUTs installed, and logged DELETEs finished."""
    removed: int = 0
    """Uploads, and intents of PUTs that were never logged, removed."""
    undone: int = 0
    """DELETEs that were never logged, undone: their files keep their names."""
    strays: tuple[str, ...] = ()
    """Files under asrv's prefixes that asrv never makes: left alone."""

    def __bool__(self) -> bool:
        return any((self.cut_bytes, self.redone, self.removed, self.undone, self.strays))

    def describe(self) -> str:
        parts = [
            f"cut {self.cut_bytes} bytes of an incomplete last log line",
            f"redid {self.redone} logged PUTs and DELETEs",
            f"removed {self.removed} temp files",
        ]
        if self.undone:
            parts.append(f"undid {self.undone} DELETEs that were never logged")
        if self.strays:
            parts.append(f"left {len(self.strays)} unknown files ({', '.join(self.strays)})")
        return "recovered: " + ", ".join(parts)


class _Kind(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


class _Intent(NamedTuple):
    """A PUT's or DELETE's intent file: which log line it waits for, and its target."""

    offset: int
    name: str
    target: str
    kind: _Kind
    tag: str


def _refuse(message: str) -> StartupError:
    return StartupError(f"asrv: cannot recover: {message}", ExitStatus.RECOVERY_FAILED)


def recover(root_fd: int, log: LogFile) -> RecoveryReport:
    """Settle a crash's debris in the root against `log`; StartupError if it cannot."""
    cut = _cut_incomplete_line(log)
    size = log.size_now()
    redo: list[_Intent] = []
    restore: list[_Intent] = []
    remove: list[str] = []
    strays: list[str] = []
    for name in sorted(os.listdir(root_fd)):
        if name.startswith(UPLOAD_PREFIX):
            if _is_the_log(root_fd, name, log):
                strays.append(name)  # the log itself, under an upload's name: never removed
            else:
                remove.append(name)
            continue
        if not name.startswith((COMMIT_PREFIX, DELETE_PREFIX)):
            continue
        intent = _parse_intent(name, log.tag)
        if intent is None:
            strays.append(name)
            continue
        if log.readback_fd is None:
            raise _refuse(f"{name} needs the audit log, and {log.name} cannot be read back")
        if intent.tag != log.tag:
            raise _refuse(f"{name} refers to another audit log than {log.name}")
        if intent.offset > size:
            # Its line never reached the log: the request never happened.
            if intent.kind is _Kind.PUT:
                remove.append(name)
            else:
                restore.append(intent)
            continue
        pattern = _LOGGED_PUT if intent.kind is _Kind.PUT else _LOGGED_DELETE
        logged = pattern.fullmatch(_line_ending_at(log.readback_fd, intent.offset))
        if logged is None or logged[1].decode() != intent.target:
            raise _refuse(
                f"{name} does not match line ending at byte {intent.offset} of {log.name}"
            )
        redo.append(intent)
    if redo:
        assert log.readback_fd is not None
        # A line found in the log may still be only in the page cache (the crash came
        # between its write and its fdatasync): make it durable before the request it logs
        # takes effect, or a power cut could keep the effect and lose the line.
        os.fsync(log.readback_fd)
    for name in remove:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=root_fd)
    # Oldest first: if a file has several, the one logged last must end up in effect.
    for intent in sorted(redo):
        assert log.readback_fd is not None  # an intent is never redone without it
        _redo(root_fd, log.readback_fd, intent)
    for intent in restore:
        _undo_delete(root_fd, intent)
    if redo or remove or restore:
        os.fsync(root_fd)
    return RecoveryReport(cut, len(redo), len(remove), len(restore), tuple(strays))


def _parse_intent(name: str, log_tag: str) -> _Intent | None:
    if name.startswith(DELETE_PREFIX):
        match = _DELETE_INTENT.fullmatch(name)
        if match is None:
            return None
        return _Intent(int(match[2]), name, match[3], _Kind.DELETE, match[1])
    match = _INTENT.fullmatch(name)
    if match is not None:
        return _Intent(int(match[2]), name, match[3], _Kind.PUT, match[1])
    untagged = _UNTAGGED_INTENT.fullmatch(name)
    if untagged is not None:
        return _Intent(int(untagged[1]), name, untagged[2], _Kind.PUT, log_tag)
    return None


def _redo(root_fd: int, log_fd: int, intent: _Intent) -> None:
    """Put a logged request in effect: install a PUT's content, or finish a DELETE."""
    try:
        if intent.kind is _Kind.PUT:
            os.rename(intent.name, intent.target, src_dir_fd=root_fd, dst_dir_fd=root_fd)
            return
        # A later logged PUT may have put a new file under the name already: only this
        # DELETE's own file goes.
        if _same_file(root_fd, intent.name, intent.target):
            os.unlink(intent.target, dir_fd=root_fd)
        elif _exists(root_fd, intent.target) and not _put_logged_after(log_fd, intent):
            raise _refuse(
                f"{intent.target} is another file than {intent.name}, and no PUT after "
                f"byte {intent.offset} of the log explains it"
            )
        os.unlink(intent.name, dir_fd=root_fd)
    except OSError as error:
        raise _refuse(
            f"cannot redo the logged {intent.kind.value} of {intent.target} ({intent.name}): "
            f"{error.strerror}"
        ) from None


def _undo_delete(root_fd: int, intent: _Intent) -> None:
    """A DELETE that was never logged: the file keeps (or gets back) its name. Nothing
    logged after it can have used the name, so another file there is one recovery cannot
    explain."""
    try:
        if _same_file(root_fd, intent.name, intent.target):
            os.unlink(intent.name, dir_fd=root_fd)  # linked: the name never went away
            return
        if not _exists(root_fd, intent.target):
            os.rename(intent.name, intent.target, src_dir_fd=root_fd, dst_dir_fd=root_fd)
            return
    except OSError as error:
        raise _refuse(
            f"cannot give {intent.target} back from {intent.name}: {error.strerror}"
        ) from None
    raise _refuse(f"cannot give {intent.target} back from {intent.name}: the name is taken")


def _put_logged_after(log_fd: int, intent: _Intent) -> bool:
    """Whether a PUT of the intent's target that wrote a file is logged after its line."""
    size = os.fstat(log_fd).st_size
    if size <= intent.offset:
        return False
    pattern = re.compile(rb"^PUT,/" + re.escape(intent.target.encode()) + rb",20[01],", re.M)
    with mmap.mmap(log_fd, size, access=mmap.ACCESS_READ) as log:
        return pattern.search(log, intent.offset) is not None


def _exists(root_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _same_file(root_fd: int, first: str, second: str) -> bool:
    """Whether both names exist and are links to one file."""
    try:
        one = os.stat(first, dir_fd=root_fd, follow_symlinks=False)
        other = os.stat(second, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


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

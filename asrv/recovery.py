"""Start-up recovery: make the files and the audit log agree again after a crash.

The invariant to restore is "files = replay of the log". A crash can leave three kinds of
debris, all settled here before the server listens:

- an incomplete last log line (the write of a batch was cut): it was never durable as a
  whole, so no client was answered for it; cut it off.
- upload temp files (".asrv_upload_*"): bodies of PUTs that never reached their critical
  step; remove them.
- committed temp files (".asrv~OFFSET~NAME"): a PUT renamed its upload to this name, with
  OFFSET the end of its log line, before the line was flushed. If the log holds a whole
  `PUT,/NAME,...` line ending exactly at OFFSET, the PUT is logged (and may have been
  acknowledged) but its final rename may not have survived: redo it. Otherwise the line
  never made it to disk, so the PUT never happened: remove the file.

Every step is idempotent, so a crash during recovery is recovered by the next start.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from asrv.store import COMMIT_PREFIX, UPLOAD_PREFIX

_COMMITTED = re.compile(re.escape(COMMIT_PREFIX) + r"(\d{1,20})~([a-zA-Z0-9.-]{1,63})")
_TAIL = 4096
"""Bytes read from the end of the log to find its last newline (a line is far shorter)."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    cut_bytes: int = 0
    redone: int = 0
    removed: int = 0
    unverifiable: int = 0

    def __bool__(self) -> bool:
        return any((self.cut_bytes, self.redone, self.removed, self.unverifiable))

    def describe(self) -> str:
        parts = [
            f"cut {self.cut_bytes} bytes of an incomplete last log line",
            f"redid {self.redone} logged PUTs",
            f"removed {self.removed} temp files",
        ]
        if self.unverifiable:
            parts.append(f"left {self.unverifiable} committed temp files (log is not a file)")
        return "recovered: " + ", ".join(parts)


def recover(root_fd: int, log_fd: int | None) -> RecoveryReport:
    """Settle a crash's debris in the root; `log_fd` is the audit log opened O_RDWR, or None
    when the log is not a file asrv opened (then committed temps cannot be checked)."""
    cut = _cut_incomplete_line(log_fd) if log_fd is not None else 0
    log_size = os.fstat(log_fd).st_size if log_fd is not None else 0
    redo: list[tuple[int, str, str]] = []
    removed = unverifiable = 0
    for name in os.listdir(root_fd):
        if name.startswith(UPLOAD_PREFIX):
            _unlink(name, root_fd)
            removed += 1
            continue
        match = _COMMITTED.fullmatch(name)
        if match is None:
            continue
        offset, target = int(match[1]), match[2]
        if log_fd is None:
            unverifiable += 1
        elif offset <= log_size and _line_ending_at(log_fd, offset).startswith(
            f"PUT,/{target},".encode()
        ):
            redo.append((offset, name, target))
        else:
            _unlink(name, root_fd)
            removed += 1
    if redo and log_fd is not None:
        # A line found in the log may still be only in the page cache (the crash came
        # between its write and its fdatasync): make it durable before the PUT it logs
        # takes effect, or a power cut could keep the effect and lose the line.
        os.fsync(log_fd)
    # Oldest first: if a file has several, the one logged last must end up in place.
    for _, name, target in sorted(redo):
        os.rename(name, target, src_dir_fd=root_fd, dst_dir_fd=root_fd)
    if redo or removed:
        os.fsync(root_fd)
    return RecoveryReport(cut, len(redo), removed, unverifiable)


def _cut_incomplete_line(log_fd: int) -> int:
    size = os.fstat(log_fd).st_size
    if size == 0:
        return 0
    end = size
    while end > 0:
        start = max(0, end - _TAIL)
        newline = os.pread(log_fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    else:
        keep = 0
    if keep < size:
        os.ftruncate(log_fd, keep)
        os.fsync(log_fd)
    return size - keep


def _line_ending_at(log_fd: int, offset: int) -> bytes:
    """The whole line whose newline is the byte just before `offset`, or b"" if none is."""
    start = max(0, offset - _TAIL)
    data = os.pread(log_fd, offset - start, start)
    if not data.endswith(b"\n"):
        return b""
    return data[data.rfind(b"\n", 0, len(data) - 1) + 1 :]


def _unlink(name: str, root_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=root_fd)

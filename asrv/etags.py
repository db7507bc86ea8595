"""ETags that cannot collide: a version's ETag names the log line of the PUT that wrote it.

inode, mtime and size are not enough: ext4 timestamps move in coarse ticks and inode
numbers are reused, so two PUTs of the same size can look alike. The end offset of a PUT's
line in the log is unique for as long as the log is, and survives restarts. A PUT stamps its
new version with it, in an extended attribute, before the version takes the target's name
(and so before recovery could ever install it): `w-LOG-OFFSET-MTIME`, where LOG names the log
(its inode number, or a random tag per run when the log is not a file) and MTIME, the
version's modification time, keeps the tag unique even if a log's inode number is reused.

The attribute also records the inode number, size and modification time it was stamped for.
A file that was never stamped (put in the root by other means), was changed in place since,
or is a copy of a stamped file (`cp -a` copies the attribute, not the inode) gets an ETag
from what `stat` says: `s-INODE-MTIME-SIZE`. Where the filesystem has no user extended
attributes, a PUT gives its version a modification time no other version of this server has
had (strictly increasing, in nanoseconds) and the version's ETag is that `stat` form.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import threading
import time

ATTRIBUTE = "user.asrv.etag"
_TOKEN = re.compile(rb"w-[0-9a-z]{1,20}-[0-9a-f]{1,20}-[0-9a-f]{1,20}")


def current_etag(fd: int, info: os.stat_result) -> str:
    """The ETag of the version open on `fd`, whose `fstat` is `info`."""
    try:
        stored = os.getxattr(fd, ATTRIBUTE)
    except OSError:
        stored = b""
    token, _, stamped_for = stored.partition(b" ")
    if stamped_for == _stamped_for(info) and _TOKEN.fullmatch(token):
        return f'"{token.decode("ascii")}"'
    return stat_etag(info)


def _stamped_for(info: os.stat_result) -> bytes:
    """What a stamp is valid for: this inode, with this size and modification time."""
    return b"%d %d %d" % (info.st_ino, info.st_size, info.st_mtime_ns)


def stat_etag(info: os.stat_result) -> str:
    """The ETag of a version asrv did not stamp."""
    return f'"s-{info.st_ino:x}-{info.st_mtime_ns:x}-{info.st_size:x}"'


class EtagStamper:
    """Gives each version a PUT writes its ETag (thread-safe: one per server)."""

    def __init__(self, log_name: str) -> None:
        """`log_name`: how ETags name the log, unique to it (`for_log`)."""
        self._log_name = log_name
        self._xattrs = True
        self._lock = threading.Lock()
        self._last_mtime = 0

    @classmethod
    def for_log(cls, log_inode: int | None) -> EtagStamper:
        """A stamper for a log with this inode number (None: not a file, and so offsets
        that start again at every run)."""
        if log_inode is None:
            return cls.for_run()
        return cls(format(log_inode, "x"))

    @classmethod
    def for_run(cls) -> EtagStamper:
        return cls("r" + secrets.token_hex(6))

    def stamp(self, fd: int, end_offset: int) -> str:
        """Stamp the version open on `fd`, written by the PUT whose line ends at
        `end_offset`; return its ETag. OSError if it cannot be stamped."""
        info = os.fstat(fd)
        if self._xattrs:
            token = f"w-{self._log_name}-{end_offset:x}-{info.st_mtime_ns:x}"
            try:
                os.setxattr(fd, ATTRIBUTE, token.encode() + b" " + _stamped_for(info))
                return f'"{token}"'
            except OSError as error:
                if error.errno != errno.ENOTSUP:
                    raise
                self._xattrs = False  # this filesystem has none: the fallback from now on
        with self._lock:
            mtime = max(time.time_ns(), self._last_mtime + 1)
            self._last_mtime = mtime
        os.utime(fd, ns=(mtime, mtime))
        return stat_etag(os.fstat(fd))

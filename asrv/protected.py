"""Files in the root that asrv never serves, replaces or deletes: its own audit log, and the
secrets it was started with (token files, TLS key and certificate), should an operator keep
them there. A GET, HEAD, PUT or DELETE of one gets 403, like any file the server may not
have."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

FileIdentity = tuple[int, int]
"""(st_dev, st_ino) of a file."""

_PIN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Protected:
    """By identity, the files themselves, under any name (a hard link too); by name, the
    root's entries that hold them, also once an editor has replaced or removed one.

    An identity is only safe to compare while its inode lives: a filesystem gives the number
    of a deleted file to the next one created. So each secret's identity is held with an
    open descriptor (`pins`) until `close`, when a newer set has replaced this one."""

    identities: frozenset[FileIdentity] = frozenset()
    names: frozenset[str] = frozenset()
    files: tuple[tuple[str, FileIdentity, int], ...] = field(default=(), compare=False)
    """Each secret's absolute path, identity and pin: for the next set, should the path be
    unreadable then."""

    @property
    def pins(self) -> tuple[int, ...]:
        """The descriptors that hold the secrets."""
        return tuple(pin for _path, _identity, pin in self.files)

    def covers(self, name: str, info: os.stat_result | None) -> bool:
        """Whether the root's entry `name` (found with `info`, or absent) is protected."""
        if name in self.names:
            return True
        return info is not None and (info.st_dev, info.st_ino) in self.identities

    def close(self) -> None:
        """Let the pinned inodes go (once nothing compares against this set any more)."""
        for fd in self.pins:
            with contextlib.suppress(OSError):
                os.close(fd)


def protected_files(
    root: Path,
    log: FileIdentity | None,
    secrets: Iterable[Path | None],
    previous: Protected | None = None,
) -> Protected:
    """What to protect now: the log (which the server holds open), and each secret file
    that exists, or is named in the root. Read again when the token files are (SIGHUP), as
    they may be new files. A secret that cannot be opened now (gone, or no descriptor left)
    keeps what `previous` knew of it: its tokens may still be in force, and so may a hard
    link to it. The caller closes the result when done with it."""
    identities = set() if log is None else {log}
    names = set()
    files: list[tuple[str, FileIdentity, int]] = []
    known = {path: (identity, pin) for path, identity, pin in previous.files} if previous else {}
    real_root = os.path.realpath(root)
    for path in secrets:
        if path is None:
            continue
        key = os.path.abspath(path)
        fd: int | None
        try:
            fd = os.open(path, _PIN_FLAGS)
        except OSError:
            fd = _carried(known.get(key))
        if fd is not None:
            info = os.fstat(fd)
            identity = (info.st_dev, info.st_ino)
            files.append((key, identity, fd))
            identities.add(identity)
        if os.path.realpath(os.path.dirname(key)) == real_root:
            names.add(os.path.basename(path))
    return Protected(frozenset(identities), frozenset(names), tuple(files))


def _carried(known: tuple[FileIdentity, int] | None) -> int | None:
    """A descriptor of its own on a secret the previous set held, if it did (and if one
    is left)."""
    if known is None:
        return None
    try:
        return os.dup(known[1])
    except OSError:
        return None

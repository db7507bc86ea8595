"""Files in the root that asrv never serves, replaces or deletes: its own audit log, and the
secrets it was started with (token files, TLS key and certificate), should an operator keep
them there. A GET, HEAD, PUT or DELETE of one gets 403, like any file the server may not
have."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FileIdentity = tuple[int, int]
"""(st_dev, st_ino) of a file."""


@dataclass(frozen=True, slots=True)
class Protected:
    """By identity, the files themselves, under any name (a hard link too); by name, the
    root's entries that hold them, also once an editor has replaced or removed one."""

    identities: frozenset[FileIdentity] = frozenset()
    names: frozenset[str] = frozenset()

    def covers(self, name: str, info: os.stat_result | None) -> bool:
        """Whether the root's entry `name` (found with `info`, or absent) is protected."""
        if name in self.names:
            return True
        return info is not None and (info.st_dev, info.st_ino) in self.identities


def protected_files(
    root: Path, log: FileIdentity | None, secrets: Iterable[Path | None]
) -> Protected:
    """What to protect now: the log, and each secret file that exists, or is named in the
    root. Read again when the token files are (SIGHUP), as they may be new files."""
    identities = set() if log is None else {log}
    names = set()
    real_root = os.path.realpath(root)
    for path in secrets:
        if path is None:
            continue
        try:
            info = os.stat(path)
            identities.add((info.st_dev, info.st_ino))
        except OSError:
            pass  # a token file gone since the start: its old tokens stay, its name below
        if os.path.realpath(os.path.dirname(os.path.abspath(path))) == real_root:
            names.add(os.path.basename(path))
    return Protected(frozenset(identities), frozenset(names))

"""Which of the root's entries the server must refuse: its log and its secrets."""

from __future__ import annotations

import os
from pathlib import Path

from asrv.protected import protected_files


def test_secrets_in_the_root_are_protected_by_name_and_identity(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "via").symlink_to(root)  # the root named another way
    token = root / "tokens.txt"
    token.write_text("t\n")
    outside = tmp_path / "key.pem"
    outside.write_text("k\n")
    os.link(outside, root / "linked.pem")
    protected = protected_files(tmp_path / "via", None, [token, outside, root / "gone.txt", None])
    assert protected.names == {"tokens.txt", "gone.txt"}  # not key.pem: it is not in the root
    linked = os.stat(root / "linked.pem")
    assert protected.covers("linked.pem", linked)  # the key under another name
    assert protected.covers("gone.txt", None)  # a secret's name, while it is absent
    other = root / "other.txt"
    other.write_text("o\n")
    assert not protected.covers("other.txt", os.stat(other))
    assert not protected.covers("missing.txt", None)


def test_the_log_is_protected_by_identity(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("")
    info = os.stat(log)
    protected = protected_files(tmp_path, (info.st_dev, info.st_ino), [])
    assert protected.names == frozenset()
    assert protected.covers("any-name", info)

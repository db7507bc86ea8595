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
    assert len(protected.pins) == 2
    assert protected.names == {"tokens.txt", "gone.txt"}  # not key.pem: it is not in the root
    linked = os.stat(root / "linked.pem")
    assert protected.covers("linked.pem", linked)  # the key under another name
    assert protected.covers("gone.txt", None)  # a secret's name, while it is absent
    other = root / "other.txt"
    other.write_text("o\n")
    assert not protected.covers("other.txt", os.stat(other))
    assert not protected.covers("missing.txt", None)
    protected.close()


def test_a_deleted_secrets_inode_number_goes_to_no_other_file(tmp_path: Path) -> None:
    """The set holds each secret open: were its inode freed, the filesystem would give its
    number to the next file created, which would then be refused as the secret."""
    secret = tmp_path / "tokens.txt"
    secret.write_text("t\n")
    protected = protected_files(tmp_path / "root", None, [secret])
    secret.unlink()
    try:
        for n in range(20):
            new = tmp_path / f"new-{n}"
            new.write_text("n\n")
            assert not protected.covers(new.name, os.stat(new))
    finally:
        protected.close()


def test_the_log_is_protected_by_identity(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("")
    info = os.stat(log)
    protected = protected_files(tmp_path, (info.st_dev, info.st_ino), [])
    assert protected.names == frozenset()
    assert protected.covers("any-name", info)


def test_a_secret_that_cannot_be_opened_now_keeps_its_identity(tmp_path: Path) -> None:
    """On SIGHUP a token file may be gone (its old tokens stay in force) or the server out
    of descriptors: a hard link to it elsewhere stays refused."""
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "tokens.txt"
    secret.write_text("t\n")
    os.link(secret, root / "linked.txt")
    first = protected_files(root, None, [secret])
    secret.unlink()
    second = protected_files(root, None, [secret], first)
    first.close()
    try:
        assert second.covers("linked.txt", os.stat(root / "linked.txt"))
    finally:
        second.close()

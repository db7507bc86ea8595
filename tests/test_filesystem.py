"""Telling from the mount table whether the root's filesystem journals metadata in order,
whether the log shares that journal, and writing a file back without a commit."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from asrv.filesystem import (
    filesystem_type,
    journals_metadata_in_order,
    shares_ordered_journal,
    write_back,
)


@pytest.fixture
def root_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def mountinfo(tmp_path: Path, root_fd: int, *entries: tuple[str, str]) -> str:
    """A mount table listing (device, type) entries; "ROOT" stands for the root's device."""
    info = os.fstat(root_fd)
    device = f"{os.major(info.st_dev)}:{os.minor(info.st_dev)}"
    lines = [
        f"{n + 20} 1 {device if dev == 'ROOT' else dev} / /m{n} rw,relatime shared:1 - {kind} "
        f"/dev/x{n} rw"
        for n, (dev, kind) in enumerate(entries)
    ]
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("entries", "kind", "in_order"),
    [
        ((("ROOT", "ext4"),), "ext4", True),
        ((("0:99", "tmpfs"), ("ROOT", "xfs")), "xfs", True),
        ((("ROOT", "btrfs"),), "btrfs", False),
        ((("ROOT", "overlay"),), "overlay", False),
        ((("ROOT", "ext4"), ("ROOT", "ext4")), "ext4", True),  # bind mounts of one filesystem
        ((("ROOT", "ext4"), ("ROOT", "btrfs")), None, False),  # cannot be: unknown
        ((("0:99", "ext4"),), None, False),  # the root's device is not listed
    ],
)
def test_the_roots_filesystem_type(
    tmp_path: Path,
    root_fd: int,
    entries: tuple[tuple[str, str], ...],
    kind: str | None,
    in_order: bool,
) -> None:
    table = mountinfo(tmp_path, root_fd, *entries)
    assert filesystem_type(root_fd, table) == kind
    assert journals_metadata_in_order(root_fd, table) is in_order


def test_an_unreadable_mount_table_means_unknown(tmp_path: Path, root_fd: int) -> None:
    assert filesystem_type(root_fd, str(tmp_path / "missing")) is None
    assert journals_metadata_in_order(root_fd, str(tmp_path / "missing")) is False


def test_the_real_mount_table_names_the_tmp_filesystem(root_fd: int) -> None:
    assert filesystem_type(root_fd) is not None


def test_the_log_shares_the_roots_journal_only_on_the_same_filesystem(
    tmp_path: Path, root_fd: int
) -> None:
    if not journals_metadata_in_order(root_fd):
        pytest.skip("the temporary directory is not on ext4 or XFS")
    here = os.open(tmp_path / "audit.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert shares_ordered_journal(root_fd, here)
    finally:
        os.close(here)
    if not Path("/dev/shm").is_dir():
        return
    elsewhere = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not shares_ordered_journal(root_fd, elsewhere)
    finally:
        os.close(elsewhere)


def test_write_back_writes_a_files_pages_and_reports_errors(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 100_000)
        write_back(fd)
        assert os.pread(fd, 10, 99_990) == b"x" * 10
    finally:
        os.close(fd)
    with pytest.raises(OSError) as failed:
        write_back(fd)  # closed
    assert failed.value.errno == errno.EBADF

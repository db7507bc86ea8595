"""Telling from the mount table whether the root's filesystem journals metadata in order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from asrv.filesystem import filesystem_type, journals_metadata_in_order


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

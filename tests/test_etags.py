"""ETags that cannot collide (SPEC §5.3): stamped from the log position of the PUT that wrote
the version, read back with the version, and a unique fallback where the filesystem has no
user extended attributes."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from asrv.etags import EtagStamper, current_etag, stat_etag


def stamp(stamper: EtagStamper, path: Path, end_offset: int) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return stamper.stamp(fd, end_offset)
    finally:
        os.close(fd)


def etag_of(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return current_etag(fd, os.fstat(fd))
    finally:
        os.close(fd)


def test_a_stamp_is_read_back_while_the_version_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"content")
    etag = stamp(EtagStamper.for_log(0x1F), path, 0x2A)
    assert etag.startswith('"w-1f-2a-') and etag.endswith('"')
    assert etag_of(path) == etag
    os.rename(path, tmp_path / "g")  # a version keeps its tag under another name
    assert etag_of(tmp_path / "g") == etag


def test_a_version_changed_in_place_loses_its_stamp(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"content")
    etag = stamp(EtagStamper.for_log(1), path, 10)
    with path.open("r+b") as stream:
        stream.write(b"C")  # same size, new modification time
    os.utime(path, ns=(5, 5))
    assert etag_of(path) == stat_etag(path.stat()) != etag


def test_same_size_versions_in_one_tick_get_distinct_tags(tmp_path: Path) -> None:
    stamper = EtagStamper.for_log(7)
    etags = set()
    for offset in range(1, 501):
        path = tmp_path / "f"
        path.write_bytes(b"x" * 8)
        etags.add(stamp(stamper, path, offset * 16))
    assert len(etags) == 500


def test_logs_that_are_not_files_get_a_tag_per_run(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    # Offsets of such a log start at 0 on every run: the run's own tag keeps them apart.
    first = stamp(EtagStamper.for_log(None), path, 12)
    path.write_bytes(b"y")
    os.utime(path, ns=(1, 1))
    second = stamp(EtagStamper.for_log(None), path, 12)
    assert first.split("-")[1] != second.split("-")[1]


def test_without_extended_attributes_each_version_gets_a_new_modification_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    stamper = EtagStamper.for_log(3)
    etags = []
    path = tmp_path / "f"
    for offset in range(200):
        path.write_bytes(b"same size")  # same inode, same size, and within one tick
        etag = stamp(stamper, path, offset)
        assert etag == stat_etag(path.stat()) == etag_of(path)
        etags.append(etag)
    assert len(set(etags)) == len(etags)


def test_a_copy_with_the_stamp_and_times_is_another_version(tmp_path: Path) -> None:
    original = tmp_path / "f"
    original.write_bytes(b"content")
    etag = stamp(EtagStamper.for_log(9), original, 99)
    copy = tmp_path / "g"
    shutil.copy2(original, copy)  # like cp -a: content, times and extended attributes
    assert os.getxattr(copy, "user.asrv.etag") == os.getxattr(original, "user.asrv.etag")
    assert etag_of(copy) == stat_etag(copy.stat()) != etag
    assert etag_of(original) == etag

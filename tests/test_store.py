"""`Store` on its own, with a real root, log and threads: the PUT's critical step where a
rename fails, before its line is durable (500, nothing changed) and after (fail-stop, and
recovery finishes it)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asrv import Config
from asrv.auditlog import AuditLog, LogFailure
from asrv.errors import FatalError
from asrv.http import RequestLine, Status
from asrv.locks import LockTable
from asrv.logfile import LogFile
from asrv.protected import protected_files
from asrv.recovery import RecoveryReport, recover
from asrv.store import Store
from tests.conftest import Site


@pytest.fixture
def opened(site: Site) -> Iterator[tuple[Store, LogFile, int]]:
    root_fd = os.open(site.root, os.O_RDONLY | os.O_DIRECTORY)
    sink_fd = os.open(os.devnull, os.O_WRONLY)
    log_file = LogFile.open(Config(root=site.root, log=str(site.log)))
    log = AuditLog(log_file.fd, sync_data=True, dir_fd=root_fd, base_offset=log_file.size_now())
    store = Store(
        root_fd,
        log,
        LockTable(),
        sync_data=True,
        sink_fd=sink_fd,
        protected=protected_files(site.root, log_file.identity, []),
        log_tag=log_file.tag,
    )
    yield store, log_file, root_fd
    log_file.close()
    os.close(sink_fd)
    os.close(root_fd)


def temp_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".asrv"))


def test_a_put_whose_upload_cannot_be_renamed_is_a_500_and_changes_nothing(
    site: Site, opened: tuple[Store, LogFile, int]
) -> None:
    store, _, _ = opened
    (site.root / "a").write_bytes(b"old")
    upload = store.new_upload()
    store.write_upload(upload, b"new")
    os.unlink(upload.name, dir_fd=opened[2])  # gone: the rename to its intent name fails
    result = store.put(RequestLine("PUT", "/a", "HTTP/1.1"), "1", upload)
    store.log.sync(result.seq)
    assert result.status is Status.INTERNAL_ERROR
    assert (site.root / "a").read_bytes() == b"old"
    assert site.log_lines() == ["PUT,/a,500,1"]
    assert temp_names(site.root) == []


def test_a_logged_put_that_cannot_be_installed_stops_and_recovery_finishes_it(
    site: Site, opened: tuple[Store, LogFile, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, log_file, root_fd = opened
    upload = store.new_upload()
    store.write_upload(upload, b"logged content")
    real_rename = os.rename

    def rename(src: str, dst: str, **kwargs: Any) -> None:
        if src.startswith(".asrv~"):  # the final rename, from the intent name into place
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(FatalError, match="cannot install logged PUT /a"):
        store.put(RequestLine("PUT", "/a", "HTTP/1.1"), "1", upload)
    monkeypatch.undo()
    # The log stopped before the file's lock was released: nothing later is logged against
    # content the log does not describe.
    with pytest.raises(LogFailure, match="cannot install"):
        store.delete(RequestLine("DELETE", "/a", "HTTP/1.1"), "2")
    # Write-ahead: the line is durable, and its intent file is there for recovery.
    assert site.log_lines() == ["PUT,/a,201,1"]
    assert not (site.root / "a").exists()
    assert len(temp_names(site.root)) == 1
    assert recover(root_fd, log_file) == RecoveryReport(redone=1)
    assert (site.root / "a").read_bytes() == b"logged content"
    assert temp_names(site.root) == []


def test_a_logged_delete_that_cannot_unlink_stops_and_recovery_finishes_it(
    site: Site, opened: tuple[Store, LogFile, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, log_file, root_fd = opened
    (site.root / "a").write_bytes(b"doomed")
    real_unlink = os.unlink

    def unlink(path: str, **kwargs: Any) -> None:
        if path == "a":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_unlink(path, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(FatalError, match="cannot finish logged DELETE /a"):
        store.delete(RequestLine("DELETE", "/a", "HTTP/1.1"), "1")
    monkeypatch.undo()
    with pytest.raises(LogFailure):
        store.get(RequestLine("GET", "/a", "HTTP/1.1"), "2")
    assert site.log_lines() == ["DELETE,/a,200,1"]
    assert (site.root / "a").read_bytes() == b"doomed"  # logged, not yet in effect
    assert recover(root_fd, log_file) == RecoveryReport(redone=1)
    assert sorted(p.name for p in site.root.iterdir()) == []

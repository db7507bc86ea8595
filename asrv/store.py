"""The file work of a request: what runs on a worker thread, under the URI's lock.

Each public method is one executor job. The *critical step* of a request (decide its status,
append its audit line, make its effect) happens inside the URI's lock, so for every file
the order of log lines is the order of effects. Everything slow that does not need the lock
(writing and fsyncing an upload, reading a large file) happens outside it.

Files are only ever reached by name relative to the root's directory descriptor with
O_NOFOLLOW: no path walking, no symlinks followed. Uploads go to a temp file whose name
contains "_" and which no URI can spell; a PUT commits by renaming it, first to an intent
name that carries its log line's end offset and the log's tag (".asrv~TAG~OFFSET~NAME", so
recovery can tell whether the line made it to disk, and in which log), then over the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass

from asrv.auditlog import AuditLog
from asrv.errors import FatalError
from asrv.http import RequestLine, Status
from asrv.locks import LockTable

SMALL_FILE = 64 * 1024
"""Files up to this size are read whole inside the GET's critical step."""

WARM_SLICE = 1024 * 1024
"""Bytes of a larger file a worker brings into the page cache before the loop sends them."""

UPLOAD_PREFIX = ".asrv_upload_"
COMMIT_PREFIX = ".asrv~"

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_UPLOAD_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors that mean "this name is not a file you may have", not "the server failed".
_FORBIDDEN_ERRNOS = {errno.ELOOP, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENXIO}

FileIdentity = tuple[int, int]
"""(st_dev, st_ino) of a file the server must never serve or replace (its audit log)."""


@dataclass(slots=True)
class GetResult:
    """A GET's outcome: its status and log position, and what to send.

    For a 200, either `body` holds the whole file, or `fd` is open on the snapshot the
    log line refers to and `size` bytes are to be streamed from it.
    """

    status: Status
    seq: int
    body: bytes
    fd: int | None = None
    size: int = 0


@dataclass(frozen=True, slots=True)
class PutResult:
    status: Status
    seq: int


@dataclass(slots=True)
class Upload:
    """A PUT body being written to a temp file in the root."""

    name: str
    fd: int
    size: int = 0


def log_entry(line: RequestLine, status: Status, request_id: str) -> bytes:
    """The audit-log line of one request."""
    return f"{line.method},{line.uri},{int(status)},{request_id}\n".encode("ascii")


def commit_name(log_tag: str, end_offset: int, filename: str) -> str:
    return f"{COMMIT_PREFIX}{log_tag}~{end_offset}~{filename}"


class Store:
    def __init__(
        self,
        root_fd: int,
        log: AuditLog,
        locks: LockTable,
        *,
        sync_data: bool,
        sink_fd: int,
        protected: FileIdentity | None = None,
        log_tag: str = "-",
    ) -> None:
        """`sink_fd` is open for writing on /dev/null: `warm` reads files into it.
        `log_tag` names the log in intent names (`LogFile.tag`)."""
        self._root = root_fd
        self._log_tag = log_tag
        self._sink = sink_fd
        self.log = log
        self._locks = locks
        self._sync_data = sync_data
        self._protected = protected

    def record(self, line: RequestLine, status: Status, request_id: str) -> int:
        """Log a request that does no file work (a 400, 501 or 505); returns its seq."""
        return self.log.append(log_entry(line, status, request_id))

    def get(self, line: RequestLine, request_id: str) -> GetResult:
        with self._locks.read(line.filename):
            result = self._open_for_get(line.filename)
            try:
                result.seq = self.log.append(log_entry(line, result.status, request_id))
            except BaseException:
                if result.fd is not None:
                    os.close(result.fd)
                raise
        return result

    def warm(self, fd: int, offset: int, count: int) -> None:
        """Bring `count` bytes of `fd` from `offset` into the page cache, waiting for the
        disk if need be, so that the loop can sendfile them without ever waiting for it.

        sendfile(2) into /dev/null reads the pages without copying them to user space.
        Failing is harmless: the sender meets the same error (or the shrunk file) itself.
        """
        end = offset + count
        with contextlib.suppress(OSError):
            while offset < end:
                done = os.sendfile(self._sink, fd, offset, end - offset)
                if not done:
                    return
                offset += done

    def new_upload(self) -> Upload:
        name = f"{UPLOAD_PREFIX}{secrets.token_hex(8)}"
        return Upload(name, os.open(name, _UPLOAD_FLAGS, 0o666, dir_fd=self._root))

    def write_upload(self, upload: Upload, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(upload.fd, view, upload.size)
            upload.size += written
            view = view[written:]

    def abandon(self, upload: Upload) -> None:
        """Remove an upload that will not be committed (cut short, or failed)."""
        self._close_upload(upload)
        with contextlib.suppress(OSError):
            os.unlink(upload.name, dir_fd=self._root)

    def put_body(self, line: RequestLine, request_id: str, body: bytes) -> PutResult:
        """A whole PUT in one job: for bodies that arrived in full already."""
        try:
            upload = self.new_upload()
        except OSError:
            return self._failed_put(line, request_id)
        try:
            self.write_upload(upload, body)
        except OSError:
            self.abandon(upload)
            return self._failed_put(line, request_id)
        return self.put(line, request_id, upload)

    def put(self, line: RequestLine, request_id: str, upload: Upload) -> PutResult:
        """Commit a fully written upload: the PUT's critical step, write-ahead.

        Returns once the PUT's line is durable and (for 200/201) its content is in place.
        """
        try:
            if self._sync_data:
                os.fdatasync(upload.fd)
        except OSError:
            self.abandon(upload)
            return self._failed_put(line, request_id)
        self._close_upload(upload)
        try:
            with self._locks.write(line.filename):
                status = self._status_for_put(line.filename)
                if status in (Status.OK, Status.CREATED):
                    status, seq = self._install(line, request_id, status, upload.name)
                else:
                    seq = self.log.append(log_entry(line, status, request_id))
        except FatalError:
            # The log failed before the upload was renamed for its line (after that rename
            # this unlink finds nothing, and recovery settles the committed temp).
            with contextlib.suppress(OSError):
                os.unlink(upload.name, dir_fd=self._root)
            raise
        if status not in (Status.OK, Status.CREATED):
            with contextlib.suppress(OSError):
                os.unlink(upload.name, dir_fd=self._root)
        return PutResult(status, seq)

    def _install(
        self, line: RequestLine, request_id: str, status: Status, staged: str
    ) -> tuple[Status, int]:
        """Under the write lock: log the PUT write-ahead, then swap its content in."""
        reservation = self.log.reserve(log_entry(line, status, request_id))
        committed = commit_name(self._log_tag, reservation.end_offset, line.filename)
        try:
            os.rename(staged, committed, src_dir_fd=self._root, dst_dir_fd=self._root)
        except OSError:
            failed = log_entry(line, Status.INTERNAL_ERROR, request_id)
            self.log.fill(reservation, failed, dir_sync=False)
            return Status.INTERNAL_ERROR, reservation.seq
        self.log.fill(reservation, log_entry(line, status, request_id), dir_sync=True)
        # Write-ahead: the line, and the renamed temp it names, are durable before the new
        # content takes the target's place.
        self.log.sync(reservation.seq)
        try:
            os.rename(committed, line.filename, src_dir_fd=self._root, dst_dir_fd=self._root)
        except OSError as error:
            # The log already says this PUT happened: only recovery can make the files
            # agree with it again, so stop rather than answer against the log.
            raise FatalError(f"cannot install logged PUT {line.uri}: {error}") from error
        return status, reservation.seq

    @staticmethod
    def _close_upload(upload: Upload) -> None:
        # Forget the descriptor before closing it: even a failed close releases it, and
        # closing the same number twice could close another thread's file.
        fd, upload.fd = upload.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _failed_put(self, line: RequestLine, request_id: str) -> PutResult:
        """A PUT whose upload failed (ENOSPC, EIO): 500, nothing changed."""
        return PutResult(
            Status.INTERNAL_ERROR, self.record(line, Status.INTERNAL_ERROR, request_id)
        )

    def _open_for_get(self, filename: str) -> GetResult:
        try:
            fd = os.open(filename, _READ_FLAGS, dir_fd=self._root)
        except FileNotFoundError:
            return GetResult(Status.NOT_FOUND, 0, Status.NOT_FOUND.body)
        except OSError as error:
            return self._error_result(error)
        try:
            info = os.fstat(fd)
            if not self._may_serve(info):
                os.close(fd)
                return GetResult(Status.FORBIDDEN, 0, Status.FORBIDDEN.body)
            if info.st_size > SMALL_FILE:
                return GetResult(Status.OK, 0, b"", fd, info.st_size)
            body = _read_whole(fd, info.st_size)
        except OSError as error:
            os.close(fd)
            return self._error_result(error)
        os.close(fd)
        return GetResult(Status.OK, 0, body)

    def _status_for_put(self, filename: str) -> Status:
        try:
            info = os.stat(filename, dir_fd=self._root, follow_symlinks=False)
        except FileNotFoundError:
            return Status.CREATED
        except OSError as error:
            return Status.FORBIDDEN if error.errno in _FORBIDDEN_ERRNOS else Status.INTERNAL_ERROR
        return Status.OK if self._may_serve(info) else Status.FORBIDDEN

    def _may_serve(self, info: os.stat_result) -> bool:
        """A regular file that is not the audit log."""
        return stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) != self._protected

    @staticmethod
    def _error_result(error: OSError) -> GetResult:
        status = Status.FORBIDDEN if error.errno in _FORBIDDEN_ERRNOS else Status.INTERNAL_ERROR
        return GetResult(status, 0, status.body)


def _read_whole(fd: int, size: int) -> bytes:
    """Read up to `size` bytes from the start of `fd` (less if the file shrank meanwhile)."""
    parts: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)

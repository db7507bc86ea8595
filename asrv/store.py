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
A DELETE is write-ahead the same way: it links the file to an intent name of its own
(".asrv-deleted~TAG~OFFSET~NAME"), makes its line durable, and only then unlinks the name.

Each version a PUT writes is stamped with its ETag (`etags`) before it takes the target's
place. HEAD, ranges and conditional requests read it back; a plain GET never pays for it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass

from asrv.auditlog import AuditLog
from asrv.conditions import Conditions, ReadOutcome, Span, decide_read, write_allowed
from asrv.etags import EtagStamper, current_etag
from asrv.filesystem import write_back
from asrv.http import RequestLine, Status
from asrv.locks import LockTable
from asrv.protected import Protected

SMALL_FILE = 64 * 1024
"""Files up to this size are read whole inside the GET's critical step."""

WARM_SLICE = 1024 * 1024
"""Bytes of a larger file a worker brings into the page cache before the loop sends them."""

UPLOAD_PREFIX = ".asrv_upload_"
COMMIT_PREFIX = ".asrv~"
DELETE_PREFIX = ".asrv-deleted~"

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_UPLOAD_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# link(2) errors of a filesystem that has no hard links (or no more for this file).
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}
# Errors that mean "this name is not a file you may have", not "the server failed".
_FORBIDDEN_ERRNOS = {errno.ELOOP, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENXIO}


@dataclass(slots=True)
class GetResult:
    """A GET's or HEAD's outcome: its status and log position, and what to send.

    Either `body` holds what to send (the file, its range, or a fixed body), or `fd` is
    open on the snapshot the log line refers to and `count` bytes from `offset` are to be
    streamed from it. `etag` is the version's when the request needs it, `file_size` the
    whole file's (a HEAD's Content-Length, a 416's Content-Range), `span` a 206's range.
    """

    status: Status
    seq: int
    body: bytes
    fd: int | None = None
    offset: int = 0
    count: int = 0
    etag: str | None = None
    file_size: int = 0
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A PUT's or DELETE's outcome. `etag`, for a conditional request, is the current
    version's: the one a PUT wrote, or the one that failed a 412."""

    status: Status
    seq: int
    etag: str | None = None


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


def delete_name(log_tag: str, end_offset: int, filename: str) -> str:
    """The second name a DELETE gives its file until the DELETE is over."""
    return f"{DELETE_PREFIX}{log_tag}~{end_offset}~{filename}"


class Store:
    def __init__(
        self,
        root_fd: int,
        log: AuditLog,
        locks: LockTable,
        *,
        sync_data: bool,
        sink_fd: int,
        protected: Protected | None = None,
        log_tag: str = "-",
        stamper: EtagStamper | None = None,
        metadata_in_order: bool = False,
        committed_by_log: bool = False,
    ) -> None:
        """`sink_fd` is open for writing on /dev/null: `warm` reads files into it.
        `log_tag` names the log in intent names (`LogFile.tag`); `stamper` gives new
        versions their ETags. `metadata_in_order`: the root's filesystem journals metadata
        in order (`filesystem`), so syncing the root also makes earlier stamps and unlinks
        durable; otherwise the store has them synced explicitly. `committed_by_log`: the log
        shares that journal, so the log's commit also makes an upload's written-back data
        durable (`filesystem.write_back`), and it needs no sync of its own."""
        self._root = root_fd
        self._metadata_in_order = metadata_in_order
        self._settle_data = write_back if committed_by_log else os.fdatasync
        self._log_tag = log_tag
        self._stamper = stamper or EtagStamper.for_run()
        self._sink = sink_fd
        self.log = log
        self._locks = locks
        self._sync_data = sync_data
        self._protected = protected or Protected()

    @property
    def protected(self) -> Protected:
        """The files refused now."""
        return self._protected

    def protect(self, protected: Protected) -> Protected:
        """From now on, refuse these files (403); returns the set this one replaces. One
        assignment: each request reads the set once, as a whole."""
        replaced, self._protected = self._protected, protected
        return replaced

    def record(self, line: RequestLine, status: Status, request_id: str) -> int:
        """Log a request that does no file work (a 400, 501 or 505); returns its seq."""
        return self.log.append(log_entry(line, status, request_id))

    def get(
        self,
        line: RequestLine,
        request_id: str,
        conditions: Conditions | None = None,
        head: bool = False,
    ) -> GetResult:
        """A GET's (or, with `head`, a HEAD's) critical step under the read lock: open the
        file, decide its conditions, log the outcome."""
        with self._locks.read(line.filename):
            result = self._open_for_get(line.filename, conditions, head)
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

    def put_body(
        self,
        line: RequestLine,
        request_id: str,
        body: bytes,
        conditions: Conditions | None = None,
    ) -> WriteResult:
        """A whole PUT in one job: for bodies that arrived in full already."""
        try:
            upload = self.new_upload()
        except OSError:
            return self._failed_write(line, request_id)
        try:
            self.write_upload(upload, body)
        except OSError:
            self.abandon(upload)
            return self._failed_write(line, request_id)
        return self.put(line, request_id, upload, conditions)

    def put(
        self,
        line: RequestLine,
        request_id: str,
        upload: Upload,
        conditions: Conditions | None = None,
    ) -> WriteResult:
        """Commit a fully written upload: the PUT's critical step, write-ahead.

        Returns once the PUT's line is durable and (for 200/201) its content is in place.
        """
        conditions = _preconditions(conditions)
        try:
            if self._sync_data:
                # Before its line can be durable: fdatasync, or, where the log's commit
                # will cover it, only written back.
                self._settle_data(upload.fd)
        except OSError:
            self.abandon(upload)
            return self._failed_write(line, request_id)
        installed = False
        try:
            with self._locks.write(line.filename):
                status, etag = self._current_for_write(line.filename, conditions)
                if status in (Status.OK, Status.CREATED):
                    status, seq, etag = self._install(line, request_id, status, upload)
                    installed = status is not Status.INTERNAL_ERROR
                else:
                    seq = self.log.append(log_entry(line, status, request_id))
        finally:
            # The upload's own name is gone once it is renamed for its line (recovery
            # settles that name if the log failed meanwhile); otherwise remove it.
            if installed:
                self._close_upload(upload)
            else:
                self.abandon(upload)
        # Only a conditional PUT's response names the version (SPEC §4.1).
        return WriteResult(status, seq, etag if conditions is not None else None)

    def delete(
        self, line: RequestLine, request_id: str, conditions: Conditions | None = None
    ) -> WriteResult:
        """A DELETE's critical step, write-ahead: the line is durable before the name
        disappears. The file first gets a second name, its deletion intent, which tells
        recovery that the DELETE may have happened; then the line is made durable, then the
        name goes, all under the write lock."""
        conditions = _preconditions(conditions)
        filename = line.filename
        with self._locks.write(filename):
            status, etag = self._current_for_write(filename, conditions, creates=False)
            if status is not Status.OK:
                seq = self.log.append(log_entry(line, status, request_id))
                return WriteResult(status, seq, etag)
            reservation = self.log.reserve(log_entry(line, status, request_id))
            intent = delete_name(self._log_tag, reservation.end_offset, filename)
            try:
                moved = self._mark_for_deletion(filename, intent)
            except OSError:
                failed = log_entry(line, Status.INTERNAL_ERROR, request_id)
                self.log.fill(reservation, failed, dir_sync=False)
                return WriteResult(Status.INTERNAL_ERROR, reservation.seq)
            # The leader fsyncs the root before writing this line: the intent is durable
            # before the line, so recovery can finish a logged DELETE.
            self.log.fill(reservation, log_entry(line, status, request_id), dir_sync=True)
            self.log.sync(reservation.seq)
            if not moved:
                try:
                    os.unlink(filename, dir_fd=self._root)
                except OSError as error:
                    # Logged, not in effect: only recovery can make the files agree again
                    # (as for a PUT that cannot be installed).
                    raise self.log.fail(
                        f"cannot finish logged DELETE {line.uri}: {error}"
                    ) from error
        # Outside the lock, as nothing names the file any more: the last unlink frees its
        # blocks, which can take long for a large file. The name's unlink must be durable
        # before the intent's (a journal that keeps metadata in order sees to it), or a
        # power cut could bring the name back with no intent left to tell recovery to
        # finish the DELETE. If either step fails, the intent stays, and the next start
        # removes it.
        with contextlib.suppress(OSError):
            if self._sync_data and not self._metadata_in_order:
                os.fsync(self._root)
            os.unlink(intent, dir_fd=self._root)
        return WriteResult(status, reservation.seq)

    def _mark_for_deletion(self, filename: str, intent: str) -> bool:
        """Give the file its deletion intent as a second name; True if, where the
        filesystem has no hard links, the file had to move to it instead (its name is
        then gone already, though only under the lock, and recovery gives it back if the
        line never reached the log)."""
        try:
            os.link(
                filename,
                intent,
                src_dir_fd=self._root,
                dst_dir_fd=self._root,
                follow_symlinks=False,
            )
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise
            os.rename(filename, intent, src_dir_fd=self._root, dst_dir_fd=self._root)
            return True
        return False

    def _install(
        self, line: RequestLine, request_id: str, status: Status, upload: Upload
    ) -> tuple[Status, int, str | None]:
        """Under the write lock: stamp the new version with its ETag, log the PUT
        write-ahead, then swap its content in."""
        reservation = self.log.reserve(log_entry(line, status, request_id))
        committed = commit_name(self._log_tag, reservation.end_offset, line.filename)
        try:
            # Stamped before it is renamed for its line: recovery installs it as it is.
            etag = self._stamper.stamp(upload.fd, reservation.end_offset)
            os.rename(upload.name, committed, src_dir_fd=self._root, dst_dir_fd=self._root)
        except OSError:
            failed = log_entry(line, Status.INTERNAL_ERROR, request_id)
            self.log.fill(reservation, failed, dir_sync=False)
            return Status.INTERNAL_ERROR, reservation.seq, None
        filled = log_entry(line, status, request_id)
        # The stamp is metadata of the new version, which fdatasync did not cover.
        stamped = None if self._metadata_in_order else upload.fd
        self.log.fill(reservation, filled, dir_sync=True, sync_fd=stamped)
        # Write-ahead: the line, and the renamed and stamped temp it names, are durable
        # before the new content takes the target's place.
        self.log.sync(reservation.seq)
        try:
            os.rename(committed, line.filename, src_dir_fd=self._root, dst_dir_fd=self._root)
        except OSError as error:
            # The log already says this PUT happened: only recovery can make the files
            # agree with it again. Stop the log while still holding the lock, so that no
            # later request on this file is logged against the wrong content.
            raise self.log.fail(f"cannot install logged PUT {line.uri}: {error}") from error
        return status, reservation.seq, etag

    @staticmethod
    def _close_upload(upload: Upload) -> None:
        # Forget the descriptor before closing it: even a failed close releases it, and
        # closing the same number twice could close another thread's file.
        fd, upload.fd = upload.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _failed_write(self, line: RequestLine, request_id: str) -> WriteResult:
        """A PUT whose upload failed (ENOSPC, EIO): 500, nothing changed."""
        return WriteResult(
            Status.INTERNAL_ERROR, self.record(line, Status.INTERNAL_ERROR, request_id)
        )

    def _open_for_get(self, filename: str, conditions: Conditions | None, head: bool) -> GetResult:
        protected = self._protected
        if filename in protected.names:  # also while the secret is absent, as for a PUT
            return GetResult(Status.FORBIDDEN, 0, Status.FORBIDDEN.body)
        try:
            fd = os.open(filename, _READ_FLAGS, dir_fd=self._root)
        except FileNotFoundError:
            return GetResult(Status.NOT_FOUND, 0, Status.NOT_FOUND.body)
        except OSError as error:
            return _error_result(error)
        try:
            info = os.fstat(fd)
            if not _may_serve(protected, filename, info):
                os.close(fd)
                return GetResult(Status.FORBIDDEN, 0, Status.FORBIDDEN.body)
            if conditions is None and not head:
                result = GetResult(Status.OK, 0, b"", count=info.st_size)  # a plain GET
            else:
                result = _decide_get(fd, info, conditions, head)
            if result.count > SMALL_FILE:
                result.fd = fd  # streamed from this snapshot, after the lock
                return result
            if result.count:
                result.body = _read_span(fd, result.offset, result.count)
        except OSError as error:
            os.close(fd)
            return _error_result(error)
        os.close(fd)
        return result

    def _current_for_write(
        self, filename: str, conditions: Conditions | None, *, creates: bool = True
    ) -> tuple[Status, str | None]:
        """Under the write lock: what a PUT (`creates`) or DELETE of `filename` gets before
        its effect: 201 (absent, for a PUT) or 404 (for a DELETE), 200 (present), 403, 500,
        or 412 when its conditions fail; and the current ETag when the conditions needed it.
        Preconditions apply only where the plain request would succeed (RFC 9110 §13.2.1)."""
        protected = self._protected
        if filename in protected.names:
            return Status.FORBIDDEN, None
        try:
            info = os.stat(filename, dir_fd=self._root, follow_symlinks=False)
        except FileNotFoundError:
            if not creates:
                return Status.NOT_FOUND, None
            if write_allowed(conditions, None):
                return Status.CREATED, None
            return Status.PRECONDITION_FAILED, None
        except OSError as error:
            return _error_status(error), None
        if not _may_serve(protected, filename, info):
            return Status.FORBIDDEN, None
        if conditions is None:
            return Status.OK, None
        try:
            etag = self._etag_of(filename, info)
        except OSError as error:
            return _error_status(error), None
        if not write_allowed(conditions, etag):
            return Status.PRECONDITION_FAILED, etag
        return Status.OK, etag

    def _etag_of(self, filename: str, info: os.stat_result) -> str:
        """The current ETag of a regular file found by `stat` under the write lock."""
        fd = os.open(filename, _READ_FLAGS, dir_fd=self._root)
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise OSError(errno.ESTALE, "replaced behind the server's back")
            return current_etag(fd, opened)
        finally:
            os.close(fd)


def _may_serve(protected: Protected, filename: str, info: os.stat_result) -> bool:
    """A regular file that is neither the audit log nor a secret of the server's."""
    return stat.S_ISREG(info.st_mode) and not protected.covers(filename, info)


def _decide_get(
    fd: int, info: os.stat_result, conditions: Conditions | None, head: bool
) -> GetResult:
    """What a HEAD, or a GET with conditions or a range, of an existing file gets. The bytes
    to send are `count` from `offset` (none but for a GET's 200 or 206)."""
    etag = current_etag(fd, info)
    size = info.st_size
    decision = decide_read(conditions, etag, size, ranged=not head)
    outcome = decision.outcome
    if outcome is ReadOutcome.PRECONDITION_FAILED:
        status = Status.PRECONDITION_FAILED
        return GetResult(status, 0, status.body, etag=etag, file_size=size)
    if outcome is ReadOutcome.NOT_MODIFIED:
        return GetResult(Status.NOT_MODIFIED, 0, b"", etag=etag, file_size=size)
    if outcome is ReadOutcome.UNSATISFIABLE:
        status = Status.RANGE_NOT_SATISFIABLE
        return GetResult(status, 0, status.body, etag=etag, file_size=size)
    if head:
        return GetResult(Status.OK, 0, b"", etag=etag, file_size=size)
    span = decision.span
    if span is None:
        return GetResult(Status.OK, 0, b"", count=size, etag=etag, file_size=size)
    return GetResult(
        Status.PARTIAL_CONTENT,
        0,
        b"",
        offset=span.first,
        count=span.length,
        etag=etag,
        file_size=size,
        span=span,
    )


def _preconditions(conditions: Conditions | None) -> Conditions | None:
    """A write's conditions, if it has any: a Range or If-Range on a PUT or DELETE means
    nothing (RFC 9110 §14.2), and such a write is answered as a plain one."""
    return conditions if conditions is not None and conditions.preconditions else None


def _error_status(error: OSError) -> Status:
    return Status.FORBIDDEN if error.errno in _FORBIDDEN_ERRNOS else Status.INTERNAL_ERROR


def _error_result(error: OSError) -> GetResult:
    status = _error_status(error)
    return GetResult(status, 0, status.body)


def _read_span(fd: int, offset: int, count: int) -> bytes:
    """Read up to `count` bytes of `fd` from `offset` (less if the file shrank meanwhile)."""
    parts: list[bytes] = []
    end = offset + count
    while offset < end:
        chunk = os.pread(fd, end - offset, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)

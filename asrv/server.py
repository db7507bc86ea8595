"""`Server`: the dispatcher. Binds, owns the pool, the log and the locks, accepts connections.

Start-up order matters for the thread count: the N workers are started before the socket
listens, and the socket is bound here (`socket.create_server` on a numeric address, passed
as `sock=`), never by the loop, because uvloop resolving a host would start libuv's own
thread pool. Nothing here uses the loop's default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TypedDict

from asrv.access import Access, TokenError, exposure_warning
from asrv.auditlog import AuditLog
from asrv.budget import ReadBudget
from asrv.channel import Channel
from asrv.config import Config
from asrv.connection import Connection, Services
from asrv.errors import ExitStatus, FatalError, StartupError
from asrv.etags import EtagStamper
from asrv.filesystem import journals_metadata_in_order, shares_ordered_journal
from asrv.locks import LockTable
from asrv.logfile import LogFile
from asrv.pool import WorkerPool
from asrv.protected import FileIdentity, Protected, protected_files
from asrv.recovery import RecoveryReport, recover
from asrv.store import Store
from asrv.tls import server_context

BACKLOG = 1024


class Server:
    """An asrv server inside the running event loop.

    ``async with Server(config) as server`` binds and starts serving in the background;
    leaving the block (or ``await server.close()``) stops accepting, finishes requests in
    flight (bounded by the timeout), makes the log durable and joins the workers.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._resources = contextlib.ExitStack()
        self._pool = WorkerPool(config.threads)
        self._log: AuditLog | None = None
        self._log_fd = -1
        self._services: Services | None = None
        self._listener: asyncio.Server | None = None
        # The listening socket on a descriptor of our own: when the listener closes, this
        # keeps the socket, and the connections in its backlog, for shutdown to accept.
        self._backlog: socket.socket | None = None
        self._admitting = True  # false once shutdown has served every connection it owes
        self._budget = ReadBudget()
        self._access = Access()
        self._store: Store | None = None
        self._log_identity: FileIdentity | None = None
        self._tls: _TlsOptions = {}
        self._connections: dict[Connection, asyncio.Task[None]] = {}
        self._stopped = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._started = False
        self._failure: FatalError | None = None
        self._port = 0
        self.recovery = RecoveryReport()
        """What start-up recovery found and settled (false when there was nothing)."""

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when the config asked for port 0)."""
        return self._port

    @property
    def failure(self) -> FatalError | None:
        """Why the server stopped serving on its own, if it did."""
        return self._failure

    def access_warnings(self) -> list[str]:
        """What the operator should hear about the token files and the TLS key (say, open
        to other users)."""
        warnings = self._access.warnings()
        key = self.config.tls_key
        if key is not None and (warning := exposure_warning(key, "TLS key")) is not None:
            warnings.append(warning)
        return warnings

    def reload_tokens(self) -> list[str]:
        """Re-read the token files (the command line does on SIGHUP) without touching a
        connection: each request is judged by the tokens in force when the server takes it
        up.
        Returns lines for the operator: problems (a file that cannot be read keeps its
        tokens) and warnings."""
        problems = self._access.reload()
        if self._store is not None:
            # The files may be new ones. The old set's pins go once it is replaced: a
            # request still comparing against it only reads its numbers.
            self._store.protect(self._protected_files()).close()
        return problems

    @property
    def audit_log(self) -> AuditLog:
        assert self._log is not None, "server not started"
        return self._log

    def _protected_files(self) -> Protected:
        config = self.config
        token_files = [
            source
            for source in (config.write_tokens, config.read_tokens)
            if isinstance(source, Path)
        ]
        secrets = [*token_files, config.tls_cert, config.tls_key]
        previous = None if self._store is None else self._store.protected
        return protected_files(config.root, self._log_identity, secrets, previous)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind, open the root and the log, recover from a crash, start the workers, listen.

        A server starts once: a second call, or one after `close()`, raises `RuntimeError`.
        """
        if self._started or self._closing is not None:
            raise RuntimeError("an asrv.Server starts once; make a new one to serve again")
        self._started = True
        try:
            self._access = _access(self.config)
            self._tls = _tls_options(self.config)
            # Bound first, so that a port in use fails before recovery touches the root;
            # listening waits until the workers run.
            sock = _bind(self.config.host, self.config.port)
            self._resources.callback(sock.close)
            self._port = sock.getsockname()[1]
            store = self._store = self._start_resources()
            _listen(sock)
            self._backlog = sock.dup()
            self._resources.callback(self._close_backlog)
            self._services = Services(
                self.config,
                self._pool,
                store,
                self._budget,
                self._access,
                self._fail,
                self._stopped,
            )
            self._listener = await asyncio.get_running_loop().create_server(
                self._new_channel, sock=sock, backlog=BACKLOG, **self._tls
            )
        except BaseException:
            self._resources.close()
            raise

    def _start_resources(self) -> Store:
        config = self.config
        try:
            root_fd = os.open(config.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise StartupError(f"asrv: cannot serve root {config.root}: {error.strerror}") from None
        self._resources.callback(os.close, root_fd)
        try:
            # One server per root: another one's recovery would delete this one's uploads.
            fcntl.flock(root_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StartupError(f"asrv: root {config.root} is served by another asrv") from None

        log_file = LogFile.open(config)
        self._resources.callback(log_file.close)
        self._log_identity = log_file.identity
        try:
            self.recovery = recover(root_fd, log_file)
        except OSError as error:
            raise StartupError(
                f"asrv: cannot recover {config.root}: {error}", ExitStatus.RECOVERY_FAILED
            ) from None
        # A pipe or a terminal cannot be fsync'd: there, lines are only written in order.
        syncs_log = config.fsync and log_file.is_file
        # On one ordered journal, the log's own commit makes the root's changes durable.
        one_commit = syncs_log and shares_ordered_journal(root_fd, log_file.fd)
        log = AuditLog(
            log_file.fd,
            sync_data=syncs_log,
            dir_fd=None if one_commit else root_fd,
            base_offset=log_file.size_now(),
        )
        self._log = log
        self._log_fd = log_file.fd if log_file.is_file else -1
        try:
            sink_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as error:
            raise StartupError(f"asrv: cannot open {os.devnull}: {error.strerror}") from None
        self._resources.callback(os.close, sink_fd)
        store = Store(
            root_fd,
            log,
            LockTable(),
            sync_data=config.fsync,
            sink_fd=sink_fd,
            protected=self._protected_files(),
            log_tag=log_file.tag,
            stamper=EtagStamper.for_log(log_file.inode),
            metadata_in_order=journals_metadata_in_order(root_fd),
            committed_by_log=one_commit,
        )
        # After the workers are joined (callbacks run last first): the secrets' pins go.
        self._resources.callback(lambda: store.protect(Protected()).close())
        try:
            self._pool.start(settle=lambda: log.sync(log.last_seq))
        except RuntimeError as error:
            raise StartupError(f"asrv: cannot start {config.threads} workers: {error}") from None
        self._resources.callback(self._pool.shutdown)
        return store

    async def serve_forever(self) -> None:
        """Wait until the server is closed; raise its `FatalError` if it failed."""
        await self._stopped.wait()
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Stop accepting, finish what is in flight, make the log durable, join workers.

        Raises `FatalError` if the log could not be made durable at the end.
        """
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        await self._accept_backlog()
        # Every connection finishes the requests whose bytes have reached the server, then
        # closes; one with no byte of a request, in its buffer or the kernel's, is idle and
        # closes now, once the end of its last response is sent. What is still running
        # after `timeout` seconds is cut short (and logged as the 400 it became).
        # Connections the loop had accepted but not yet opened may join while this waits:
        # they are waited for too.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout
        while self._connections:
            for connection in list(self._connections):
                if connection.idle:
                    connection.close_idle()
            tasks = list(self._connections.values())
            _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for connection, task in list(self._connections.items()):
                if task in late:
                    connection.abort()  # given up: what it still had to send is dropped
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._admitting = False
        log = self._log
        try:
            # Operations of cancelled connections still run; their lines must be covered.
            await self._pool.drained()
            if log is not None and log.failure is None:
                await self._pool.run(log.sync, log.last_seq)
                if self._log_fd >= 0:
                    # Durable at exit even with --no-fsync.
                    await self._pool.run(os.fsync, self._log_fd)
        except OSError as error:
            raise FatalError(f"audit log: cannot make it durable: {error.strerror}") from None
        finally:
            # Every job has ended, so joining the idle workers takes no time on the loop.
            self._resources.close()
        if self._failure is not None:
            # The log failed while shutting down: this was no clean stop.
            raise self._failure
        if log is not None and log.failure is not None:
            # Failed where nobody was left to report it (its waiter was cancelled).
            raise log.failure

    async def _accept_backlog(self) -> None:
        """Serve the connections still waiting in the listen backlog: their clients
        connected, and may have sent a whole request, before shutdown began."""
        backlog, self._backlog = self._backlog, None
        if backlog is None:
            return
        opening = []
        try:
            # Bounded: connections that keep arriving meanwhile must not hold shutdown up.
            for _ in range(BACKLOG):
                try:
                    accepted, _ = backlog.accept()
                except OSError:  # empty (EAGAIN), or out of descriptors: nothing more to do
                    break
                opening.append(self._open_accepted(accepted))
            # Together: under TLS each waits for its handshake (bounded by the timeout).
            await asyncio.gather(*opening)
        finally:
            backlog.close()

    async def _open_accepted(self, accepted: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self._new_channel, accepted, **self._tls)
        except (OSError, ssl.SSLError, TimeoutError):
            accepted.close()

    def _close_backlog(self) -> None:
        if self._backlog is not None:
            self._backlog.close()
            self._backlog = None

    def _fail(self, failure: FatalError) -> None:
        """Fail-stop: acknowledge nothing more, drop every connection, stop serving."""
        if self._failure is not None:
            return
        self._failure = failure
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections):
            connection.abort()
        self._stopped.set()

    def _new_channel(self) -> Channel:
        return Channel(self.config.timeout, self._on_open, self._budget)

    def _on_open(self, channel: Channel) -> None:
        # Connections opened after shutdown began (from the backlog, or accepted by the
        # loop just before) are still served; only a failed or finished server refuses.
        if self._failure is not None or not self._admitting:
            channel.abort()
            return
        if len(self._connections) >= self.config.max_connections:
            # Over the limit: refuse this one at once rather than let it hold memory.
            channel.close()
            return
        assert self._services is not None
        connection = Connection(self._services, channel)
        task = asyncio.get_running_loop().create_task(connection.serve())
        self._connections[connection] = task

        def forget(task: asyncio.Task[None]) -> None:
            del self._connections[connection]
            if not connection.started:
                # Cancelled before it ran (cut short at shutdown): it closed nothing itself.
                channel.abort()

        task.add_done_callback(forget)


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_start: Callable[[Server], object] | None = None,
) -> None:
    """Serve until `shutdown_trigger()` completes (or forever), then close gracefully.

    `on_start(server)` is called once the server listens (read `server.port` there when the
    config asked for port 0). Raises `StartupError` if the server cannot start, `FatalError`
    if it had to stop, and whatever the trigger raised (after closing gracefully).
    """
    async with Server(config) as server:
        if on_start is not None:
            on_start(server)
        if shutdown_trigger is None:
            await server.serve_forever()
            return
        trigger = asyncio.ensure_future(shutdown_trigger())
        serving = asyncio.ensure_future(server.serve_forever())
        try:
            await asyncio.wait({trigger, serving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            trigger.cancel()
            serving.cancel()
        if serving.done() and not serving.cancelled():
            serving.result()  # a fail-stop: raise its FatalError
        if trigger.done() and not trigger.cancelled():
            trigger.result()  # the trigger failed: raise that, after the graceful close


TLS_SHUTDOWN_LIMIT = 60.0
"""Seconds the loop's TLS shutdown may take at most (flush, close_notify, the client's)."""


class _TlsOptions(TypedDict, total=False):
    """The loop's keyword arguments for accepting TLS connections."""

    ssl: ssl.SSLContext
    ssl_handshake_timeout: float
    ssl_shutdown_timeout: float


def _tls_options(config: Config) -> _TlsOptions:
    """The loop's TLS arguments for accepting connections; none for plain HTTP. A client
    that stalls in the handshake is dropped after `timeout`."""
    context = server_context(config)
    if context is None:
        return {}
    return {
        "ssl": context,
        "ssl_handshake_timeout": config.timeout,
        # The loop's TLS shutdown bounds its whole flush, however steadily the client takes
        # it: a connection ending after a response waits for it itself, bounded by progress
        # (`Channel.close_when_sent`), so this is only the outer limit.
        "ssl_shutdown_timeout": max(config.timeout, TLS_SHUTDOWN_LIMIT),
    }


def _access(config: Config) -> Access:
    try:
        return Access(config.write_tokens, config.read_tokens, read_only=config.read_only)
    except TokenError as error:
        raise StartupError(f"asrv: {error}") from None


def _bind(host: str, port: int) -> socket.socket:
    """Bind (not yet listen) on a numeric address without any name resolution."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # Accepted sockets inherit this: a response's head and small body leave in one
        # segment instead of waiting for the client's delayed ACK (both loops set it too).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OverflowError:
        sock.close()
        raise StartupError("Invalid Port") from None
    except OSError as error:
        sock.close()
        if error.errno in (errno.EADDRINUSE, errno.EACCES):
            raise StartupError("Invalid Port", detail=_why_not(port, error)) from None
        raise StartupError(f"asrv: cannot listen on {host}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def _listen(sock: socket.socket) -> None:
    try:
        sock.listen(BACKLOG)
    except OSError as error:  # another socket took this port between bind and listen
        if error.errno == errno.EADDRINUSE:
            port = sock.getsockname()[1]
            raise StartupError("Invalid Port", detail=_why_not(port, error)) from None
        raise StartupError(f"asrv: cannot listen: {error.strerror}") from None


def _why_not(port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"asrv: port {port} is in use"
    return f"asrv: port {port} needs privileges asrv does not have ({error.strerror})"

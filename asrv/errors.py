"""Errors that end the server, and the exit statuses the command line maps them to."""

import enum


class FatalError(Exception):
    """The server can no longer keep its promises (the log, or files it logged, failed)."""


class ExitStatus(enum.IntEnum):
    """What `python -m asrv` exits with."""

    OK = 0
    """Stopped by SIGTERM or SIGINT after finishing its requests."""
    CANNOT_START = 1
    """A bad or busy port, an address that cannot be bound, or an unusable root."""
    USAGE = 2
    """A malformed command line or option value."""
    FATAL = 3
    """Stopped itself: the audit log could not be written or synced (fail-stop)."""
    LOG_UNUSABLE = 4
    """The audit log cannot be opened for appending."""
    RECOVERY_FAILED = 5
    """Start-up recovery could not settle what a crash left behind."""
    INTERRUPTED = 6
    """A second signal during shutdown: left at once (the state stays recoverable)."""


class StartupError(Exception):
    """The server cannot start; the message is the one line to show the operator, and
    `detail`, when there is one, a second line saying why (`Invalid Port` must stand alone
    on its line: the course's scripts compare it)."""

    def __init__(
        self,
        message: str,
        status: ExitStatus = ExitStatus.CANNOT_START,
        *,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    def lines(self) -> str:
        """What the command line prints."""
        return str(self) if self.detail is None else f"{self}\n{self.detail}"

"""`Config`: every option of the server, with the command line's defaults, validated once."""

from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

STDERR = "-"
"""The `log` value that sends the audit log to standard error."""


class LoopChoice(enum.Enum):
    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


@dataclass(frozen=True, slots=True)
class Config:
    """How one server runs. Invalid values raise `ValueError` with a readable message."""

    port: int = 8080
    """TCP port; 0 picks a free one (read it back from `Server.port`)."""
    threads: int = 4
    """Worker threads: at most this many file operations run at once."""
    log: str = STDERR
    """Audit log path (appended to, created if missing), or "-" for standard error."""
    root: Path = Path(".")
    """Directory whose regular files are served."""
    host: str = "0.0.0.0"
    """Numeric address to bind."""
    timeout: float = 5.0
    """Seconds a connection may go without sending or accepting a byte."""
    keep_alive: bool = False
    """Serve several requests per connection (RFC 9112 persistence)."""
    fsync: bool = True
    """Make audit lines and PUT data durable before each response."""
    loop: LoopChoice = LoopChoice.AUTO
    """Event loop for the command line (an embedding program brings its own loop)."""

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("Invalid Port")
        if not 0 <= self.port <= 65535:
            raise ValueError("Invalid Port")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int):
            raise ValueError("threads must be an integer")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if not (isinstance(self.timeout, int | float) and math.isfinite(self.timeout)):
            raise ValueError("timeout must be a finite number of seconds")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if not self.log:
            raise ValueError("log must be a path or '-'")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"host must be a numeric address, not {self.host!r}") from None
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "loop", LoopChoice(self.loop))

    @property
    def log_is_stderr(self) -> bool:
        return self.log == STDERR

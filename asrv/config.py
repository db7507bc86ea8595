"""`Config`: every option of the server, with the command line's defaults, validated once."""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from asrv.access import Tokens
from asrv.http import COURSE_MAX_HEAD, DEFAULT_MAX_HEAD, Grammar

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
    host: str = "127.0.0.1"
    """Numeric address to bind: this machine only, by default; "0.0.0.0" or "::" serves the
    network."""
    timeout: float = 5.0
    """Seconds a connection may go without sending or accepting a byte."""
    head_timeout: float = 10.0
    """Seconds a request head may take from its first byte to its empty line."""
    min_rate: int = 1024
    """Bytes per second a request body must average once it has taken `timeout` seconds."""
    max_connections: int = 10000
    """Open connections beyond this are closed as soon as they are accepted."""
    max_body: int | None = None
    """Largest Content-Length accepted (413 beyond it); None for no limit."""
    course: bool = False
    """The course's exact behaviour: its header grammar and head limit, one request per
    connection, GET and PUT only. Otherwise connections persist (RFC 9112) and header
    fields follow RFC 9110."""
    max_head: int | None = None
    """Largest request head in bytes; None: 8192, or 2048 with `course`."""
    fsync: bool = True
    """Make audit lines and PUT data durable before each response."""
    loop: LoopChoice = LoopChoice.AUTO
    """Event loop for the command line (an embedding program brings its own loop)."""
    read_only: bool = False
    """PUT and DELETE get 403."""
    write_tokens: Path | Tokens | None = None
    """A file of bearer tokens (or the tokens themselves): PUT and DELETE need one."""
    read_tokens: Path | Tokens | None = None
    """Bearer tokens that GET and HEAD need (a write token reads too)."""
    tls_cert: Path | None = None
    """PEM certificate chain to serve HTTPS with (with `tls_key`)."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""
    ssl_context: ssl.SSLContext | None = None
    """For embedding: a ready server-side SSL context, instead of `tls_cert` and `tls_key`."""

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("Invalid Port")
        if not 0 <= self.port <= 65535:
            raise ValueError("Invalid Port")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int):
            raise ValueError("threads must be an integer")
        if not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be from 1 to {MAX_THREADS}")
        for name in ("timeout", "head_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of seconds")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive, finite number of seconds")
        _require_count("min_rate", self.min_rate, minimum=0)
        _require_count("max_connections", self.max_connections, minimum=1)
        if self.max_body is not None:
            _require_count("max_body", self.max_body, minimum=0)
        if self.max_head is not None:
            _require_count("max_head", self.max_head, minimum=MIN_HEAD, maximum=MAX_HEAD)
        if not self.log:
            raise ValueError("log must be a path or '-'")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"host must be a numeric address, not {self.host!r}") from None
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "loop", LoopChoice(self.loop))
        for name in ("write_tokens", "read_tokens"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, Path(value))
            elif value is not None and not isinstance(value, Tokens):
                # Not a str: a token passed by mistake would end up in the error message
                # saying that no such file exists.
                raise ValueError(f"{name} must be a pathlib.Path or asrv.Tokens")
        for name in ("tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.ssl_context is not None and self.tls_cert is not None:
            raise ValueError("give an ssl_context or tls_cert and tls_key, not both")
        if self.course and (self.write_tokens is not None or self.read_tokens is not None):
            raise ValueError("--course serves no tokens: the course's server has no Authorization")

    @property
    def log_is_stderr(self) -> bool:
        return self.log == STDERR

    @property
    def tls(self) -> bool:
        """Whether the server speaks HTTPS."""
        return self.ssl_context is not None or self.tls_cert is not None

    @property
    def grammar(self) -> Grammar:
        default = COURSE_MAX_HEAD if self.course else DEFAULT_MAX_HEAD
        return Grammar(self.course, default if self.max_head is None else self.max_head)


MAX_THREADS = 1024
"""Most worker threads: beyond this a machine runs out of threads, not of work to give them."""
MIN_HEAD = 128
"""Smallest `max_head`: room for the longest request line the grammar allows."""
MAX_HEAD = 1024 * 1024
"""Largest `max_head`: a head is held in memory whole."""


def _require_count(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}")

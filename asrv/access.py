"""Who may read and write: bearer tokens (RFC 6750) and read-only mode (SPEC §5.4).

With write tokens, PUT and DELETE need `Authorization: Bearer <token>` carrying one of them;
with read tokens, GET and HEAD need one of those or a write token. A request without a
token it needs gets 401 (`WWW-Authenticate: Bearer`) before its body is read; with
`read_only`, a PUT or DELETE that passed gets 403 instead.

Tokens come from files, one a line (blank lines and lines starting with `#` are skipped), or,
when embedding, straight from the application (`Tokens`). They are kept only as SHA-256
digests, compared in constant time against every known digest, and never put in a message:
a problem with a file names its line number, not its text. `reload` re-reads the files
(SIGHUP); a file that cannot be read then keeps the tokens it had.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
"""RFC 6750 §2.1 b64token: what a Bearer credential may be."""
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9._~+/-]+=*)")


class TokenError(Exception):
    """A token file cannot be used; the message names the file, never a token."""


@dataclass(frozen=True, repr=False)
class Tokens:
    """Tokens an embedding application passes directly, instead of a file. Only their
    digests are kept, and they never show in a repr (a Config is printed now and then)."""

    digests: frozenset[bytes]

    def __init__(self, values: Iterable[str]) -> None:
        if isinstance(values, str | bytes):
            # A lone string would be taken a character at a time: one-letter tokens.
            raise TypeError("Tokens takes a collection of tokens, not one string")
        digests = set()
        for token in values:
            if not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
                raise ValueError("a bearer token is a non-empty RFC 6750 b64token")
            digests.add(_digest(token))
        object.__setattr__(self, "digests", frozenset(digests))

    def __repr__(self) -> str:
        return f"Tokens(<{len(self.digests)} tokens>)"


TokenSource = Path | Tokens
"""Where a set of tokens comes from: a file (re-read on `reload`), or the application."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


MAX_TOKEN_FILE = 1 << 20
"""Largest token file read: a token file is a few lines, and it is read on the loop."""


def read_token_file(path: Path) -> frozenset[bytes]:
    """The digests of the tokens in a file; TokenError naming the file if it cannot be used."""
    try:
        text = _read_small_file(path).decode("ascii")
    except (OSError, UnicodeDecodeError) as error:
        why = error.strerror if isinstance(error, OSError) else "not ASCII text"
        raise TokenError(f"cannot read token file {path}: {why}") from None
    digests = set()
    # Lines end at LF (CRLF too: strip() takes the CR); not at the form feeds and other
    # separators of str.splitlines(), which would make one line two tokens.
    for number, line in enumerate(text.split("\n"), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if _TOKEN.fullmatch(token) is None:
            raise TokenError(f"token file {path}, line {number}: not a bearer token")
        digests.add(_digest(token))
    return frozenset(digests)


def _read_small_file(path: Path) -> bytes:
    """A regular file's bytes, without ever blocking on a FIFO or reading a device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > MAX_TOKEN_FILE:
            raise OSError(errno.EFBIG, f"larger than {MAX_TOKEN_FILE} bytes")
        return os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)


def exposure_warning(path: Path, what: str = "token file") -> str | None:
    """A warning when a secret file (a token file, the TLS key) may be read or changed by
    other users."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_IMODE(mode) & 0o077:
        return (
            f"asrv: warning: {what} {path} is open to other users "
            f"(mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    return None


def _load(source: TokenSource | None) -> frozenset[bytes] | None:
    if source is None:
        return None
    if isinstance(source, Tokens):
        return source.digests
    return read_token_file(source)


class _Digests(NamedTuple):
    """The tokens in force, swapped as one whenever they change."""

    writers: frozenset[bytes] | None
    readers: frozenset[bytes] | None
    may_read: frozenset[bytes] | None
    """Read and write tokens together: what a read may present (None: anyone may read)."""


def _digests(writers: frozenset[bytes] | None, readers: frozenset[bytes] | None) -> _Digests:
    may_read = None if readers is None else readers | (writers or frozenset())
    return _Digests(writers, readers, may_read)


class Access:
    """The server's access policy. `reload` may run on another thread while requests are
    decided: the tokens are swapped in one assignment, and each decision reads them once."""

    def __init__(
        self,
        write_tokens: TokenSource | None = None,
        read_tokens: TokenSource | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        """TokenError if a token file cannot be used."""
        self._sources = (write_tokens, read_tokens)
        self._tokens = _digests(_load(write_tokens), _load(read_tokens))
        self.read_only = read_only

    def warnings(self) -> list[str]:
        """What an operator should hear at start-up about the token files."""
        files = [source for source in self._sources if isinstance(source, Path)]
        lines = [warning for path in files if (warning := exposure_warning(path))]
        writers, readers, _ = self._tokens
        for digests, what in ((writers, "write"), (readers, "read")):
            if digests is not None and not digests:
                lines.append(f"asrv: warning: no {what} tokens: nobody may {what}")
        if readers is not None and writers is None and not self.read_only:
            lines.append("asrv: warning: read tokens but no write tokens: anyone may write")
        return lines

    def reload(self) -> list[str]:
        """Re-read the token files (SIGHUP); problems, as lines for the operator. A file
        that cannot be used keeps its tokens."""
        problems = []
        writers, readers, _ = self._tokens
        write_source, read_source = self._sources
        try:
            writers = _load(write_source)
        except TokenError as error:
            problems.append(f"asrv: kept the old write tokens: {error}")
        try:
            readers = _load(read_source)
        except TokenError as error:
            problems.append(f"asrv: kept the old read tokens: {error}")
        self._tokens = _digests(writers, readers)
        return problems + self.warnings()

    def allows(self, writes: bool, authorization: str | None) -> bool:
        """Whether a request may go on: a write (PUT, DELETE) or a read (GET, HEAD), with
        the value of its Authorization field (None when it had none)."""
        tokens = self._tokens
        needed = tokens.writers if writes else tokens.may_read
        return needed is None or _presented(authorization, needed)


def _presented(authorization: str | None, digests: frozenset[bytes]) -> bool:
    """Whether the field carries one of the tokens. Every digest is compared, each in
    constant time: how long this takes says nothing about which token came close."""
    match = None if authorization is None else _BEARER.fullmatch(authorization.strip())
    candidate = _digest(match[1]) if match is not None else b"\0" * 32
    found = False
    for digest in digests:
        found |= hmac.compare_digest(digest, candidate)
    return found and match is not None

"""The HTTP/1.1 wire format asrv speaks, as data: bytes in, requests or errors out.

Nothing here touches a socket, a file or a clock (the shape of h11). A `HeadReader` is fed
the bytes a connection reads and frames them into request heads: each is a `Request`, or an
`HttpError` whose `status` is the response to send. The connection only moves bytes and
awaits; every decision about what is valid lives in this module, and so do the byte-exact
responses (SPEC §4).

Two grammars (SPEC §3): the default one takes header fields as RFC 9110/9112 define them and
heads up to 8 KiB, so that browsers, cookies and bearer tokens fit; `COURSE` is the course's
exact grammar (`key: value`, 128-byte keys and values, 2048-byte heads).

Error precedence, when several things are wrong at once: request-line syntax (400), then the
version (505), then header syntax or a head over the size limit (400), then a missing or
invalid Content-Length (400), then the method (501). File errors come later, from the store.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from asrv.conditions import Conditions, parse_conditions

COURSE_MAX_HEAD = 2048
"""Largest request head (request line, headers and the empty line) in the course's grammar."""
DEFAULT_MAX_HEAD = 8192
"""Largest request head by default (`--max-head`)."""

HEAD_END = b"\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_REQUEST_ID = "0"

_REQUEST_LINE = re.compile(rb"([a-zA-Z]{1,8}) (/[a-zA-Z0-9.-]{1,63}) (HTTP/[0-9]\.[0-9])")
_COURSE_FIELD = re.compile(rb"([a-zA-Z0-9.-]{1,128}): ([ -~]{1,128})")
# RFC 9110 §5.1, §5.5: a token, a colon, then a value of visible ASCII, spaces and tabs whose
# surrounding whitespace is not part of it. No whitespace before the colon, no line folding.
_RFC_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t -~]*)")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


class Status(enum.IntEnum):
    """Every status asrv sends, with its reason phrase and its fixed body."""

    OK = 200
    CREATED = 201
    PARTIAL_CONTENT = 206
    NOT_MODIFIED = 304
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    PRECONDITION_FAILED = 412
    PAYLOAD_TOO_LARGE = 413
    RANGE_NOT_SATISFIABLE = 416
    INTERNAL_ERROR = 500
    NOT_IMPLEMENTED = 501
    VERSION_NOT_SUPPORTED = 505

    @property
    def phrase(self) -> str:
        return _PHRASES[self]

    @property
    def body(self) -> bytes:
        """The body sent with this status when it is not a GET's file content."""
        return f"{self.phrase}\n".encode()


_PHRASES = {
    Status.OK: "OK",
    Status.CREATED: "Created",
    Status.PARTIAL_CONTENT: "Partial Content",
    Status.NOT_MODIFIED: "Not Modified",
    Status.BAD_REQUEST: "Bad Request",
    Status.UNAUTHORIZED: "Unauthorized",
    Status.FORBIDDEN: "Forbidden",
    Status.NOT_FOUND: "Not Found",
    Status.PRECONDITION_FAILED: "Precondition Failed",
    Status.PAYLOAD_TOO_LARGE: "Payload Too Large",
    Status.RANGE_NOT_SATISFIABLE: "Range Not Satisfiable",
    Status.INTERNAL_ERROR: "Internal Server Error",
    Status.NOT_IMPLEMENTED: "Not Implemented",
    Status.VERSION_NOT_SUPPORTED: "Version Not Supported",
}


class Method(enum.Enum):
    GET = "GET"
    PUT = "PUT"
    HEAD = "HEAD"
    DELETE = "DELETE"


_METHODS = {method.value: method for method in Method}
_COURSE_METHODS = {"GET": Method.GET, "PUT": Method.PUT}
"""The course's server implements GET and PUT only: HEAD and DELETE get 501 there."""


class Grammar(NamedTuple):
    """Which request grammar a server speaks, and its largest head."""

    course: bool
    max_head: int


DEFAULT = Grammar(course=False, max_head=DEFAULT_MAX_HEAD)
COURSE = Grammar(course=True, max_head=COURSE_MAX_HEAD)


class Persistence(enum.Enum):
    """What a request says about its connection (RFC 9112 §9.3), and so what its response
    says back: only an echo of what the client asked, never more (SPEC §4.1)."""

    KEEP = "keep"
    """HTTP/1.1: the connection persists; the response says nothing about it."""
    CLOSE = "close"
    """The response says `Connection: close`, then the server closes: the client asked, or
    it speaks HTTP/1.0 and did not ask to keep the connection (RFC 9112 §9.6; an HTTP/1.1
    response alone would tell it the connection persists)."""
    ONCE = "once"
    """One request only, as the course's mode serves it: close after it, saying nothing."""
    KEEP_ALIVE = "keep-alive"
    """HTTP/1.0 asking `Connection: keep-alive`: persists, and the response says so."""

    @property
    def persists(self) -> bool:
        return self is Persistence.KEEP or self is Persistence.KEEP_ALIVE

    @property
    def ending(self) -> Persistence:
        """This request's persistence when an error ends its connection: a close is said
        only where the client expects to hear it (SPEC §4.1: the course diffs these
        responses byte for byte)."""
        return Persistence.CLOSE if self is Persistence.CLOSE else Persistence.ONCE

    def connection_header(self, keep: bool) -> bytes:
        """The `Connection` field of a response, given whether the connection stays open."""
        if self is Persistence.CLOSE:
            return b"Connection: close\r\n"
        if keep and self is Persistence.KEEP_ALIVE:
            return b"Connection: keep-alive\r\n"
        return b""


# RequestLine and Request are named tuples rather than frozen dataclasses: one of each is
# made per request, and a frozen dataclass's __init__ costs a setattr call per field.


class RequestLine(NamedTuple):
    """A syntactically valid request line: enough to write the request's audit-log line."""

    method: str
    uri: str
    version: str

    @property
    def filename(self) -> str:
        """The name of the file in the root that the URI designates."""
        return self.uri[1:]


class Credential(str):
    """An Authorization field's value: a str whose repr does not show it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Credential(<hidden>)"


class Request(NamedTuple):
    """A request whose head is valid and whose method asrv implements."""

    line: RequestLine
    method: Method
    request_id: str
    content_length: int | None
    expect_continue: bool
    persistence: Persistence
    conditions: Conditions | None = None
    """If-Match, If-None-Match, Range and If-Range (never with the course's grammar)."""
    authorization: Credential | None = None
    """The Authorization field (never with the course's grammar)."""


class HttpError(Exception):
    """The head cannot be served as a request; `status` is the response to send.

    `line` is the parsed request line when there was one: such a request is still logged.
    `body_length` is the length of the body that follows the head when the framing is still
    known (a 501 with a valid Content-Length), so the connection can skip the body and go on
    as `persistence` says; None when the connection cannot tell where the next request
    starts, and must close after the response (saying so only if the client asked).
    """

    def __init__(
        self,
        status: Status,
        line: RequestLine | None = None,
        request_id: str = NO_REQUEST_ID,
        *,
        persistence: Persistence = Persistence.ONCE,
        body_length: int | None = None,
    ) -> None:
        super().__init__(f"{int(status)} {status.phrase}")
        self.status = status
        self.line = line
        self.request_id = request_id
        self.persistence = persistence
        self.body_length = body_length


class NeedData(enum.Enum):
    NEED_DATA = "need data"


NEED_DATA = NeedData.NEED_DATA
"""`HeadReader.next_event`: no whole head yet; feed more bytes."""


class HeadReader:
    """Frames the heads of the requests on one connection out of the bytes it reads.

    `feed` the bytes, then ask `next_event`: a `Request`, an `HttpError`, or `NEED_DATA`.
    A request's body is taken with `take` before the next head is asked for. When the
    client closes or stalls, `eof` and `stalled` say what that means for the head in hand.
    """

    def __init__(self, grammar: Grammar = DEFAULT) -> None:
        self.grammar = grammar
        # What was received, and where its unframed part starts: framing a head moves the
        # start instead of copying the rest (many pipelined requests arrive in one read).
        self._data = b""
        self._start = 0
        self._line: RequestLine | None = None  # of the head in progress, once it parsed

    def feed(self, data: bytes) -> None:
        self._data = self._data[self._start :] + data
        self._start = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet framed or taken (of the next head, or a body)."""
        return len(self._data) - self._start

    @property
    def line(self) -> RequestLine | None:
        """The request line of the head in progress, once it is whole and valid."""
        return self._line

    def next_event(self) -> Request | HttpError | NeedData:
        max_head = self.grammar.max_head
        data, start = self._data, self._start
        if self._line is None and not self.grammar.course:
            # RFC 9112 §2.2: ignore empty lines before a request line (some clients send
            # a CRLF after a body). Whole CRLF pairs only: a CR alone may be a split one.
            while data.startswith(b"\r\n", start):
                start += 2
            self._start = start
        end = data.find(HEAD_END, start, start + max_head)
        if end >= 0:
            self._start = end + len(HEAD_END)
            self._line = None
            try:
                return parse_head(data[start : self._start], self.grammar)
            except HttpError as error:
                return error
        if self._line is None:
            line_end = data.find(b"\r\n", start, start + max_head)
            if line_end >= 0:
                # A bad request line is a 400 whatever follows: answer it now.
                try:
                    self._line = parse_request_line(data[start:line_end])
                except HttpError as error:
                    return error
        if len(data) - start >= max_head:
            return oversized_head_error(data[start : start + max_head], self.grammar)
        return NEED_DATA

    def take(self, limit: int) -> bytes:
        """Up to `limit` bytes received past the last head: the start of its body."""
        chunk = self._data[self._start : self._start + limit]
        self._start += len(chunk)
        if self._start == len(self._data):
            # All taken: keep no reference to what was read (a body's first piece may be
            # most of a 256 KiB read, held by every connection that stalls after it).
            self._data, self._start = b"", 0
        return chunk

    def partial_request_id(self) -> str:
        """The Request-Id among the whole, well-formed header lines of the head in progress
        (to log a request whose head never completed, with the id its client sent)."""
        return _loggable(_request_id(_partial_fields(self._pending(), self.grammar)))

    def _pending(self) -> bytes:
        return self._data[self._start :]

    def eof(self) -> HttpError | None:
        """The client closed: None if no byte of a next head had come, else the 400."""
        return self._incomplete() if self.buffered else None

    def stalled(self, *, first: bool) -> HttpError | None:
        """The client sent nothing for too long. Between requests that is the end of the
        connection (None); on a connection's first request, or mid-head, it is a 400."""
        if not self.buffered and not first:
            return None
        return self._incomplete()

    def _incomplete(self) -> HttpError:
        return incomplete_head_error(self._pending(), self._line, self.grammar)


def parse_request_line(line: bytes) -> RequestLine:
    """Parse the request line (without its CRLF); 400 if it breaks the grammar."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise HttpError(Status.BAD_REQUEST)
    return RequestLine(match[1].decode(), match[2].decode(), match[3].decode())


def _version_supported(version: str, grammar: Grammar) -> bool:
    return version == "HTTP/1.1" or (version == "HTTP/1.0" and not grammar.course)


def oversized_head_error(buffer: bytes, grammar: Grammar) -> HttpError:
    """The error for a head that did not end within the grammar's head limit.

    The request line, if it was complete and valid, still decides the precedence (a bad
    version is a 505) and is logged.
    """
    end = buffer.find(b"\r\n", 0, grammar.max_head)
    if end < 0:
        return HttpError(Status.BAD_REQUEST)
    try:
        line = parse_request_line(buffer[:end])
    except HttpError as error:
        return error
    if not _version_supported(line.version, grammar):
        return incomplete_head_error(buffer, line, grammar, Status.VERSION_NOT_SUPPORTED)
    return incomplete_head_error(buffer, line, grammar)


def incomplete_head_error(
    buffer: bytes,
    line: RequestLine | None,
    grammar: Grammar,
    status: Status = Status.BAD_REQUEST,
) -> HttpError:
    """The error for a head that never completed (400, or 505 for a bad version); logged
    if its line parsed, and with `Connection: close` echoed if a whole header line asked."""
    fields = _partial_fields(buffer, grammar)
    connection = fields.get("connection")
    version = line.version if line is not None else "HTTP/1.1"
    return HttpError(
        status,
        line,
        _loggable(_request_id(fields)),
        persistence=_persistence(version, connection, grammar).ending,
    )


def _partial_fields(buffer: bytes, grammar: Grammar) -> dict[str, str]:
    """The whole, well-formed header lines of an incomplete head."""
    lines = buffer[: grammar.max_head].split(b"\r\n")[1:-1]  # no request line, no tail
    return _parse_fields(lines, grammar)[0]


def parse_head(head: bytes, grammar: Grammar = DEFAULT) -> Request:
    """Parse a complete head: request line, header fields and the empty line.

    `head` must end with CRLF CRLF and be at most the grammar's limit (the caller frames it).
    """
    lines = head[: -len(HEAD_END)].split(b"\r\n")
    line = parse_request_line(lines[0])
    fields, well_formed = _parse_fields(lines[1:], grammar)
    # The id and Connection are read from the well-formed fields even when others are
    # malformed: a rejected request is still logged with the id its client sent.
    request_id = _request_id(fields)
    persistence = _persistence(line.version, fields.get("connection"), grammar)
    closing = persistence.ending
    if not _version_supported(line.version, grammar):
        raise HttpError(
            Status.VERSION_NOT_SUPPORTED, line, _loggable(request_id), persistence=closing
        )
    if not well_formed or request_id is None:
        raise HttpError(Status.BAD_REQUEST, line, _loggable(request_id), persistence=closing)

    raw_length = fields.get("content-length")
    if (raw_length is None and line.method == "PUT") or (
        raw_length is not None and _CONTENT_LENGTH.fullmatch(raw_length) is None
    ):
        raise HttpError(Status.BAD_REQUEST, line, request_id, persistence=closing)
    if not grammar.course and "transfer-encoding" in fields:
        # asrv reads bodies framed by Content-Length only; a transfer coding leaves the
        # body's end unknown (RFC 9112 §6.3), so the connection cannot go on.
        raise HttpError(Status.BAD_REQUEST, line, request_id, persistence=closing)
    content_length = None if raw_length is None else int(raw_length)
    expect_continue = (
        line.version == "HTTP/1.1" and fields.get("expect", "").lower() == "100-continue"
    )
    method = (_COURSE_METHODS if grammar.course else _METHODS).get(line.method)
    if method is None:
        # The connection goes on past a 501 only if its body can be skipped: not after a
        # HEAD, whose response a client reads without a body (the 501's body would become
        # the start of the next response), nor when the client waits for a 100 before
        # sending the body (RFC 9110 §10.1.1: answer at once instead).
        skippable = not grammar.course and not expect_continue and line.method != "HEAD"
        raise HttpError(
            Status.NOT_IMPLEMENTED,
            line,
            request_id,
            persistence=persistence if skippable else closing,
            body_length=(content_length or 0) if skippable else None,
        )
    return Request(
        line=line,
        method=method,
        request_id=request_id,
        content_length=content_length,
        # RFC 9110 §10.1.1: an HTTP/1.0 client never gets a 100 (Continue).
        expect_continue=expect_continue,
        persistence=persistence,
        # The course's server ignores these fields (SPEC §4.3).
        conditions=None if grammar.course else parse_conditions(fields),
        authorization=_credential(None if grammar.course else fields.get("authorization")),
    )


def _credential(value: str | None) -> Credential | None:
    return None if value is None else Credential(value)


def _parse_fields(lines: list[bytes], grammar: Grammar) -> tuple[dict[str, str], bool]:
    """The well-formed fields by lower-cased name (the last of repeated ones wins), and
    whether every line was one.

    In the default grammar, Content-Length repeated with different values makes the head
    malformed (RFC 9110 §8.6): which one counted would be a guess, and a guess about where
    a body ends is how requests get smuggled past a proxy.
    """
    fields: dict[str, str] = {}
    all_well_formed = True
    pattern = _COURSE_FIELD if grammar.course else _RFC_FIELD
    for raw in lines:
        match = pattern.fullmatch(raw)
        if match is None:
            all_well_formed = False
            continue
        name = match[1].decode("ascii").lower()
        value = match[2].decode("ascii")
        if not grammar.course:
            value = value.rstrip(" \t")
            if name == "content-length" and fields.get(name, value) != value:
                all_well_formed = False
        fields[name] = value
    return fields, all_well_formed


def _request_id(fields: dict[str, str]) -> str | None:
    """The Request-Id to log, verbatim (empty too); None when it cannot be one field of a
    log line."""
    value = fields.get("request-id", NO_REQUEST_ID)
    return None if "," in value else value


def _loggable(request_id: str | None) -> str:
    """The id a rejected request is logged with: `0` for one that cannot be logged."""
    return NO_REQUEST_ID if request_id is None else request_id


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


def _persistence(version: str, connection: str | None, grammar: Grammar) -> Persistence:
    if connection is not None and _has_token(connection, "close"):
        return Persistence.CLOSE
    if grammar.course:
        return Persistence.ONCE
    if version == "HTTP/1.0":
        if connection is not None and _has_token(connection, "keep-alive"):
            return Persistence.KEEP_ALIVE
        return Persistence.CLOSE
    return Persistence.KEEP


def response_head(
    status: Status, content_length: int, connection: bytes = b"", fields: bytes = b""
) -> bytes:
    """The status line and headers of a response, up to and including the empty line.
    `connection` is a whole `Connection` field line, or nothing; `fields` are more whole
    field lines (`Content-Range`, `ETag`), placed between the two."""
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        status,
        _PHRASE_BYTES[status],
        content_length,
        fields,
        connection,
    )


def not_modified_response(etag: str, connection: bytes = b"") -> bytes:
    """A whole 304: no body, and so no Content-Length (RFC 9110 §15.4.5, §8.6: it would
    have to be the length of the 200 this stands for, and clients need none)."""
    return b"HTTP/1.1 304 Not Modified\r\nETag: %s\r\n%s\r\n" % (etag.encode("ascii"), connection)


_PHRASE_BYTES = {status: phrase.encode("ascii") for status, phrase in _PHRASES.items()}


def fixed_response(status: Status, connection: bytes = b"", fields: bytes = b"") -> bytes:
    """A whole response whose body is the status's fixed text (all but a GET's 200 and 206,
    and a 304)."""
    body = status.body
    return response_head(status, len(body), connection, fields) + body

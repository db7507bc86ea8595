"""The HTTP/1.1 wire format asrv speaks, as data: bytes in, a request or an error out.

Nothing here touches a socket, a file or a clock (the shape of h11): the server feeds the
bytes it has read and gets back a `Request`, or an `HttpError` whose `status` is the response
to send. The grammar is deliberately strict (SPEC §3) and the responses are byte-exact
(SPEC §4), so every decision about what is valid lives in this one module.

Error precedence, when several things are wrong at once: request-line syntax (400), then the
version (505), then header syntax or a head over the size limit (400), then a missing or
invalid Content-Length (400), then the method (501). File errors come later, from the store.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

MAX_HEAD = 2048
"""Largest request head (request line, headers and the empty line) in bytes."""

HEAD_END = b"\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_REQUEST_ID = "0"

_REQUEST_LINE = re.compile(rb"([a-zA-Z]{1,8}) (/[a-zA-Z0-9.-]{1,63}) (HTTP/[0-9]\.[0-9])")
_HEADER = re.compile(rb"([a-zA-Z0-9.-]{1,128}): ([ -~]{1,128})")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


class Status(enum.IntEnum):
    """Every status asrv sends, with its reason phrase and its fixed body."""

    OK = 200
    CREATED = 201
    BAD_REQUEST = 400
    FORBIDDEN = 403
    NOT_FOUND = 404
    PAYLOAD_TOO_LARGE = 413
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
    Status.BAD_REQUEST: "Bad Request",
    Status.FORBIDDEN: "Forbidden",
    Status.NOT_FOUND: "Not Found",
    Status.PAYLOAD_TOO_LARGE: "Payload Too Large",
    Status.INTERNAL_ERROR: "Internal Server Error",
    Status.NOT_IMPLEMENTED: "Not Implemented",
    Status.VERSION_NOT_SUPPORTED: "Version Not Supported",
}


class Method(enum.Enum):
    GET = "GET"
    PUT = "PUT"


_METHODS = {method.value: method for method in Method}


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


class Request(NamedTuple):
    """A request whose head is valid and whose method asrv implements."""

    line: RequestLine
    method: Method
    request_id: str
    content_length: int | None
    expect_continue: bool
    connection_close: bool


class HttpError(Exception):
    """The head cannot be served as a request; `status` is the response to send.

    `line` is the parsed request line when there was one: such a request is still logged.
    """

    def __init__(
        self,
        status: Status,
        line: RequestLine | None = None,
        request_id: str = NO_REQUEST_ID,
        *,
        connection_close: bool = False,
    ) -> None:
        super().__init__(f"{int(status)} {status.phrase}")
        self.status = status
        self.line = line
        self.request_id = request_id
        self.connection_close = connection_close


def parse_request_line(line: bytes) -> RequestLine:
    """Parse the request line (without its CRLF); 400 if it breaks the grammar."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise HttpError(Status.BAD_REQUEST)
    return RequestLine(match[1].decode(), match[2].decode(), match[3].decode())


def oversized_head_error(buffer: bytes) -> HttpError:
    """The error for a head that did not end within MAX_HEAD bytes.

    The request line, if it was complete and valid, still decides the precedence (a bad
    version is a 505) and is logged.
    """
    end = buffer.find(b"\r\n", 0, MAX_HEAD)
    if end < 0:
        return HttpError(Status.BAD_REQUEST)
    try:
        line = parse_request_line(buffer[:end])
    except HttpError as error:
        return error
    if line.version != "HTTP/1.1":
        return incomplete_head_error(buffer, line, Status.VERSION_NOT_SUPPORTED)
    return incomplete_head_error(buffer, line)


def request_id_of_partial_head(buffer: bytes) -> str:
    """The Request-Id among the whole, well-formed header lines of an incomplete head.

    Used to log a request whose head never completed (the client stalled or left): the
    client's id is logged if it was sent, as it would have been had the head finished.
    """
    return _request_id(_partial_headers(buffer)) or NO_REQUEST_ID


def incomplete_head_error(
    buffer: bytes, line: RequestLine | None, status: Status = Status.BAD_REQUEST
) -> HttpError:
    """The error for a head that never completed (400, or 505 for a bad version); logged
    if its line parsed, and with `Connection: close` echoed if a whole header line asked."""
    headers = _partial_headers(buffer)
    return HttpError(
        status,
        line,
        _request_id(headers) or NO_REQUEST_ID,
        connection_close=_has_token(headers.get("connection", ""), "close"),
    )


def _partial_headers(buffer: bytes) -> dict[str, str]:
    """The whole, well-formed header lines of an incomplete head."""
    lines = buffer[:MAX_HEAD].split(b"\r\n")[1:-1]  # without the request line and the tail
    return _well_formed_headers(lines)[0]


def parse_head(head: bytes) -> Request:
    """Parse a complete head: request line, header fields and the empty line.

    `head` must end with CRLF CRLF and be at most MAX_HEAD bytes (the caller frames it).
    """
    lines = head[: -len(HEAD_END)].split(b"\r\n")
    line = parse_request_line(lines[0])
    headers, well_formed = _well_formed_headers(lines[1:])
    # The id and Connection are read from the well-formed fields even when others are
    # malformed: a rejected request is still logged with the id its client sent.
    request_id = _request_id(headers)
    connection = headers.get("connection")
    close = connection is not None and _has_token(connection, "close")
    if line.version != "HTTP/1.1":
        raise HttpError(
            Status.VERSION_NOT_SUPPORTED, line, request_id or NO_REQUEST_ID, connection_close=close
        )
    if not well_formed or request_id is None:
        raise HttpError(
            Status.BAD_REQUEST, line, request_id or NO_REQUEST_ID, connection_close=close
        )

    raw_length = headers.get("content-length")
    if (raw_length is None and line.method == "PUT") or (
        raw_length is not None and _CONTENT_LENGTH.fullmatch(raw_length) is None
    ):
        raise HttpError(Status.BAD_REQUEST, line, request_id, connection_close=close)
    method = _METHODS.get(line.method)
    if method is None:
        raise HttpError(Status.NOT_IMPLEMENTED, line, request_id, connection_close=close)
    return Request(
        line=line,
        method=method,
        request_id=request_id,
        content_length=None if raw_length is None else int(raw_length),
        expect_continue=headers.get("expect", "").lower() == "100-continue",
        connection_close=close,
    )


def _well_formed_headers(lines: list[bytes]) -> tuple[dict[str, str], bool]:
    """The well-formed fields by lower-cased name (the last of repeated ones wins), and
    whether every line was one."""
    headers: dict[str, str] = {}
    all_well_formed = True
    for raw in lines:
        match = _HEADER.fullmatch(raw)
        if match is None:
            all_well_formed = False
        else:
            headers[match[1].decode("ascii").lower()] = match[2].decode("ascii")
    return headers, all_well_formed


def _request_id(headers: dict[str, str]) -> str | None:
    """The Request-Id to log; None when it cannot be one field of a log line."""
    value = headers.get("request-id", NO_REQUEST_ID)
    return None if "," in value else value


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


def response_head(status: Status, content_length: int, *, close: bool = False) -> bytes:
    """The status line and headers of a response, up to and including the empty line."""
    connection = "Connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {int(status)} {status.phrase}\r\n"
        f"Content-Length: {content_length}\r\n{connection}\r\n"
    ).encode("ascii")


def fixed_response(status: Status, *, close: bool = False) -> bytes:
    """A whole response whose body is the status's fixed text (every response but a GET 200)."""
    body = status.body
    return response_head(status, len(body), close=close) + body

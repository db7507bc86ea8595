"""asrv.http: bytes in, a Request or an HttpError out; responses byte for byte (SPEC §3, §4).

What both grammars share (the request line, precedence, Request-Id, Content-Length, 501) is
checked in both; the course's own rules (`key: value` exactly, 128-byte keys and values,
2048-byte heads, HTTP/1.1 only) against `COURSE`; the RFC 9110/9112 field grammar, HTTP/1.0,
persistence and the framing rules of the default mode against `DEFAULT`.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asrv.http import (
    CONTINUE,
    COURSE,
    COURSE_MAX_HEAD,
    DEFAULT,
    DEFAULT_MAX_HEAD,
    HEAD_END,
    NEED_DATA,
    NO_REQUEST_ID,
    Grammar,
    HeadReader,
    HttpError,
    Method,
    NeedData,
    Persistence,
    Request,
    RequestLine,
    Status,
    fixed_response,
    incomplete_head_error,
    oversized_head_error,
    parse_head,
    parse_request_line,
    response_head,
)

GRAMMARS = [pytest.param(COURSE, id="course"), pytest.param(DEFAULT, id="default")]
in_both = pytest.mark.parametrize("grammar", GRAMMARS)


def head(request_line: str | bytes, *headers: str | bytes) -> bytes:
    """A complete head: request line, header lines, and the empty line."""
    lines = [x.encode("latin-1") if isinstance(x, str) else x for x in (request_line, *headers)]
    return b"\r\n".join(lines) + HEAD_END


def parse_error(data: bytes, grammar: Grammar = DEFAULT) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse_head(data, grammar)
    return info.value


def assert_error(
    data: bytes,
    status: Status,
    line: RequestLine | None = None,
    request_id: str = "0",
    grammar: Grammar = DEFAULT,
) -> HttpError:
    error = parse_error(data, grammar)
    assert error.status is status
    assert error.line == line
    assert error.request_id == request_id
    return error


def plain(grammar: Grammar) -> Persistence:
    """What a request that says nothing about its connection gets: one request per
    connection in the course's grammar, a persistent connection by default."""
    return Persistence.ONCE if grammar.course else Persistence.KEEP


def sized_head(size: int, request_line: bytes = b"GET /a.txt HTTP/1.1") -> bytes:
    """A head of exactly `size` bytes whose header lines are valid in both grammars."""
    data = request_line + b"\r\n"
    remaining = size - len(data) - 2
    assert remaining == 0 or remaining >= 6
    while remaining:
        # A line is "X: " + 1 to 128 bytes of value + CRLF; never leave less than one line.
        take = remaining if remaining <= 133 else min(133, remaining - 6)
        data += b"X: " + b"y" * (take - 5) + b"\r\n"
        remaining -= take
    data += b"\r\n"
    assert len(data) == size
    return data


def summary(event: object) -> object:
    """An event as a value to compare (an HttpError compares by identity)."""
    if isinstance(event, HttpError):
        return error_summary(
            event.status, event.line, event.request_id, event.persistence, event.body_length
        )
    return event


def error_summary(
    status: Status,
    line: RequestLine | None = None,
    request_id: str = "0",
    persistence: Persistence = Persistence.ONCE,
    body_length: int | None = None,
) -> tuple[object, ...]:
    return ("error", status, line, request_id, persistence, body_length)


A_LINE = RequestLine("GET", "/a.txt", "HTTP/1.1")
BAD_HEADER = "Bad Header: x"


# --- valid heads ---------------------------------------------------------------------------


@in_both
def test_minimal_get(grammar: Grammar) -> None:
    request = parse_head(b"GET /a.txt HTTP/1.1\r\n\r\n", grammar)
    assert request == Request(
        line=A_LINE,
        method=Method.GET,
        request_id=NO_REQUEST_ID,
        content_length=None,
        expect_continue=False,
        persistence=plain(grammar),
    )
    assert request.line.filename == "a.txt"
    assert NO_REQUEST_ID == "0"


@in_both
def test_get_with_headers(grammar: Grammar) -> None:
    request = parse_head(
        head("GET /index.html HTTP/1.1", "Host: localhost:8080", "Request-Id: 17", "X-Y: z"),
        grammar,
    )
    assert request.method is Method.GET
    assert request.line == RequestLine("GET", "/index.html", "HTTP/1.1")
    assert request.request_id == "17"
    assert request.content_length is None


@in_both
def test_put_with_content_length(grammar: Grammar) -> None:
    request = parse_head(
        head("PUT /b.txt HTTP/1.1", "Content-Length: 12", "Request-Id: 3"), grammar
    )
    assert request.method is Method.PUT
    assert request.line == RequestLine("PUT", "/b.txt", "HTTP/1.1")
    assert request.line.filename == "b.txt"
    assert request.content_length == 12
    assert request.request_id == "3"
    assert request.expect_continue is False
    assert request.persistence is plain(grammar)


@in_both
def test_put_with_zero_length(grammar: Grammar) -> None:
    assert parse_head(head("PUT /e HTTP/1.1", "Content-Length: 0"), grammar).content_length == 0


@in_both
def test_get_with_content_length_keeps_it(grammar: Grammar) -> None:
    # A GET's body is read and ignored, so the parser must report its length.
    assert parse_head(head("GET /a HTTP/1.1", "Content-Length: 5"), grammar).content_length == 5


def test_constants() -> None:
    assert COURSE_MAX_HEAD == 2048
    assert DEFAULT_MAX_HEAD == 8192
    assert Grammar(course=True, max_head=2048) == COURSE
    assert Grammar(course=False, max_head=8192) == DEFAULT
    assert HEAD_END == b"\r\n\r\n"
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert NEED_DATA is NeedData.NEED_DATA


def test_the_default_grammar_is_the_default() -> None:
    # HTTP/1.0 and a value beyond 128 bytes: valid only in the default grammar.
    data = head("GET /a HTTP/1.0", "X: " + "y" * 200)
    assert parse_head(data) == parse_head(data, DEFAULT)
    assert HeadReader().grammar == DEFAULT
    assert oversized_head_error(b"G" * 3000, DEFAULT).line is None
    partial = b"GET /a HTTP/1.1\r\nRequest-Id:9\r\n"
    assert incomplete_head_error(partial, None, DEFAULT).request_id == "9"


# --- request line grammar: method SP uri SP version ----------------------------------------


@in_both
@pytest.mark.parametrize(
    ("line", "method", "uri"),
    [
        ("GET /a HTTP/1.1", "GET", "/a"),
        ("GET /Z HTTP/1.1", "GET", "/Z"),
        ("GET /0 HTTP/1.1", "GET", "/0"),
        ("GET /. HTTP/1.1", "GET", "/."),
        ("GET /.. HTTP/1.1", "GET", "/.."),
        ("GET /- HTTP/1.1", "GET", "/-"),
        ("GET /a.b-c.D9 HTTP/1.1", "GET", "/a.b-c.D9"),
        ("GET /" + "x" * 63 + " HTTP/1.1", "GET", "/" + "x" * 63),
    ],
)
def test_valid_request_lines(grammar: Grammar, line: str, method: str, uri: str) -> None:
    request = parse_head(head(line), grammar)
    assert request.line == RequestLine(method, uri, "HTTP/1.1")


BAD_REQUEST_LINES = [
    pytest.param(b"", id="empty"),
    pytest.param(b"GET", id="method-only"),
    pytest.param(b"GET /a", id="no-version"),
    pytest.param(b"/a HTTP/1.1", id="no-method"),
    pytest.param(b" GET /a HTTP/1.1", id="leading-space"),
    pytest.param(b"GET /a HTTP/1.1 ", id="trailing-space"),
    pytest.param(b"GET  /a HTTP/1.1", id="double-space"),
    pytest.param(b"GET /a  HTTP/1.1", id="double-space-2"),
    pytest.param(b"GET\t/a\tHTTP/1.1", id="tabs"),
    pytest.param(b"GETTINGS /a HTTP/1.1x", id="junk-after-version"),
    pytest.param(b"ABCDEFGHI /a HTTP/1.1", id="method-9-letters"),
    pytest.param(b"G3T /a HTTP/1.1", id="method-digit"),
    pytest.param(b"GE-T /a HTTP/1.1", id="method-dash"),
    pytest.param(b"GET a HTTP/1.1", id="uri-no-slash"),
    pytest.param(b"GET / HTTP/1.1", id="uri-slash-only"),
    pytest.param(b"GET /" + b"x" * 64 + b" HTTP/1.1", id="uri-64-chars"),
    pytest.param(b"GET /a/b HTTP/1.1", id="uri-subdir"),
    pytest.param(b"GET //a HTTP/1.1", id="uri-double-slash"),
    pytest.param(b"GET /a_b HTTP/1.1", id="uri-underscore"),
    pytest.param(b"GET /a~ HTTP/1.1", id="uri-tilde"),
    pytest.param(b"GET /a%20 HTTP/1.1", id="uri-percent"),
    pytest.param(b"GET /a?x=1 HTTP/1.1", id="uri-query"),
    pytest.param(b"GET http://h/a HTTP/1.1", id="uri-absolute"),
    pytest.param(b"GET /\xc3\xa9 HTTP/1.1", id="uri-non-ascii"),
    pytest.param(b"GET /a http/1.1", id="version-lowercase"),
    pytest.param(b"GET /a HTTP/1", id="version-no-minor"),
    pytest.param(b"GET /a HTTP/1.", id="version-dot-only"),
    pytest.param(b"GET /a HTTP/11", id="version-no-dot"),
    pytest.param(b"GET /a HTTP/10.1", id="version-two-digits"),
    pytest.param(b"GET /a HTTP/1.10", id="version-two-minor-digits"),
    pytest.param(b"GET /a HTTP/1x1", id="version-not-dot"),
    pytest.param(b"GET /a HTTPS/1.1", id="version-https"),
    pytest.param(b"GET /a HTTP/1.1\n", id="bare-lf"),
    pytest.param(b"GET /a HTTP/1.1\r", id="bare-cr"),
    pytest.param(b"GET /a HTTP/1.1\x00", id="nul"),
]


@in_both
@pytest.mark.parametrize("line", BAD_REQUEST_LINES)
def test_request_line_syntax_is_400_without_a_line(grammar: Grammar, line: bytes) -> None:
    error = assert_error(head(line), Status.BAD_REQUEST, grammar=grammar)
    assert error.line is None
    assert error.persistence is Persistence.ONCE
    assert error.body_length is None
    with pytest.raises(HttpError) as info:
        parse_request_line(line)
    assert info.value.status is Status.BAD_REQUEST
    assert info.value.line is None


@in_both
def test_empty_head_is_400(grammar: Grammar) -> None:
    assert_error(HEAD_END, Status.BAD_REQUEST, grammar=grammar)


@in_both
def test_bare_lf_line_endings_are_400(grammar: Grammar) -> None:
    assert_error(b"GET /a HTTP/1.1\nHost: x\r\n\r\n", Status.BAD_REQUEST, grammar=grammar)


def test_request_line_alone() -> None:
    assert parse_request_line(b"PUT /x.y HTTP/1.1") == RequestLine("PUT", "/x.y", "HTTP/1.1")
    assert parse_request_line(b"FOO /x HTTP/2.0") == RequestLine("FOO", "/x", "HTTP/2.0")
    assert parse_request_line(b"GET /x HTTP/1.0") == RequestLine("GET", "/x", "HTTP/1.0")


@in_both
def test_any_eight_letter_method_is_well_formed(grammar: Grammar) -> None:
    line = RequestLine("ABCDEFGH", "/a", "HTTP/1.1")
    assert_error(head("ABCDEFGH /a HTTP/1.1"), Status.NOT_IMPLEMENTED, line, grammar=grammar)


@in_both
@pytest.mark.parametrize("method", ["POST", "OPTIONS", "PATCH", "get", "Put", "head", "x"])
def test_other_methods_are_501(grammar: Grammar, method: str) -> None:
    line = RequestLine(method, "/a", "HTTP/1.1")
    data = head(f"{method} /a HTTP/1.1", "Request-Id: r9")
    assert_error(data, Status.NOT_IMPLEMENTED, line, "r9", grammar)


@pytest.mark.parametrize("method", ["HEAD", "DELETE"])
def test_course_has_only_get_and_put(method: str) -> None:
    # SPEC §4.3: with --course, HEAD and DELETE are 501 like any other method.
    line = RequestLine(method, "/a", "HTTP/1.1")
    assert_error(head(f"{method} /a HTTP/1.1"), Status.NOT_IMPLEMENTED, line, grammar=COURSE)


@in_both
@pytest.mark.parametrize("version", ["HTTP/0.9", "HTTP/2.0", "HTTP/9.9", "HTTP/1.2", "HTTP/0.0"])
def test_other_versions_are_505(grammar: Grammar, version: str) -> None:
    line = RequestLine("GET", "/a", version)
    error = assert_error(
        head(f"GET /a {version}"), Status.VERSION_NOT_SUPPORTED, line, grammar=grammar
    )
    assert error.persistence is Persistence.ONCE
    assert error.body_length is None


def test_course_answers_http_1_0_with_505() -> None:
    line = RequestLine("GET", "/a", "HTTP/1.0")
    error = assert_error(
        head("GET /a HTTP/1.0"), Status.VERSION_NOT_SUPPORTED, line, grammar=COURSE
    )
    assert error.persistence is Persistence.ONCE
    # Keep-alive does not make a 505 persist: after it the connection closes.
    error = parse_error(head("GET /a HTTP/1.0", "Connection: keep-alive"), COURSE)
    assert error.status is Status.VERSION_NOT_SUPPORTED
    assert error.persistence is Persistence.ONCE


@pytest.mark.parametrize(
    ("grammar", "version"),
    [
        pytest.param(COURSE, "HTTP/1.0", id="course-1.0"),
        pytest.param(COURSE, "HTTP/2.0", id="course-2.0"),
        pytest.param(DEFAULT, "HTTP/2.0", id="default-2.0"),
    ],
)
def test_505_carries_request_id(grammar: Grammar, version: str) -> None:
    data = head(f"PUT /a {version}", "Request-Id: abc", "Content-Length: 1")
    line = RequestLine("PUT", "/a", version)
    assert_error(data, Status.VERSION_NOT_SUPPORTED, line, "abc", grammar)


# --- header grammar: what both grammars reject ----------------------------------------------


@in_both
@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"Host :x", id="space-before-colon"),
        pytest.param(b"Host : x", id="space-both-sides"),
        pytest.param(b"Host\t: x", id="tab-before-colon"),
        pytest.param(b"Host x", id="no-colon"),
        pytest.param(b"Host", id="key-only"),
        pytest.param(b": x", id="empty-key"),
        pytest.param(b"Ho st: x", id="space-in-key"),
        pytest.param(b"X/Y: x", id="slash-in-key"),
        pytest.param(b"X(Y): x", id="paren-in-key"),
        pytest.param(b"X,Y: x", id="comma-in-key"),
        pytest.param(b"X;Y: x", id="semicolon-in-key"),
        pytest.param(b"X=Y: x", id="equals-in-key"),
        pytest.param(b"X@Y: x", id="at-in-key"),
        pytest.param(b"X[Y]: x", id="brackets-in-key"),
        pytest.param(b'X"Y: x', id="quote-in-key"),
        pytest.param(b"X{Y}: x", id="braces-in-key"),
        pytest.param(b"X?Y: x", id="question-in-key"),
        pytest.param(b"X<Y>: x", id="angle-in-key"),
        pytest.param(b"X\\Y: x", id="backslash-in-key"),
        pytest.param(b"K: a\x7fb", id="del-in-value"),
        pytest.param(b"K: a\x00b", id="nul-in-value"),
        pytest.param(b"K: a\x01b", id="soh-in-value"),
        pytest.param(b"K: a\x08b", id="backspace-in-value"),
        pytest.param(b"K: a\x0bb", id="vt-in-value"),
        pytest.param(b"K: a\x0cb", id="ff-in-value"),
        pytest.param(b"K: a\x1bb", id="esc-in-value"),
        pytest.param(b"K: a\x1fb", id="us-in-value"),
        pytest.param(b"K: caf\xc3\xa9", id="non-ascii-value"),
        pytest.param(b"K: \x80", id="obs-text-value"),
        pytest.param(b"K\xc3\xa9: x", id="non-ascii-key"),
        pytest.param(b"K: a\nb", id="lf-in-value"),
        pytest.param(b"K: a\rb", id="cr-in-value"),
        pytest.param(b" folded", id="obs-fold"),
        pytest.param(b"\tfolded", id="obs-fold-tab"),
        pytest.param(b"\tfolded: x", id="leading-tab"),
        pytest.param(b" X: y", id="leading-space"),
        pytest.param(b"", id="empty-line-inside-head"),
    ],
)
def test_header_syntax_is_400_with_the_line(grammar: Grammar, header: bytes) -> None:
    data = head("GET /a.txt HTTP/1.1", "Host: h", header)
    error = assert_error(data, Status.BAD_REQUEST, A_LINE, grammar=grammar)
    assert error.request_id == "0"
    assert error.persistence is Persistence.ONCE
    assert error.body_length is None


@in_both
@pytest.mark.parametrize(
    "header",
    [
        "K" * 128 + ": x",
        "K: " + "v" * 128,
        "a.b-C9: x",
        "0: x",
        "K: " + "".join(chr(c) for c in range(32, 127)),
        "K: a: b",
        "K:  x",
    ],
)
def test_header_syntax_limits_accepted(grammar: Grammar, header: str) -> None:
    assert parse_head(head("GET /a.txt HTTP/1.1", header), grammar).line == A_LINE


# --- header grammar: the course's exact `key ": " value` ------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"Host:x", id="no-space"),
        pytest.param(b"Host:\tx", id="tab-after-colon"),
        pytest.param(b"Host: ", id="empty-value"),
        pytest.param(b"Host:", id="nothing-after-colon"),
        pytest.param(b"X_Y: x", id="underscore-in-key"),
        pytest.param(b"X!Y: x", id="bang-in-key"),
        pytest.param(b"K" * 129 + b": x", id="key-129"),
        pytest.param(b"K: " + b"v" * 129, id="value-129"),
        pytest.param(b"K: a\tb", id="tab-in-value"),
        pytest.param(b"K: a\t", id="tab-after-value"),
    ],
)
def test_course_only_header_rules(header: bytes) -> None:
    # 400 in the course's grammar; valid header fields for RFC 9110 (the default grammar).
    data = head("GET /a.txt HTTP/1.1", "Host: h", header)
    assert_error(data, Status.BAD_REQUEST, A_LINE, grammar=COURSE)
    assert parse_head(data, DEFAULT).line == A_LINE


@in_both
def test_header_names_are_case_insensitive(grammar: Grammar) -> None:
    request = parse_head(
        head(
            "PUT /a HTTP/1.1",
            "content-LENGTH: 7",
            "REQUEST-ID: x",
            "eXpEcT: 100-continue",
            "CONNECTION: close",
        ),
        grammar,
    )
    assert request.content_length == 7
    assert request.request_id == "x"
    assert request.expect_continue is True
    assert request.persistence is Persistence.CLOSE


def test_course_values_are_taken_as_sent() -> None:
    # Everything after the single ": " is the value: leading, inner, trailing spaces and case.
    request = parse_head(head("GET /a HTTP/1.1", "Request-Id:  Mixed Case Id "), COURSE)
    assert request.request_id == " Mixed Case Id "


def test_default_values_lose_their_surrounding_whitespace() -> None:
    # RFC 9110 §5.5: OWS around a value is not part of it; inner spaces and case are.
    request = parse_head(head("GET /a HTTP/1.1", "Request-Id:  Mixed Case Id "), DEFAULT)
    assert request.request_id == "Mixed Case Id"


@in_both
def test_last_repeated_request_id_wins(grammar: Grammar) -> None:
    request = parse_head(
        head("GET /a HTTP/1.1", "Request-Id: first", "request-id: second"), grammar
    )
    assert request.request_id == "second"


def test_course_last_repeated_content_length_wins() -> None:
    request = parse_head(
        head(
            "PUT /a HTTP/1.1",
            "Request-Id: first",
            "Content-Length: 1",
            "request-id: second",
            "CONTENT-LENGTH: 22",
        ),
        COURSE,
    )
    assert request.request_id == "second"
    assert request.content_length == 22


@in_both
def test_last_repeated_request_id_wins_over_an_invalid_one(grammar: Grammar) -> None:
    request = parse_head(
        head("PUT /a HTTP/1.1", "Content-Length: 3", "Request-Id: a,b", "Request-Id: ok"),
        grammar,
    )
    assert request.content_length == 3
    assert request.request_id == "ok"


def test_course_last_repeated_content_length_wins_over_an_invalid_one() -> None:
    request = parse_head(
        head("PUT /a HTTP/1.1", "Content-Length: nope", "Content-Length: 3"), COURSE
    )
    assert request.content_length == 3


@in_both
def test_header_400_keeps_the_well_formed_request_id(grammar: Grammar) -> None:
    # A rejected request is still logged, with the id its client sent.
    data = head("GET /a.txt HTTP/1.1", "Request-Id: 77", BAD_HEADER)
    assert_error(data, Status.BAD_REQUEST, A_LINE, "77", grammar)
    data = head("GET /a.txt HTTP/1.1", BAD_HEADER, "Request-Id: 1,2")
    assert_error(data, Status.BAD_REQUEST, A_LINE, "0", grammar)


@in_both
def test_header_400_reports_connection_close(grammar: Grammar) -> None:
    error = parse_error(head("GET /a.txt HTTP/1.1", "Connection: close", BAD_HEADER), grammar)
    assert error.status is Status.BAD_REQUEST
    assert error.persistence is Persistence.CLOSE
    assert error.body_length is None


@in_both
def test_invalid_last_repeated_header_counts(grammar: Grammar) -> None:
    data = head("PUT /a HTTP/1.1", "Content-Length: 3", "Content-Length: x")
    assert_error(data, Status.BAD_REQUEST, RequestLine("PUT", "/a", "HTTP/1.1"), grammar=grammar)
    data = head("GET /a.txt HTTP/1.1", "Request-Id: ok", "Request-Id: a,b")
    assert_error(data, Status.BAD_REQUEST, A_LINE, grammar=grammar)


# --- header grammar: RFC 9110/9112 fields (default) -----------------------------------------

CHROMIUM_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/jxl,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
COOKIE = "; ".join(f"c{i:02}=" + "v" * 60 for i in range(64))
"""Sixty-four cookies, 4222 bytes."""
TCHARS = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Host:x", id="no-ows"),
        pytest.param("Host:   x", id="spaces-before-value"),
        pytest.param("Host:\tx", id="tab-before-value"),
        pytest.param("Host: x \t ", id="ows-after-value"),
        pytest.param("Host: \t x \t", id="ows-both-sides"),
        pytest.param("Host:", id="empty-value"),
        pytest.param("Host: ", id="only-space"),
        pytest.param("Host:\t\t", id="only-tabs"),
        pytest.param("K: a\tb", id="tab-inside-value"),
        pytest.param("X_Y!: x", id="underscore-bang-in-name"),
        pytest.param(TCHARS + ": x", id="every-token-char-in-name"),
        pytest.param("K: " + "".join(chr(c) for c in range(0x21, 0x7F)), id="every-vchar"),
        pytest.param("K" * 300 + ": x", id="name-300"),
        pytest.param("K: " + "v" * 1000, id="value-1000"),
        pytest.param("Accept: " + CHROMIUM_ACCEPT, id="accept-145"),
        pytest.param("Cookie: " + COOKIE, id="4k"),
        pytest.param("Authorization: Bearer " + "t" * 2000, id="bearer-token"),
        pytest.param("X: ::::", id="colons-in-value"),
    ],
)
def test_rfc_fields_accepted(header: str) -> None:
    request = parse_head(head("GET /a.txt HTTP/1.1", "Host: h", header, "Request-Id: 8"))
    assert request.line == A_LINE
    assert request.request_id == "8"


def test_long_values_are_realistic() -> None:
    assert len(CHROMIUM_ACCEPT) == 145
    assert len(COOKIE) >= 4096


@pytest.mark.parametrize(
    ("header", "request_id"),
    [
        ("Request-Id:7", "7"),
        ("Request-Id: 7", "7"),
        ("Request-Id:   7", "7"),
        ("Request-Id:\t7", "7"),
        ("Request-Id: \t 7 \t ", "7"),
        ("Request-Id: a b", "a b"),
        ("Request-Id:  a  b  ", "a  b"),
        ("Request-Id: " + "x" * 128, "x" * 128),
    ],
)
def test_rfc_field_values(header: str, request_id: str) -> None:
    assert parse_head(head("GET /a HTTP/1.1", header)).request_id == request_id


def test_rfc_ows_around_the_special_fields() -> None:
    request = parse_head(
        head(
            "PUT /a HTTP/1.1",
            "Content-Length:\t12 ",
            "Expect:  100-continue\t",
            "Connection:close",
        )
    )
    assert request.content_length == 12
    assert request.expect_continue is True
    assert request.persistence is Persistence.CLOSE


def test_course_has_no_ows_around_the_special_fields() -> None:
    # In the course's grammar the value is exactly what follows ": ", so these are not the
    # tokens they would be with the surrounding spaces stripped.
    data = head("PUT /a HTTP/1.1", "Content-Length: 12", "Expect:  100-continue")
    assert parse_head(data, COURSE).expect_continue is False
    data = head("PUT /a HTTP/1.1", "Content-Length: 12", "Expect: 100-continue ")
    assert parse_head(data, COURSE).expect_continue is False


def test_rfc_empty_special_fields() -> None:
    request = parse_head(head("GET /a HTTP/1.1", "Connection:", "Expect:"))
    assert request.persistence is Persistence.KEEP
    assert request.expect_continue is False
    data = head("GET /a HTTP/1.1", "Content-Length:")
    assert_error(data, Status.BAD_REQUEST, RequestLine("GET", "/a", "HTTP/1.1"))


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(("X: a", " b"), id="obs-fold-space"),
        pytest.param(("X: a", "\tb"), id="obs-fold-tab"),
        pytest.param(("X: a", " "), id="obs-fold-blank"),
        pytest.param(("Request-Id: 4", "X : a"), id="space-before-colon"),
        pytest.param(("Request-Id: 4", "X\t: a"), id="tab-before-colon"),
        pytest.param(("Request-Id: 4", "X: a\x00"), id="nul"),
        pytest.param(("Request-Id: 4", "X: \x1b[31m"), id="escape"),
        pytest.param(("Request-Id: 4", "X: a\x7f"), id="del"),
        pytest.param(("Request-Id: 4", "X: \xa0a"), id="nbsp"),
        pytest.param(("Request-Id: 4", "X: a\x0bb"), id="vertical-tab"),
    ],
)
def test_rfc_field_errors_are_400(lines: tuple[str, ...]) -> None:
    error = parse_error(head("GET /a.txt HTTP/1.1", *lines))
    assert error.status is Status.BAD_REQUEST
    assert error.line == A_LINE
    assert error.request_id in ("0", "4")
    assert error.body_length is None


# --- head size ------------------------------------------------------------------------------

SIZES = pytest.mark.parametrize(
    "grammar",
    [
        *GRAMMARS,
        pytest.param(Grammar(course=False, max_head=300), id="default-300"),
        pytest.param(Grammar(course=True, max_head=300), id="course-300"),
    ],
)


@SIZES
def test_head_up_to_the_limit_is_accepted(grammar: Grammar) -> None:
    data = sized_head(grammar.max_head)
    reader = HeadReader(grammar)
    reader.feed(data)
    assert reader.next_event() == parse_head(data, grammar)
    assert reader.buffered == 0


@SIZES
def test_head_one_byte_over_the_limit_is_400(grammar: Grammar) -> None:
    data = sized_head(grammar.max_head + 1)
    assert isinstance(parse_head(data, grammar), Request)  # valid, but too long
    reader = HeadReader(grammar)
    reader.feed(data)
    event = reader.next_event()
    assert isinstance(event, HttpError)
    assert summary(event) == error_summary(Status.BAD_REQUEST, A_LINE)


def test_default_head_of_8192_bytes_with_long_lines() -> None:
    start = b"PUT /a.txt HTTP/1.1\r\nContent-Length: 0\r\nCookie: "
    data = start + b"c" * (DEFAULT_MAX_HEAD - len(start) - 4) + HEAD_END
    assert len(data) == 8192
    reader = HeadReader()
    reader.feed(data)
    event = reader.next_event()
    assert isinstance(event, Request)
    assert event.content_length == 0
    reader = HeadReader()
    reader.feed(data[:-4] + b"c" + HEAD_END)
    assert summary(reader.next_event()) == error_summary(
        Status.BAD_REQUEST, RequestLine("PUT", "/a.txt", "HTTP/1.1")
    )


# --- Content-Length ------------------------------------------------------------------------


@in_both
@pytest.mark.parametrize(
    ("value", "length"),
    [
        ("0", 0),
        ("1", 1),
        ("007", 7),
        ("1048576", 1048576),
        ("0" * 19, 0),
        ("9" * 19, 9_999_999_999_999_999_999),
    ],
)
def test_content_length_accepted(grammar: Grammar, value: str, length: int) -> None:
    request = parse_head(head("PUT /a HTTP/1.1", f"Content-Length: {value}"), grammar)
    assert request.content_length == length


@in_both
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("1" * 20, id="20-digits"),
        pytest.param("0" * 20, id="20-zeros"),
        pytest.param("-1", id="negative"),
        pytest.param("+1", id="plus"),
        pytest.param("1 2", id="inner-space"),
        pytest.param("1.0", id="decimal-point"),
        pytest.param("0x10", id="hex"),
        pytest.param("1e3", id="exponent"),
        pytest.param("1_000", id="underscore"),
        pytest.param("1,1", id="list"),
        pytest.param("5, 5", id="list-of-equal-values"),
        pytest.param("abc", id="letters"),
        pytest.param("\u0661", id="arabic-digit"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_content_length_invalid_is_400(grammar: Grammar, method: str, value: str) -> None:
    data = head(f"{method} /a HTTP/1.1", "Request-Id: q", f"Content-Length: {value}".encode())
    error = assert_error(
        data, Status.BAD_REQUEST, RequestLine(method, "/a", "HTTP/1.1"), "q", grammar
    )
    assert error.body_length is None


@pytest.mark.parametrize(
    "header", ["Content-Length:  1", "Content-Length: 1 ", "Content-Length:\t1"]
)
def test_content_length_whitespace(header: str) -> None:
    # The course's value is everything after ": "; RFC 9110 strips the whitespace around it.
    data = head("PUT /a HTTP/1.1", header)
    assert_error(data, Status.BAD_REQUEST, RequestLine("PUT", "/a", "HTTP/1.1"), grammar=COURSE)
    assert parse_head(data, DEFAULT).content_length == 1


@in_both
def test_put_without_content_length_is_400(grammar: Grammar) -> None:
    data = head("PUT /a HTTP/1.1", "Request-Id: 5")
    assert_error(data, Status.BAD_REQUEST, RequestLine("PUT", "/a", "HTTP/1.1"), "5", grammar)


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param(("5", "6"), id="different"),
        pytest.param(("5", "05"), id="same-number-other-digits"),
        pytest.param(("5", "5", "6"), id="third-differs"),
        pytest.param(("5", "6", "5"), id="back-to-the-first"),
        pytest.param(("0", "1"), id="zero-then-one"),
        pytest.param(("5", "x"), id="then-invalid"),
    ],
)
def test_default_conflicting_content_lengths_are_400(lengths: tuple[str, ...]) -> None:
    # RFC 9110 §8.6: which one counted would be a guess about where the body ends.
    headers = [
        f"{name}: {value}"
        for name, value in zip(
            ("Content-Length", "content-length", "CONTENT-LENGTH"), lengths, strict=False
        )
    ]
    data = head("PUT /a HTTP/1.1", "Request-Id: cl", "Connection: close", *headers)
    error = assert_error(data, Status.BAD_REQUEST, RequestLine("PUT", "/a", "HTTP/1.1"), "cl")
    assert error.persistence is Persistence.CLOSE
    assert error.body_length is None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(("Content-Length: 5", "Content-Length: 5"), id="twice"),
        pytest.param(("Content-Length: 5", "content-length: 5", "CONTENT-LENGTH: 5"), id="thrice"),
        pytest.param(("Content-Length: 5", "Content-Length:\t5  "), id="with-ows"),
        pytest.param(("Content-Length: 5", "X: y", "Content-Length: 5"), id="apart"),
    ],
)
def test_default_identical_repeated_content_lengths_are_accepted(headers: tuple[str, ...]) -> None:
    assert parse_head(head("PUT /a HTTP/1.1", *headers)).content_length == 5


def test_default_conflicting_content_lengths_beat_the_method_not_the_version() -> None:
    lengths = ("Content-Length: 1", "Content-Length: 2")
    line = RequestLine("BREW", "/a", "HTTP/1.1")
    assert_error(head("BREW /a HTTP/1.1", *lengths), Status.BAD_REQUEST, line)
    line = RequestLine("PUT", "/a", "HTTP/2.0")
    assert_error(head("PUT /a HTTP/2.0", *lengths), Status.VERSION_NOT_SUPPORTED, line)


# --- Transfer-Encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_line", "headers"),
    [
        pytest.param("PUT /a HTTP/1.1", ("Transfer-Encoding: chunked",), id="put"),
        pytest.param(
            "PUT /a HTTP/1.1",
            ("Content-Length: 5", "Transfer-Encoding: chunked"),
            id="put-with-length-first",
        ),
        pytest.param(
            "PUT /a HTTP/1.1",
            ("Transfer-Encoding: chunked", "Content-Length: 5"),
            id="put-with-length-after",
        ),
        pytest.param("GET /a HTTP/1.1", ("transfer-encoding: identity",), id="get-identity"),
        pytest.param("GET /a HTTP/1.1", ("Transfer-Encoding:",), id="empty"),
        pytest.param("BREW /a HTTP/1.1", ("Transfer-Encoding: chunked",), id="before-501"),
    ],
)
@pytest.mark.parametrize(
    ("connection", "persistence"),
    [
        (None, Persistence.ONCE),
        ("keep-alive", Persistence.ONCE),
        ("close", Persistence.CLOSE),
    ],
)
def test_default_transfer_encoding_is_400(
    request_line: str,
    headers: tuple[str, ...],
    connection: str | None,
    persistence: Persistence,
) -> None:
    extra = () if connection is None else (f"Connection: {connection}",)
    data = head(request_line, "Request-Id: te", *headers, *extra)
    error = parse_error(data)
    assert summary(error) == error_summary(
        Status.BAD_REQUEST, parse_request_line(request_line.encode()), "te", persistence
    )


@pytest.mark.parametrize(
    ("connection", "persistence"),
    [(None, Persistence.CLOSE), ("keep-alive", Persistence.ONCE), ("close", Persistence.CLOSE)],
)
def test_default_transfer_encoding_is_400_on_http_1_0(
    connection: str | None, persistence: Persistence
) -> None:
    # The error closes the connection; an HTTP/1.0 client that did not ask to keep it is
    # told so, as every HTTP/1.0 response that closes is.
    extra = () if connection is None else (f"Connection: {connection}",)
    error = parse_error(head("GET /a HTTP/1.0", "Transfer-Encoding: chunked", *extra))
    line = RequestLine("GET", "/a", "HTTP/1.0")
    assert summary(error) == error_summary(Status.BAD_REQUEST, line, "0", persistence)


def test_transfer_encoding_comes_after_the_version() -> None:
    data = head("PUT /a HTTP/2.0", "Transfer-Encoding: chunked")
    assert parse_error(data).status is Status.VERSION_NOT_SUPPORTED


def test_course_ignores_transfer_encoding() -> None:
    data = head("PUT /a HTTP/1.1", "Transfer-Encoding: chunked", "Content-Length: 5")
    assert parse_head(data, COURSE).content_length == 5


# --- Request-Id ----------------------------------------------------------------------------


@in_both
def test_request_id_absent_is_zero(grammar: Grammar) -> None:
    assert parse_head(head("GET /a HTTP/1.1", "Host: h"), grammar).request_id == "0"


@in_both
@pytest.mark.parametrize("value", ["1", "abc-DEF", "a b", "~!@#$%^&*()", "x" * 128, "0"])
def test_request_id_verbatim(grammar: Grammar, value: str) -> None:
    data = head("GET /a HTTP/1.1", f"Request-Id: {value}")
    assert parse_head(data, grammar).request_id == value


@in_both
@pytest.mark.parametrize("value", [",", "a,b", "1,", ",1", " , "])
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_request_id_with_comma_is_400(grammar: Grammar, method: str, value: str) -> None:
    data = head(f"{method} /a HTTP/1.1", "Content-Length: 1", f"Request-Id: {value}")
    line = RequestLine(method, "/a", "HTTP/1.1")
    error = assert_error(data, Status.BAD_REQUEST, line, grammar=grammar)
    # The id cannot be logged as one field, so the error carries the default one.
    assert error.request_id == "0"


# --- Expect --------------------------------------------------------------------------------


@in_both
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), False),
        (("Expect: 100-continue",), True),
        (("Expect: 100-Continue",), True),
        (("expect: 100-CONTINUE",), True),
        (("Expect: 100-continue", "Expect: nothing"), False),
        (("Expect: nothing", "Expect: 100-continue"), True),
        (("Expect: 100-continued",), False),
        (("Expect: 200-ok",), False),
        (("X-Expect: 100-continue",), False),
    ],
)
def test_expect_continue(grammar: Grammar, headers: tuple[str, ...], expected: bool) -> None:
    request = parse_head(head("PUT /a HTTP/1.1", "Content-Length: 4", *headers), grammar)
    assert request.expect_continue is expected


def test_expect_continue_counts_only_on_http_1_1() -> None:
    # RFC 9110 §10.1.1: an HTTP/1.0 client never gets a 100 (Continue).
    request = parse_head(head("PUT /a HTTP/1.0", "Content-Length: 4", "Expect: 100-continue"))
    assert request.line.version == "HTTP/1.0"
    assert request.expect_continue is False


# --- Connection and persistence ------------------------------------------------------------

CONNECTION_CASES = [
    ((), False),
    (("Connection: close",), True),
    (("Connection: Close",), True),
    (("connection: CLOSE",), True),
    (("Connection: keep-alive",), False),
    (("Connection: keep-alive, close",), True),
    (("Connection: close, keep-alive",), True),
    (("Connection: foo,close",), True),
    (("Connection: closed",), False),
    (("Connection: noclose",), False),
    (("Connection: close", "Connection: keep-alive"), False),
    (("X-Connection: close",), False),
]


@in_both
@pytest.mark.parametrize(("headers", "close"), CONNECTION_CASES)
def test_connection_close(grammar: Grammar, headers: tuple[str, ...], close: bool) -> None:
    request = parse_head(head("GET /a HTTP/1.1", *headers), grammar)
    assert request.persistence is (Persistence.CLOSE if close else plain(grammar))


@pytest.mark.parametrize(
    ("version", "headers", "persistence"),
    [
        ("HTTP/1.1", (), Persistence.KEEP),
        ("HTTP/1.1", ("Connection: close",), Persistence.CLOSE),
        ("HTTP/1.1", ("Connection: keep-alive",), Persistence.KEEP),
        ("HTTP/1.1", ("Connection: Upgrade",), Persistence.KEEP),
        ("HTTP/1.1", ("Connection:\tclose ",), Persistence.CLOSE),
        ("HTTP/1.0", (), Persistence.CLOSE),
        ("HTTP/1.0", ("Connection: keep-alive",), Persistence.KEEP_ALIVE),
        ("HTTP/1.0", ("Connection: Keep-Alive",), Persistence.KEEP_ALIVE),
        ("HTTP/1.0", ("Connection: foo, keep-alive",), Persistence.KEEP_ALIVE),
        ("HTTP/1.0", ("Connection:keep-alive",), Persistence.KEEP_ALIVE),
        ("HTTP/1.0", ("Connection: keep-alive, close",), Persistence.CLOSE),
        ("HTTP/1.0", ("Connection: close",), Persistence.CLOSE),
        ("HTTP/1.0", ("Connection: keep-alived",), Persistence.CLOSE),
        ("HTTP/1.0", ("Keep-Alive: timeout=5",), Persistence.CLOSE),
        ("HTTP/1.0", ("Connection: keep-alive", "Connection: x"), Persistence.CLOSE),
    ],
)
def test_default_persistence(
    version: str, headers: tuple[str, ...], persistence: Persistence
) -> None:
    request = parse_head(head(f"GET /a {version}", *headers))
    assert request.line.version == version
    assert request.persistence is persistence


@pytest.mark.parametrize(
    ("headers", "persistence"),
    [
        ((), Persistence.ONCE),
        (("Connection: close",), Persistence.CLOSE),
        (("Connection: keep-alive",), Persistence.ONCE),
        (("Connection: keep-alive, close",), Persistence.CLOSE),
    ],
)
def test_course_persistence(headers: tuple[str, ...], persistence: Persistence) -> None:
    # One request per connection (SPEC §4.3); a close the client asked for is echoed.
    assert parse_head(head("GET /a HTTP/1.1", *headers), COURSE).persistence is persistence


def test_http_1_0_is_served_by_default() -> None:
    request = parse_head(head("PUT /a.txt HTTP/1.0", "Content-Length: 2", "Request-Id: 10"))
    assert request == Request(
        line=RequestLine("PUT", "/a.txt", "HTTP/1.0"),
        method=Method.PUT,
        request_id="10",
        content_length=2,
        expect_continue=False,
        persistence=Persistence.CLOSE,
    )
    line = RequestLine("PUT", "/a", "HTTP/1.0")
    assert_error(head("PUT /a HTTP/1.0"), Status.BAD_REQUEST, line)


def test_persists() -> None:
    assert {p for p in Persistence if p.persists} == {Persistence.KEEP, Persistence.KEEP_ALIVE}


@pytest.mark.parametrize(
    ("persistence", "keep", "field"),
    [
        (Persistence.KEEP, True, b""),
        (Persistence.KEEP, False, b""),
        (Persistence.CLOSE, True, b"Connection: close\r\n"),
        (Persistence.CLOSE, False, b"Connection: close\r\n"),
        (Persistence.ONCE, True, b""),
        (Persistence.ONCE, False, b""),
        (Persistence.KEEP_ALIVE, True, b"Connection: keep-alive\r\n"),
        # HTTP/1.0 without keep-alive means the connection ends: nothing needs saying.
        (Persistence.KEEP_ALIVE, False, b""),
    ],
)
def test_connection_header(persistence: Persistence, keep: bool, field: bytes) -> None:
    assert persistence.connection_header(keep) == field


# --- errors and the connection --------------------------------------------------------------


@pytest.mark.parametrize(
    ("grammar", "request_line", "headers", "status"),
    [
        pytest.param(COURSE, "GET /a HTTP/1.0", (), Status.VERSION_NOT_SUPPORTED, id="course-1.0"),
        *(
            pytest.param(grammar, request_line, headers, status, id=f"{grammar_id}-{case}")
            for grammar, grammar_id in ((COURSE, "course"), (DEFAULT, "default"))
            for case, request_line, headers, status in (
                ("505", "GET /a HTTP/2.0", (), Status.VERSION_NOT_SUPPORTED),
                ("no-length", "PUT /a HTTP/1.1", (), Status.BAD_REQUEST),
                ("bad-length", "GET /a HTTP/1.1", ("Content-Length: x",), Status.BAD_REQUEST),
                ("bad-header", "GET /a HTTP/1.1", (BAD_HEADER,), Status.BAD_REQUEST),
            )
        ),
    ],
)
def test_errors_echo_only_a_close(
    grammar: Grammar, request_line: str, headers: tuple[str, ...], status: Status
) -> None:
    # The framing is lost: the connection closes, and says so only if the client asked.
    closing = parse_error(head(request_line, *headers, "Connection: close"), grammar)
    assert closing.status is status
    assert closing.persistence is Persistence.CLOSE
    assert closing.body_length is None
    staying = parse_error(head(request_line, *headers, "Connection: keep-alive"), grammar)
    assert staying.status is status
    assert staying.persistence is Persistence.ONCE
    assert staying.body_length is None


@in_both
@pytest.mark.parametrize(
    ("headers", "close", "body_length"),
    [
        ((), False, 0),
        (("Content-Length: 0",), False, 0),
        (("Content-Length: 5",), False, 5),
        (("Content-Length: 5", "Connection: close"), True, 5),
        (("Connection: close",), True, 0),
        (("Connection: keep-alive", "Content-Length: 12"), False, 12),
    ],
)
def test_501_carries_its_body_length(
    grammar: Grammar, headers: tuple[str, ...], close: bool, body_length: int
) -> None:
    # The body can be skipped: the connection goes on as the request says. The course's
    # mode closes after every request, so there it answers without reading the body.
    error = parse_error(head("BREW /pot HTTP/1.1", "Request-Id: t", *headers), grammar)
    assert summary(error) == error_summary(
        Status.NOT_IMPLEMENTED,
        RequestLine("BREW", "/pot", "HTTP/1.1"),
        "t",
        Persistence.CLOSE if close else plain(grammar),
        None if grammar.course else body_length,
    )


@pytest.mark.parametrize(
    "extra", [("Expect: 100-continue",), ("Expect: 100-Continue", "Content-Length: 9")]
)
def test_501_waited_on_for_a_100_closes_without_the_body(extra: tuple[str, ...]) -> None:
    # RFC 9110 §10.1.1: a client waiting for 100 (Continue) gets the final status at once,
    # and since its body may or may not follow, the connection cannot go on.
    error = parse_error(head("BREW /pot HTTP/1.1", *extra))
    assert (error.status, error.persistence, error.body_length) == (
        Status.NOT_IMPLEMENTED,
        Persistence.ONCE,
        None,
    )


@pytest.mark.parametrize("headers", [(), ("Content-Length: 0",), ("Connection: close",)])
def test_course_501_to_head_closes(headers: tuple[str, ...]) -> None:
    # A client reads a response to HEAD without its body: the 501's body would be taken
    # for the start of the next response, so the connection ends after it.
    error = parse_error(head("HEAD /a HTTP/1.1", *headers), COURSE)
    assert error.status is Status.NOT_IMPLEMENTED
    assert error.body_length is None
    assert error.persistence.persists is False


@pytest.mark.parametrize("method", [Method.GET, Method.PUT, Method.HEAD, Method.DELETE])
def test_default_grammar_serves_four_methods(method: Method) -> None:
    request = parse_head(head(f"{method.value} /a HTTP/1.1", "Content-Length: 0"))
    assert request.method is method
    assert request.conditions is None


@pytest.mark.parametrize(
    ("headers", "persistence"),
    [
        ((), Persistence.CLOSE),
        (("Connection: keep-alive",), Persistence.KEEP_ALIVE),
        (("Connection: close",), Persistence.CLOSE),
    ],
)
def test_default_501_on_http_1_0(headers: tuple[str, ...], persistence: Persistence) -> None:
    error = parse_error(head("POST /a HTTP/1.0", "Content-Length: 3", *headers))
    assert summary(error) == error_summary(
        Status.NOT_IMPLEMENTED, RequestLine("POST", "/a", "HTTP/1.0"), "0", persistence, 3
    )


# --- precedence: request line 400 > version 505 > header 400 > Content-Length 400 > 501 ----


@pytest.mark.parametrize(
    ("grammar", "bad_version"),
    [
        pytest.param(COURSE, "HTTP/1.0", id="course-1.0"),
        pytest.param(COURSE, "HTTP/2.0", id="course-2.0"),
        pytest.param(DEFAULT, "HTTP/2.0", id="default-2.0"),
        pytest.param(DEFAULT, "HTTP/0.9", id="default-0.9"),
    ],
)
@pytest.mark.parametrize(
    ("request_line", "headers", "status", "line"),
    [
        # The request line's syntax beats everything; no line is known.
        pytest.param(
            "FOO /a_b {v}",
            (BAD_HEADER,),
            Status.BAD_REQUEST,
            None,
            id="line-beats-all",
        ),
        pytest.param(
            "PUT /a HTTP/1.1x", ("Request-Id: a,b",), Status.BAD_REQUEST, None, id="line-beats-id"
        ),
        # A well-formed unsupported version beats header and method errors.
        pytest.param(
            "FOO /a {v}",
            (BAD_HEADER, "Content-Length: x"),
            Status.VERSION_NOT_SUPPORTED,
            RequestLine("FOO", "/a", "{v}"),
            id="version-beats-header",
        ),
        pytest.param(
            "PUT /a {v}",
            ("Request-Id: a,b",),
            Status.VERSION_NOT_SUPPORTED,
            RequestLine("PUT", "/a", "{v}"),
            id="version-beats-request-id",
        ),
        pytest.param(
            "PUT /a {v}",
            (),
            Status.VERSION_NOT_SUPPORTED,
            RequestLine("PUT", "/a", "{v}"),
            id="version-beats-missing-length",
        ),
        pytest.param(
            "FOO /a {v}",
            ("Content-Length: 99999999999999999999",),
            Status.VERSION_NOT_SUPPORTED,
            RequestLine("FOO", "/a", "{v}"),
            id="version-beats-length-and-method",
        ),
        # Header syntax beats Content-Length and method.
        pytest.param(
            "FOO /a HTTP/1.1",
            ("Content-Length: x", BAD_HEADER),
            Status.BAD_REQUEST,
            RequestLine("FOO", "/a", "HTTP/1.1"),
            id="header-beats-length-and-method",
        ),
        pytest.param(
            "FOO /a HTTP/1.1",
            ("Request-Id: 1,2",),
            Status.BAD_REQUEST,
            RequestLine("FOO", "/a", "HTTP/1.1"),
            id="request-id-beats-method",
        ),
        # Content-Length beats the method.
        pytest.param(
            "FOO /a HTTP/1.1",
            ("Content-Length: -1",),
            Status.BAD_REQUEST,
            RequestLine("FOO", "/a", "HTTP/1.1"),
            id="length-beats-method",
        ),
        # Content-Length is only required of a PUT: an unknown method without it is a 501.
        pytest.param(
            "FOO /a HTTP/1.1",
            (),
            Status.NOT_IMPLEMENTED,
            RequestLine("FOO", "/a", "HTTP/1.1"),
            id="method-without-length",
        ),
    ],
)
def test_precedence(
    grammar: Grammar,
    bad_version: str,
    request_line: str,
    headers: tuple[str, ...],
    status: Status,
    line: RequestLine | None,
) -> None:
    error = parse_error(head(request_line.format(v=bad_version), *headers), grammar)
    assert error.status is status
    assert error.line == (
        None if line is None else line._replace(version=line.version.format(v=bad_version))
    )


@pytest.mark.parametrize(
    ("grammar", "bad_version"),
    [
        pytest.param(COURSE, "HTTP/1.0", id="course"),
        pytest.param(DEFAULT, "HTTP/2.0", id="default"),
    ],
)
def test_line_is_none_only_for_request_line_errors(grammar: Grammar, bad_version: str) -> None:
    cases = {
        head("GET /a HTTP/1.1 extra"): None,
        head(f"GET /a {bad_version}"): RequestLine("GET", "/a", bad_version),
        head("GET /a HTTP/1.1", "x"): RequestLine("GET", "/a", "HTTP/1.1"),
        head("PUT /a HTTP/1.1"): RequestLine("PUT", "/a", "HTTP/1.1"),
        head("TRACE /a HTTP/1.1"): RequestLine("TRACE", "/a", "HTTP/1.1"),
    }
    for data, line in cases.items():
        assert parse_error(data, grammar).line == line


def test_http_error_defaults() -> None:
    assert str(HttpError(Status.NOT_FOUND)) == "404 Not Found"
    error = HttpError(Status.BAD_REQUEST)
    assert error.status is Status.BAD_REQUEST
    assert error.line is None
    assert error.request_id == "0"
    assert error.persistence is Persistence.ONCE
    assert error.body_length is None


# --- oversized and incomplete heads --------------------------------------------------------


@in_both
def test_oversized_without_request_line_end(grammar: Grammar) -> None:
    error = oversized_head_error(b"G" * grammar.max_head, grammar)
    assert summary(error) == error_summary(Status.BAD_REQUEST)


@in_both
def test_oversized_with_request_line_end_beyond_limit(grammar: Grammar) -> None:
    error = oversized_head_error(b"G" * grammar.max_head + b"\r\n", grammar)
    assert error.status is Status.BAD_REQUEST
    assert error.line is None


@in_both
def test_oversized_with_valid_line_is_400_and_logged(grammar: Grammar) -> None:
    buffer = b"GET /a.txt HTTP/1.1\r\n" + b"X: " + b"y" * grammar.max_head
    error = oversized_head_error(buffer, grammar)
    assert summary(error) == error_summary(Status.BAD_REQUEST, A_LINE)


@in_both
def test_oversized_with_other_version_is_505(grammar: Grammar) -> None:
    buffer = b"PUT /a HTTP/2.0\r\n" + b"H: v\r\n" * (grammar.max_head // 6)
    error = oversized_head_error(buffer, grammar)
    assert error.status is Status.VERSION_NOT_SUPPORTED
    assert error.line == RequestLine("PUT", "/a", "HTTP/2.0")


def test_oversized_http_1_0() -> None:
    buffer = b"PUT /a HTTP/1.0\r\n" + b"H: v\r\n" * 400
    error = oversized_head_error(buffer, COURSE)
    assert error.status is Status.VERSION_NOT_SUPPORTED
    assert error.line == RequestLine("PUT", "/a", "HTTP/1.0")
    buffer = b"PUT /a HTTP/1.0\r\n" + b"H: v\r\n" * 1400
    error = oversized_head_error(buffer, DEFAULT)
    assert error.status is Status.BAD_REQUEST
    assert error.line == RequestLine("PUT", "/a", "HTTP/1.0")


@in_both
def test_oversized_with_unknown_method_is_400(grammar: Grammar) -> None:
    # The size limit is a header error, which comes before the method's 501.
    buffer = b"BREW /pot HTTP/1.1\r\n" + b"H: v\r\n" * (grammar.max_head // 6)
    error = oversized_head_error(buffer, grammar)
    assert error.status is Status.BAD_REQUEST
    assert error.line == RequestLine("BREW", "/pot", "HTTP/1.1")
    assert error.body_length is None


@in_both
def test_oversized_carries_the_request_id_of_whole_header_lines(grammar: Grammar) -> None:
    buffer = b"PUT /a HTTP/1.1\r\nRequest-Id: 42\r\nX: " + b"y" * grammar.max_head
    assert oversized_head_error(buffer, grammar).request_id == "42"
    buffer = b"PUT /a HTTP/0.9\r\nRequest-Id: 43\r\nX: " + b"y" * grammar.max_head
    error = oversized_head_error(buffer, grammar)
    assert error.status is Status.VERSION_NOT_SUPPORTED
    assert error.request_id == "43"


@in_both
def test_oversized_echoes_a_whole_connection_close(grammar: Grammar) -> None:
    buffer = b"PUT /a HTTP/1.1\r\nConnection: close\r\nX: " + b"y" * grammar.max_head
    assert oversized_head_error(buffer, grammar).persistence is Persistence.CLOSE
    buffer = b"PUT /a HTTP/1.1\r\nX: " + b"y" * grammar.max_head + b"\r\nConnection: close\r\n"
    assert oversized_head_error(buffer, grammar).persistence is Persistence.ONCE


@in_both
def test_oversized_ignores_a_request_id_cut_by_the_limit(grammar: Grammar) -> None:
    limit = grammar.max_head
    start = b"GET /a HTTP/1.1\r\n"
    filler = b"X: " + b"y" * 100 + b"\r\n"
    filler *= (limit - len(start) - 40) // len(filler)
    pad = b"Y: " + b"z" * (limit - len(start) - len(filler) - 3 - 2 - len(b"Request-Id: 12"))
    buffer = start + filler + pad + b"\r\n" + b"Request-Id: 1234567\r\n\r\n"
    assert buffer.index(b"Request-Id: 12") + len(b"Request-Id: 12") == limit
    assert oversized_head_error(buffer, grammar).request_id == "0"


@in_both
def test_oversized_with_bad_request_line_is_400_without_line(grammar: Grammar) -> None:
    error = oversized_head_error(b"GET /a_b HTTP/1.1\r\n" + b"H: v\r\n" * 1400, grammar)
    assert error.status is Status.BAD_REQUEST
    assert error.line is None


@in_both
@pytest.mark.parametrize(
    ("buffer", "course_id", "default_id"),
    [
        (b"", "0", "0"),
        (b"GET /a HTTP/1.1", "0", "0"),
        (b"GET /a HTTP/1.1\r\n", "0", "0"),
        (b"GET /a HTTP/1.1\r\nRequest-Id: 9", "0", "0"),
        (b"GET /a HTTP/1.1\r\nRequest-Id: 9\r", "0", "0"),
        (b"GET /a HTTP/1.1\r\nRequest-Id: 9\r\n", "9", "9"),
        (b"GET /a HTTP/1.1\r\nrequest-ID: 9\r\nContent-Le", "9", "9"),
        (b"GET /a HTTP/1.1\r\nRequest-Id: 9\r\nbad\r\nRequest-Id: 10\r\nX", "10", "10"),
        (b"GET /a HTTP/1.1\r\nRequest-Id: 9\r\nRequest-Id:10\r\n", "9", "10"),
        (b"GET /a HTTP/1.1\r\nRequest-Id:\t 11 \r\n", "0", "11"),
        (b"GET /a HTTP/1.1\r\nRequest-Id: 9,1\r\n", "0", "0"),
    ],
)
def test_partial_request_id(
    grammar: Grammar, buffer: bytes, course_id: str, default_id: str
) -> None:
    expected = course_id if grammar.course else default_id
    reader = HeadReader(grammar)
    reader.feed(buffer)
    assert reader.next_event() is NEED_DATA
    assert reader.partial_request_id() == expected
    assert incomplete_head_error(buffer, None, grammar).request_id == expected


@in_both
def test_incomplete_head_error(grammar: Grammar) -> None:
    buffer = b"GET /a.txt HTTP/1.1\r\nRequest-Id: 5\r\nConnection: close\r\nX"
    error = incomplete_head_error(buffer, A_LINE, grammar)
    assert summary(error) == error_summary(Status.BAD_REQUEST, A_LINE, "5", Persistence.CLOSE)
    error = incomplete_head_error(buffer, A_LINE, grammar, Status.VERSION_NOT_SUPPORTED)
    assert error.status is Status.VERSION_NOT_SUPPORTED
    error = incomplete_head_error(b"GET /a.txt HTTP/1.1\r\nConnection: close", None, grammar)
    assert summary(error) == error_summary(Status.BAD_REQUEST)


# --- HeadReader -----------------------------------------------------------------------------


@in_both
def test_reader_head_fed_one_byte_at_a_time(grammar: Grammar) -> None:
    data = head("PUT /b.txt HTTP/1.1", "Request-Id: 3", "Content-Length: 5", "Expect: 100-continue")
    line_end = data.index(b"\r\n") + 2
    reader = HeadReader(grammar)
    assert reader.line is None
    for count, byte in enumerate(data[:-1], start=1):
        reader.feed(bytes([byte]))
        assert reader.next_event() is NEED_DATA
        assert reader.buffered == count
        expected_line = RequestLine("PUT", "/b.txt", "HTTP/1.1") if count >= line_end else None
        assert reader.line == expected_line
    reader.feed(data[-1:])
    request = reader.next_event()
    assert request == parse_head(data, grammar)
    assert isinstance(request, Request)
    assert request.expect_continue is True
    assert reader.buffered == 0
    assert reader.line is None
    for byte in b"hello":
        reader.feed(bytes([byte]))
        assert reader.buffered == 1
        assert reader.take(5) == bytes([byte])
    assert reader.next_event() is NEED_DATA
    assert reader.eof() is None


@pytest.mark.parametrize("grammar", [DEFAULT])  # the course's mode closes after a 501
def test_reader_pipelined_heads_in_one_chunk(grammar: Grammar) -> None:
    stream = (
        head("GET /a HTTP/1.1", "Request-Id: 1")
        + head("PUT /b HTTP/1.1", "Request-Id: 2", "Content-Length: 6")
        + b"he\r\n\r\n"  # a body that looks like the end of a head
        + head("BREW /c HTTP/1.1", "Request-Id: 3", "Content-Length: 3")
        + b"abc"
        + head("GET /d HTTP/1.1", "Request-Id: 4", "Connection: close")
    )
    reader = HeadReader(grammar)
    reader.feed(stream)
    first = reader.next_event()
    assert isinstance(first, Request)
    assert (first.line.uri, first.request_id, first.content_length) == ("/a", "1", None)
    second = reader.next_event()
    assert isinstance(second, Request)
    assert (second.line.uri, second.request_id, second.content_length) == ("/b", "2", 6)
    assert reader.take(3) == b"he\r"
    assert reader.buffered == len(stream) - stream.index(b"\n\r\nBREW")
    assert reader.take(3) == b"\n\r\n"
    assert reader.take(0) == b""
    third = reader.next_event()
    assert summary(third) == error_summary(
        Status.NOT_IMPLEMENTED,
        RequestLine("BREW", "/c", "HTTP/1.1"),
        "3",
        plain(grammar),
        3,
    )
    assert reader.take(3) == b"abc"
    fourth = reader.next_event()
    assert isinstance(fourth, Request)
    assert (fourth.line.uri, fourth.request_id) == ("/d", "4")
    assert fourth.persistence is Persistence.CLOSE
    assert reader.buffered == 0
    assert reader.next_event() is NEED_DATA
    assert reader.take(10) == b""


@in_both
def test_reader_take_returns_what_is_buffered(grammar: Grammar) -> None:
    reader = HeadReader(grammar)
    reader.feed(head("PUT /a HTTP/1.1", "Content-Length: 10") + b"abcd")
    assert isinstance(reader.next_event(), Request)
    assert reader.buffered == 4
    assert reader.take(10) == b"abcd"
    assert reader.buffered == 0
    reader.feed(b"efghijGET")
    assert reader.take(6) == b"efghij"
    assert reader.buffered == 3
    assert reader.next_event() is NEED_DATA
    assert reader.eof() is not None  # "GET" is the start of another head


@in_both
@pytest.mark.parametrize("line", BAD_REQUEST_LINES)
def test_reader_answers_a_bad_request_line_at_once(grammar: Grammar, line: bytes) -> None:
    reader = HeadReader(grammar)
    reader.feed(line + b"\r\nHost: h\r\n")
    # (By default an empty line is skipped, and then "Host: h" is no request line.)
    assert summary(reader.next_event()) == error_summary(Status.BAD_REQUEST)


@in_both
def test_reader_waits_for_the_whole_head_of_a_bad_version(grammar: Grammar) -> None:
    # A 505 carries the head's Request-Id, so it waits for the head.
    reader = HeadReader(grammar)
    reader.feed(b"GET /a HTTP/2.0\r\n")
    assert reader.next_event() is NEED_DATA
    assert reader.line == RequestLine("GET", "/a", "HTTP/2.0")
    reader.feed(b"Request-Id: 6\r\n\r\n")
    assert summary(reader.next_event()) == error_summary(
        Status.VERSION_NOT_SUPPORTED, RequestLine("GET", "/a", "HTTP/2.0"), "6"
    )


@in_both
def test_reader_detects_an_oversized_head(grammar: Grammar) -> None:
    data = sized_head(grammar.max_head + 100, b"PUT /a.txt HTTP/1.1")
    data = data.replace(b"\r\nX: ", b"\r\nRequest-Id: r\r\nConnection: close\r\nX: ", 1)
    reader = HeadReader(grammar)
    reader.feed(data[: grammar.max_head - 1])
    assert reader.next_event() is NEED_DATA
    reader.feed(data[grammar.max_head - 1 : grammar.max_head])
    assert summary(reader.next_event()) == error_summary(
        Status.BAD_REQUEST, RequestLine("PUT", "/a.txt", "HTTP/1.1"), "r", Persistence.CLOSE
    )


@in_both
def test_reader_detects_an_oversized_request_line(grammar: Grammar) -> None:
    reader = HeadReader(grammar)
    reader.feed(b"GET /" + b"a" * (grammar.max_head - 6))
    assert reader.next_event() is NEED_DATA
    reader.feed(b"a")
    assert summary(reader.next_event()) == error_summary(Status.BAD_REQUEST)


@in_both
def test_reader_oversized_second_head(grammar: Grammar) -> None:
    reader = HeadReader(grammar)
    reader.feed(head("GET /a HTTP/1.1") + b"GET /b HTTP/0.9\r\n" + b"X: y\r\n" * grammar.max_head)
    assert isinstance(reader.next_event(), Request)
    assert summary(reader.next_event()) == error_summary(
        Status.VERSION_NOT_SUPPORTED, RequestLine("GET", "/b", "HTTP/0.9")
    )


@in_both
def test_reader_eof(grammar: Grammar) -> None:
    reader = HeadReader(grammar)
    assert reader.eof() is None  # nothing came: a quiet end
    reader.feed(head("GET /a HTTP/1.1"))
    assert isinstance(reader.next_event(), Request)
    assert reader.eof() is None  # between requests
    reader.feed(b"PUT /a.txt HTTP/1.1\r\nRequest-Id: 7\r\nContent-Len")
    assert reader.next_event() is NEED_DATA
    assert reader.partial_request_id() == "7"
    assert summary(reader.eof()) == error_summary(
        Status.BAD_REQUEST, RequestLine("PUT", "/a.txt", "HTTP/1.1"), "7"
    )


@in_both
@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        (b"G", error_summary(Status.BAD_REQUEST)),
        (b"GET /a.txt HTTP/1.1", error_summary(Status.BAD_REQUEST)),
        (b"GET /a.txt HTTP/1.1\r\n", error_summary(Status.BAD_REQUEST, A_LINE)),
        (
            b"GET /a.txt HTTP/1.1\r\nRequest-Id: 5\r\nConnection: close\r\n",
            error_summary(Status.BAD_REQUEST, A_LINE, "5", Persistence.CLOSE),
        ),
        (
            b"GET /a.txt HTTP/1.1\r\nRequest-Id: 5\r\nConnection: close",
            error_summary(Status.BAD_REQUEST, A_LINE, "5"),
        ),
        # A client that stops short is a 400 whatever its version (SPEC §4.2).
        (
            b"GET /a HTTP/2.0\r\nRequest-Id: 5\r\n",
            error_summary(Status.BAD_REQUEST, RequestLine("GET", "/a", "HTTP/2.0"), "5"),
        ),
    ],
)
def test_reader_eof_and_stall_mid_head(
    grammar: Grammar, buffer: bytes, expected: tuple[object, ...]
) -> None:
    reader = HeadReader(grammar)
    reader.feed(buffer)
    assert reader.next_event() is NEED_DATA
    assert summary(reader.eof()) == expected
    assert summary(reader.stalled(first=True)) == expected
    assert summary(reader.stalled(first=False)) == expected
    assert reader.buffered == len(buffer)  # nothing is consumed by asking


@in_both
def test_reader_stalled(grammar: Grammar) -> None:
    reader = HeadReader(grammar)
    # A connection whose first request never starts gets a 400; a later one ends quietly.
    assert summary(reader.stalled(first=True)) == error_summary(Status.BAD_REQUEST)
    assert reader.stalled(first=False) is None
    reader.feed(head("GET /a HTTP/1.1"))
    assert isinstance(reader.next_event(), Request)
    assert reader.stalled(first=False) is None
    reader.feed(b"GET /a.txt HTTP/1.1\r\nRequest-Id: 8\r\n")
    assert reader.next_event() is NEED_DATA
    assert summary(reader.stalled(first=False)) == error_summary(Status.BAD_REQUEST, A_LINE, "8")


def test_reader_skips_empty_lines_before_a_request_line() -> None:
    reader = HeadReader()
    reader.feed(b"\r\n\r\n" + head("GET /a HTTP/1.1"))
    first = reader.next_event()
    assert isinstance(first, Request)
    assert first.line == RequestLine("GET", "/a", "HTTP/1.1")
    # Some clients send a CRLF after a body.
    reader.feed(head("PUT /b HTTP/1.1", "Content-Length: 2") + b"hi\r\n" + head("GET /c HTTP/1.1"))
    second = reader.next_event()
    assert isinstance(second, Request)
    assert second.line.uri == "/b"
    assert reader.take(2) == b"hi"
    third = reader.next_event()
    assert isinstance(third, Request)
    assert third.line.uri == "/c"
    # Empty lines alone are no request: the connection is still idle.
    reader.feed(b"\r\n")
    assert reader.next_event() is NEED_DATA
    assert reader.buffered == 0
    assert reader.eof() is None
    assert reader.stalled(first=False) is None
    reader.feed(b"\r\n\r\nGET /d HTTP/1.1\r\n\r\n")
    fourth = reader.next_event()
    assert isinstance(fourth, Request)
    assert fourth.line.uri == "/d"


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"\r\n\r\nGET /a HTTP/1.1\r\n\r\n", id="two-empty-lines"),
        pytest.param(b"\r\n\rGET /a HTTP/1.1\r\n\r\n", id="crlf-then-bare-cr"),
        pytest.param(b"\r\n\nGET /a HTTP/1.1\r\n\r\n", id="crlf-then-bare-lf"),
    ],
)
def test_reader_empty_lines_split_anywhere(stream: bytes) -> None:
    # Where the reads happen to split the stream must not change what it means.
    whole = drive(HeadReader(), [stream])
    for cut in range(1, len(stream)):
        assert drive(HeadReader(), [stream[:cut], stream[cut:]]) == whole, cut
    if stream.startswith(b"\r\n\r\n"):
        assert whole == [parse_head(head("GET /a HTTP/1.1"))]


def test_course_reader_does_not_skip_empty_lines() -> None:
    reader = HeadReader(COURSE)
    reader.feed(b"\r\n" + head("GET /a HTTP/1.1"))
    assert summary(reader.next_event()) == error_summary(Status.BAD_REQUEST)


# --- responses, byte-exact (SPEC §4) -------------------------------------------------------


FIXED_STATUSES = [s for s in Status if s not in (Status.PARTIAL_CONTENT, Status.NOT_MODIFIED)]
"""Statuses with a fixed body: not a 206 (a range of a file) or a 304 (no body)."""
FIXED = {
    Status.OK: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nOK\n",
    Status.CREATED: b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\nCreated\n",
    Status.BAD_REQUEST: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\n\r\nBad Request\n",
    Status.UNAUTHORIZED: b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\nUnauthorized\n",
    Status.FORBIDDEN: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nForbidden\n",
    Status.NOT_FOUND: b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nNot Found\n",
    Status.PRECONDITION_FAILED: (
        b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 20\r\n\r\nPrecondition Failed\n"
    ),
    Status.PAYLOAD_TOO_LARGE: (
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 18\r\n\r\nPayload Too Large\n"
    ),
    Status.RANGE_NOT_SATISFIABLE: (
        b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 22\r\n\r\nRange Not Satisfiable\n"
    ),
    Status.INTERNAL_ERROR: (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 22\r\n\r\nInternal Server Error\n"
    ),
    Status.NOT_IMPLEMENTED: (
        b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 16\r\n\r\nNot Implemented\n"
    ),
    Status.VERSION_NOT_SUPPORTED: (
        b"HTTP/1.1 505 Version Not Supported\r\nContent-Length: 22\r\n\r\nVersion Not Supported\n"
    ),
}

FIXED_CLOSE = {
    Status.OK: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOK\n",
    Status.CREATED: (
        b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\nConnection: close\r\n\r\nCreated\n"
    ),
    Status.BAD_REQUEST: (
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Request\n"
    ),
    Status.UNAUTHORIZED: (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
        b"Unauthorized\n"
    ),
    Status.FORBIDDEN: (
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\nConnection: close\r\n\r\nForbidden\n"
    ),
    Status.NOT_FOUND: (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nNot Found\n"
    ),
    Status.PRECONDITION_FAILED: (
        b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
        b"Precondition Failed\n"
    ),
    Status.PAYLOAD_TOO_LARGE: (
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 18\r\nConnection: close\r\n\r\n"
        b"Payload Too Large\n"
    ),
    Status.RANGE_NOT_SATISFIABLE: (
        b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 22\r\nConnection: close\r\n"
        b"\r\nRange Not Satisfiable\n"
    ),
    Status.INTERNAL_ERROR: (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 22\r\nConnection: close\r\n\r\n"
        b"Internal Server Error\n"
    ),
    Status.NOT_IMPLEMENTED: (
        b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 16\r\nConnection: close\r\n\r\n"
        b"Not Implemented\n"
    ),
    Status.VERSION_NOT_SUPPORTED: (
        b"HTTP/1.1 505 Version Not Supported\r\nContent-Length: 22\r\nConnection: close\r\n\r\n"
        b"Version Not Supported\n"
    ),
}


def test_status_table_is_exactly_the_spec() -> None:
    # The statuses asrv.http sends, including 413 for the optional --max-body limit.
    assert {int(s) for s in Status} == {
        *(200, 201, 206, 304, 400, 401, 403, 404, 412, 413, 416, 500, 501, 505)
    }
    assert set(FIXED) == set(FIXED_STATUSES)
    assert set(FIXED_CLOSE) == set(FIXED_STATUSES)


@pytest.mark.parametrize("status", FIXED_STATUSES)
def test_fixed_response(status: Status) -> None:
    assert fixed_response(status) == FIXED[status]
    assert fixed_response(status, b"") == FIXED[status]


@pytest.mark.parametrize("status", FIXED_STATUSES)
def test_fixed_response_with_close(status: Status) -> None:
    assert fixed_response(status, b"Connection: close\r\n") == FIXED_CLOSE[status]


@pytest.mark.parametrize("status", FIXED_STATUSES)
def test_response_head_matches_fixed_response(status: Status) -> None:
    expected = FIXED[status]
    split = expected.index(HEAD_END) + len(HEAD_END)
    assert response_head(status, len(expected) - split) == expected[:split]
    assert status.body == expected[split:]


@pytest.mark.parametrize("status", FIXED_STATUSES)
def test_response_head_with_close_matches_fixed_response(status: Status) -> None:
    expected = FIXED_CLOSE[status]
    split = expected.index(HEAD_END) + len(HEAD_END)
    head_bytes = response_head(status, len(expected) - split, b"Connection: close\r\n")
    assert head_bytes == expected[:split]


def test_response_head_for_a_file() -> None:
    assert response_head(Status.OK, 0) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert (
        response_head(Status.OK, 123456789012)
        == b"HTTP/1.1 200 OK\r\nContent-Length: 123456789012\r\n\r\n"
    )
    assert (
        response_head(Status.OK, 5, b"Connection: close\r\n")
        == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    )
    assert (
        response_head(Status.OK, 5, b"Connection: keep-alive\r\n")
        == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("persistence", "keep", "response"),
    [
        (Persistence.KEEP, True, b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\nCreated\n"),
        (Persistence.ONCE, False, b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\nCreated\n"),
        (
            Persistence.CLOSE,
            False,
            b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\nConnection: close\r\n\r\nCreated\n",
        ),
        (
            Persistence.KEEP_ALIVE,
            True,
            b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\nConnection: keep-alive\r\n\r\nCreated\n",
        ),
        (
            Persistence.KEEP_ALIVE,
            False,
            b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\nCreated\n",
        ),
    ],
)
def test_response_for_each_persistence(
    persistence: Persistence, keep: bool, response: bytes
) -> None:
    # An HTTP/1.0 request is answered in HTTP/1.1 form (SPEC §3).
    assert fixed_response(Status.CREATED, persistence.connection_header(keep)) == response


def test_fixed_response_to_a_closing_request() -> None:
    request = parse_head(head("GET /a HTTP/1.1", "Connection: close"))
    field = request.persistence.connection_header(keep=False)
    assert fixed_response(Status.OK, field) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOK\n"
    )
    assert fixed_response(Status.OK, b"Connection: close\r\n") == fixed_response(Status.OK, field)


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (Status.OK, "OK"),
        (Status.CREATED, "Created"),
        (Status.BAD_REQUEST, "Bad Request"),
        (Status.FORBIDDEN, "Forbidden"),
        (Status.NOT_FOUND, "Not Found"),
        (Status.PAYLOAD_TOO_LARGE, "Payload Too Large"),
        (Status.INTERNAL_ERROR, "Internal Server Error"),
        (Status.NOT_IMPLEMENTED, "Not Implemented"),
        (Status.VERSION_NOT_SUPPORTED, "Version Not Supported"),
    ],
)
def test_phrases(status: Status, phrase: str) -> None:
    assert status.phrase == phrase
    assert status.body == phrase.encode() + b"\n"


# --- properties ----------------------------------------------------------------------------

LETTERS = string.ascii_letters
NAME_CHARS = string.ascii_letters + string.digits + ".-"
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F))


def mostly(common: st.SearchStrategy[str], other: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`common` three times out of four, else `other`."""
    return st.integers(0, 3).flatmap(lambda n: other if n == 1 else common)


# Mostly the implemented methods and versions, so that many heads are valid requests.
methods = mostly(st.sampled_from(["GET", "PUT"]), st.text(alphabet=LETTERS, min_size=1, max_size=8))
uris = st.text(alphabet=NAME_CHARS, min_size=1, max_size=63).map(lambda s: "/" + s)
versions = mostly(
    st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
    st.builds("HTTP/{}.{}".format, st.integers(0, 9), st.integers(0, 9)),
)
SPECIAL_KEYS = ["Content-Length", "Request-Id", "Expect", "Connection", "Transfer-Encoding"]
keys = st.one_of(
    st.sampled_from(SPECIAL_KEYS).flatmap(
        lambda k: st.lists(st.booleans(), min_size=len(k), max_size=len(k)).map(
            lambda upper: "".join(
                c.upper() if u else c.lower() for c, u in zip(k, upper, strict=True)
            )
        )
    ),
    st.text(alphabet=NAME_CHARS, min_size=1, max_size=128),
)
values = st.one_of(
    st.text(alphabet=string.digits, min_size=1, max_size=21),
    st.sampled_from(
        [
            "100-continue",
            "100-Continue",
            " 100-continue",
            "close",
            "keep-alive",
            "keep-alive, close",
            "a,b",
            "7",
            " 7",
            "7 ",
            "chunked",
        ]
    ),
    st.text(alphabet=VALUE_CHARS, min_size=1, max_size=128),
)
header_lists = st.lists(st.tuples(keys, values), max_size=8)


def expected_outcome(
    grammar: Grammar, method: str, uri: str, version: str, headers: list[tuple[str, str]]
) -> object:
    """What SPEC §3 says about a head whose lines are all well-formed in both grammars:
    a Request, or the summary of an HttpError."""
    line = RequestLine(method, uri, version)
    fields: dict[str, str] = {}
    conflicting = False
    for key, raw in headers:
        name = key.lower()
        value = raw if grammar.course else raw.strip(" \t")
        if not grammar.course and name == "content-length" and fields.get(name, value) != value:
            conflicting = True
        fields[name] = value
    request_id = fields.get("request-id", "0")
    logged_id = "0" if "," in request_id else request_id
    tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    if "close" in tokens:
        persistence = Persistence.CLOSE
    elif grammar.course:
        persistence = Persistence.ONCE
    elif version == "HTTP/1.0":
        persistence = Persistence.KEEP_ALIVE if "keep-alive" in tokens else Persistence.CLOSE
    else:
        persistence = Persistence.KEEP
    closing = Persistence.CLOSE if persistence is Persistence.CLOSE else Persistence.ONCE

    if not (version == "HTTP/1.1" or (version == "HTTP/1.0" and not grammar.course)):
        return error_summary(Status.VERSION_NOT_SUPPORTED, line, logged_id, closing)
    raw_length = fields.get("content-length")
    length_ok = raw_length is None or (
        raw_length.isascii() and raw_length.isdigit() and 1 <= len(raw_length) <= 19
    )
    if (
        conflicting
        or "," in request_id
        or (raw_length is None and method == "PUT")
        or not length_ok
        or (not grammar.course and "transfer-encoding" in fields)
    ):
        return error_summary(Status.BAD_REQUEST, line, logged_id, closing)
    length = None if raw_length is None else int(raw_length)
    expect = version == "HTTP/1.1" and fields.get("expect", "").lower() == "100-continue"
    if method not in ("GET", "PUT"):
        if grammar.course or expect or method == "HEAD":
            return error_summary(Status.NOT_IMPLEMENTED, line, logged_id, closing)
        return error_summary(Status.NOT_IMPLEMENTED, line, logged_id, persistence, length or 0)
    return Request(
        line=line,
        method=Method(method),
        request_id=request_id,
        content_length=length,
        expect_continue=expect,
        persistence=persistence,
    )


@in_both
@settings(max_examples=150, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(methods, uris, versions, header_lists)
def test_well_formed_heads_round_trip(
    grammar: Grammar, method: str, uri: str, version: str, headers: list[tuple[str, str]]
) -> None:
    data = head(f"{method} {uri} {version}", *(f"{k}: {v}" for k, v in headers))
    expected = expected_outcome(grammar, method, uri, version, headers)
    if isinstance(expected, Request):
        assert parse_head(data, grammar) == expected
    else:
        assert summary(parse_error(data, grammar)) == expected


@in_both
@settings(max_examples=60, database=None)
@given(uris, st.lists(st.tuples(keys, values), max_size=5), st.integers(0, 10**19 - 1))
def test_valid_put_round_trips(
    grammar: Grammar, uri: str, headers: list[tuple[str, str]], length: int
) -> None:
    special = ("content-length", "request-id", "transfer-encoding")
    lines = [f"{k}: {v}" for k, v in headers if k.lower() not in special]
    request = parse_head(
        head(f"PUT {uri} HTTP/1.1", *lines, f"Content-Length: {length}", "Request-Id: rid"),
        grammar,
    )
    assert request.method is Method.PUT
    assert request.line.uri == uri
    assert request.line.filename == uri[1:]
    assert request.content_length == length
    assert request.request_id == "rid"


ows = st.text(alphabet=" \t", max_size=3)
rfc_names = st.text(alphabet=TCHARS, min_size=1, max_size=40).filter(
    lambda name: name.lower() not in {key.lower() for key in SPECIAL_KEYS}
)
rfc_values = st.text(alphabet=VALUE_CHARS + "\t", max_size=300)
request_ids = st.text(alphabet=VALUE_CHARS.replace(",", ""), min_size=1, max_size=40).filter(
    lambda value: value.strip(" ") != ""
)


@settings(max_examples=150, database=None)
@given(
    st.lists(st.tuples(rfc_names, ows, rfc_values, ows), max_size=6),
    st.tuples(ows, request_ids, ows),
    st.tuples(ows, st.integers(0, 10**19 - 1), ows),
)
def test_rfc_fields_round_trip(
    fields: list[tuple[str, str, str, str]],
    request_id: tuple[str, str, str],
    length: tuple[str, int, str],
) -> None:
    lines = [f"{name}:{before}{value}{after}" for name, before, value, after in fields]
    request = parse_head(
        head(
            "PUT /a HTTP/1.1",
            *lines,
            "Request-Id:{}{}{}".format(*request_id),
            "Content-Length:{}{}{}".format(*length),
        )
    )
    assert request.request_id == request_id[1].strip(" ")
    assert request.content_length == length[1]
    assert request.persistence is Persistence.KEEP


line_fragments = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"GET /a HTTP/1.1",
            b"PUT /a HTTP/1.1",
            b"FOO /a HTTP/1.0",
            b"GET /a HTTP/1.0",
            b"Content-Length: 5",
            b"Content-Length:5",
            b"Content-Length: 99999999999999999999",
            b"Request-Id: a,b",
            b"Connection: close",
            b"Connection: keep-alive",
            b"Expect: 100-continue",
            b"Transfer-Encoding: chunked",
            b"",
            b"\r",
            b"\n",
            b":",
            b": ",
            b"\t",
        ]
    ),
    st.text(alphabet=VALUE_CHARS, max_size=40).map(str.encode),
)


@in_both
@settings(max_examples=100, database=None)
@given(st.lists(line_fragments, min_size=1, max_size=8))
def test_arbitrary_lines_never_crash(grammar: Grammar, lines: list[bytes]) -> None:
    data = b"\r\n".join(lines) + HEAD_END
    try:
        result = parse_head(data, grammar)
    except HttpError as error:
        assert error.status in (
            Status.BAD_REQUEST,
            Status.VERSION_NOT_SUPPORTED,
            Status.NOT_IMPLEMENTED,
        )
        assert (error.body_length is not None) == (error.status is Status.NOT_IMPLEMENTED)
        assert "," not in error.request_id
    else:
        assert isinstance(result, Request)
        assert "," not in result.request_id


@in_both
@settings(max_examples=200, database=None)
@given(st.binary(max_size=COURSE_MAX_HEAD))
def test_arbitrary_bytes_never_crash(grammar: Grammar, data: bytes) -> None:
    try:
        result = parse_head(data + HEAD_END, grammar)
    except HttpError as error:
        assert isinstance(error.status, Status)
    else:
        assert isinstance(result, Request)


@in_both
@settings(max_examples=100, database=None)
@given(st.lists(line_fragments, min_size=1, max_size=4))
def test_oversized_never_crashes(grammar: Grammar, lines: list[bytes]) -> None:
    data = b"\r\n".join(lines)
    error = oversized_head_error(data + b"H" * max(0, grammar.max_head - len(data)), grammar)
    assert error.status in (Status.BAD_REQUEST, Status.VERSION_NOT_SUPPORTED)
    assert "," not in error.request_id
    assert error.body_length is None
    reader = HeadReader(grammar)
    reader.feed(data)
    request_id = reader.partial_request_id()
    assert request_id
    assert "," not in request_id


def drive(reader: HeadReader, chunks: list[bytes]) -> list[object]:
    """The events a connection sees, reading `chunks` and taking each body as it comes,
    until the stream ends or an error ends the connection."""
    events: list[object] = []
    pending = 0
    body = b""
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            if pending:
                piece = reader.take(pending)
                body += piece
                pending -= len(piece)
                if pending:
                    break
                events.append(("body", body))
                body = b""
            event = reader.next_event()
            if event is NEED_DATA:
                break
            events.append(summary(event))
            if isinstance(event, Request):
                pending = event.content_length or 0
            elif event.body_length is None:
                return events
            else:
                pending = event.body_length
    return events


@st.composite
def request_streams(draw: st.DrawFn, grammar: Grammar) -> tuple[bytes, list[object]]:
    """Several valid requests, pipelined, with their bodies; and the events they make."""
    stream = b""
    events: list[object] = []
    for _ in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from(["GET", "PUT", "POST", "BREW"]))
        version = "HTTP/1.1" if grammar.course else draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
        lines = [f"{method} {draw(uris)} {version}"]
        if draw(st.booleans()):
            lines.append(
                "Request-Id: " + draw(st.text(alphabet=NAME_CHARS, min_size=1, max_size=8))
            )
        connection = draw(st.sampled_from([None, "keep-alive", "close"]))
        if connection is not None:
            lines.append(f"Connection: {connection}")
        body = draw(st.binary(max_size=40))
        if method == "PUT" or body or draw(st.booleans()):
            lines.append(f"Content-Length: {len(body)}")
        else:
            body = b""
        if draw(st.booleans()):
            lines.append("Expect: 100-continue")
        data = head(*lines)
        if not grammar.course:
            stream += b"\r\n" * draw(st.integers(0, 2))
        try:
            event: object = parse_head(data, grammar)
        except HttpError as error:
            assert error.status is Status.NOT_IMPLEMENTED
            events.append(summary(error))
            if error.body_length is None:
                stream += data
                break  # the connection ends with this 501: nothing after it is read
        else:
            events.append(event)
        stream += data + body
        if body:
            events.append(("body", body))
    return stream, events


@in_both
@settings(max_examples=150, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_split_yields_the_same_events(grammar: Grammar, data: st.DataObject) -> None:
    stream, expected = data.draw(request_streams(grammar))
    if data.draw(st.booleans()):
        chunks = [stream[i : i + 1] for i in range(len(stream))]
    else:
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=10))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert b"".join(chunks) == stream
    reader = HeadReader(grammar)
    assert drive(reader, chunks) == expected
    assert drive(HeadReader(grammar), [stream]) == expected
    assert reader.buffered == 0
    assert reader.line is None
    assert reader.eof() is None
    assert reader.stalled(first=False) is None


@in_both
@settings(max_examples=150, database=None)
@given(st.lists(st.lists(line_fragments, max_size=6).map(b"\r\n".join), max_size=6))
def test_reader_never_raises(grammar: Grammar, chunks: list[bytes]) -> None:
    reader = HeadReader(grammar)
    for event in drive(reader, chunks):
        assert isinstance(event, (Request, tuple))
    for end in (reader.eof(), reader.stalled(first=True), reader.stalled(first=False)):
        assert end is None or end.status in (Status.BAD_REQUEST, Status.VERSION_NOT_SUPPORTED)
    assert "," not in reader.partial_request_id()

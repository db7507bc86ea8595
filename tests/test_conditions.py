"""Conditional and range requests as data: parsing the fields, and deciding them against a
version (RFC 9110 §13, §14; SPEC §5.2, §5.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asrv.conditions import (
    ANY,
    ByteRange,
    Conditions,
    ReadDecision,
    ReadOutcome,
    Span,
    decide_read,
    parse_conditions,
    parse_range,
    parse_tags,
    resolve,
    write_allowed,
)
from asrv.http import COURSE, parse_head

ETAG = '"w-1f-2a-3b"'
OTHER = '"w-1f-2b-3c"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-4", ByteRange(0, 4, None)),
        ("bytes=5-", ByteRange(5, None, None)),
        ("bytes=-3", ByteRange(None, None, 3)),
        ("bytes=-0", ByteRange(None, None, 0)),
        ("BYTES = 7-7", ByteRange(7, 7, None)),
        ("bytes=0-0", ByteRange(0, 0, None)),
        (f"bytes={'9' * 19}-", ByteRange(int("9" * 19), None, None)),
        # Ignored: the whole file is sent.
        ("bytes=5-3", None),
        ("bytes=0-1,3-4", None),
        ("bytes=0-1, 3-4", None),
        ("items=0-4", None),
        ("bytes=", None),
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes=1", None),
        ("bytes 0-4", None),
        ("bytes=+1-2", None),
        ("bytes=--1", None),
        (f"bytes={'9' * 20}-", None),
    ],
)
def test_parse_range(value: str, expected: ByteRange | None) -> None:
    assert parse_range(value) == expected


@pytest.mark.parametrize(
    ("asked", "size", "expected"),
    [
        (ByteRange(0, 4, None), 10, Span(0, 4, 10)),
        (ByteRange(5, 100, None), 10, Span(5, 9, 10)),
        (ByteRange(9, None, None), 10, Span(9, 9, 10)),
        (ByteRange(10, None, None), 10, None),
        (ByteRange(10, 20, None), 10, None),
        (ByteRange(None, None, 3), 10, Span(7, 9, 10)),
        (ByteRange(None, None, 30), 10, Span(0, 9, 10)),
        (ByteRange(None, None, 0), 10, None),
        (ByteRange(0, None, None), 0, None),
        (ByteRange(None, None, 5), 0, None),
    ],
)
def test_resolve_range(asked: ByteRange, size: int, expected: Span | None) -> None:
    assert resolve(asked, size) == expected


def test_span_describes_itself() -> None:
    span = Span(5, 9, 10)
    assert (span.length, span.content_range()) == (5, "bytes 5-9/10")


@given(
    first=st.integers(0, 1 << 40),
    length=st.integers(0, 1 << 40),
    size=st.integers(0, 1 << 40),
)
def test_resolved_spans_lie_inside_the_file(first: int, length: int, size: int) -> None:
    for asked in (
        ByteRange(first, first + length, None),
        ByteRange(first, None, None),
        ByteRange(None, None, length),
    ):
        span = resolve(asked, size)
        if span is not None:
            assert 0 <= span.first <= span.last < size == span.size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*", ANY),
        (" * ", ANY),
        (ETAG, frozenset({ETAG})),
        (f"{ETAG}, {OTHER}", frozenset({ETAG, OTHER})),
        (f'W/{ETAG},"x"', frozenset({f"W/{ETAG}", '"x"'})),
        ("unquoted, *", frozenset()),
        ("", frozenset()),
    ],
)
def test_parse_tags(value: str, expected: object) -> None:
    assert parse_tags(value) == expected


def test_plain_fields_make_no_conditions() -> None:
    assert parse_conditions({"host": "x", "request-id": "1"}) is None
    conditions = parse_conditions({"if-match": ETAG, "range": "bytes=1-2", "if-range": ETAG})
    assert conditions == Conditions(frozenset({ETAG}), None, ByteRange(1, 2, None), ETAG)
    # A Range asrv ignores still makes the request one that gets an ETag.
    assert parse_conditions({"range": "bytes=1-2,4-5"}) == Conditions()


def test_course_grammar_ignores_the_fields() -> None:
    head = b"GET /a HTTP/1.1\r\nRange: bytes=0-1\r\nIf-Match: *\r\n\r\n"
    assert parse_head(head).conditions is not None
    assert parse_head(head, COURSE).conditions is None


def read(conditions: Conditions | None, *, size: int = 10, ranged: bool = True) -> ReadDecision:
    return decide_read(conditions, ETAG, size, ranged=ranged)


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (None, ReadDecision(ReadOutcome.WHOLE)),
        (Conditions(if_match=ANY), ReadDecision(ReadOutcome.WHOLE)),
        (Conditions(if_match=frozenset({ETAG})), ReadDecision(ReadOutcome.WHOLE)),
        (Conditions(if_match=frozenset({OTHER})), ReadDecision(ReadOutcome.PRECONDITION_FAILED)),
        (
            Conditions(if_match=frozenset({f"W/{ETAG}"})),
            ReadDecision(ReadOutcome.PRECONDITION_FAILED),
        ),
        (Conditions(if_none_match=ANY), ReadDecision(ReadOutcome.NOT_MODIFIED)),
        (Conditions(if_none_match=frozenset({ETAG})), ReadDecision(ReadOutcome.NOT_MODIFIED)),
        (
            Conditions(if_none_match=frozenset({f"W/{ETAG}"})),
            ReadDecision(ReadOutcome.NOT_MODIFIED),
        ),
        (Conditions(if_none_match=frozenset({OTHER})), ReadDecision(ReadOutcome.WHOLE)),
        # If-Match is decided first: a failed one is a 412 even when If-None-Match matches.
        (
            Conditions(if_match=frozenset({OTHER}), if_none_match=ANY),
            ReadDecision(ReadOutcome.PRECONDITION_FAILED),
        ),
        (
            Conditions(range=ByteRange(2, 3, None)),
            ReadDecision(ReadOutcome.PARTIAL, Span(2, 3, 10)),
        ),
        (Conditions(range=ByteRange(10, None, None)), ReadDecision(ReadOutcome.UNSATISFIABLE)),
        # A 304 wins over a range.
        (
            Conditions(if_none_match=ANY, range=ByteRange(2, 3, None)),
            ReadDecision(ReadOutcome.NOT_MODIFIED),
        ),
        # If-Range: the range only for the current version, else the whole file.
        (
            Conditions(range=ByteRange(2, 3, None), if_range=ETAG),
            ReadDecision(ReadOutcome.PARTIAL, Span(2, 3, 10)),
        ),
        (Conditions(range=ByteRange(2, 3, None), if_range=OTHER), ReadDecision(ReadOutcome.WHOLE)),
        (
            Conditions(range=ByteRange(2, 3, None), if_range=f"W/{ETAG}"),
            ReadDecision(ReadOutcome.WHOLE),
        ),
        (
            Conditions(range=ByteRange(2, 3, None), if_range="Sun, 29 Nov 2026 12:00:00 GMT"),
            ReadDecision(ReadOutcome.WHOLE),
        ),
        (
            Conditions(range=ByteRange(20, None, None), if_range=OTHER),
            ReadDecision(ReadOutcome.WHOLE),
        ),
        (Conditions(if_range=ETAG), ReadDecision(ReadOutcome.WHOLE)),
    ],
)
def test_decide_read(conditions: Conditions | None, expected: ReadDecision) -> None:
    assert read(conditions) == expected


def test_a_suffix_of_an_empty_file_is_the_whole_empty_file() -> None:
    # RFC 9110 §14.1.1: the one satisfiable range of an empty file, with no byte to send.
    assert read(Conditions(range=ByteRange(None, None, 5)), size=0) == ReadDecision(
        ReadOutcome.WHOLE
    )
    assert read(Conditions(range=ByteRange(None, None, 0)), size=0) == ReadDecision(
        ReadOutcome.UNSATISFIABLE
    )
    assert read(Conditions(range=ByteRange(0, None, None)), size=0) == ReadDecision(
        ReadOutcome.UNSATISFIABLE
    )


def test_only_if_match_and_if_none_match_make_a_write_conditional() -> None:
    assert Conditions(if_match=ANY).preconditions
    assert Conditions(if_none_match=frozenset()).preconditions
    assert not Conditions(range=ByteRange(0, 1, None), if_range=ETAG).preconditions


def test_head_ignores_the_range() -> None:
    conditions = Conditions(range=ByteRange(20, None, None))
    assert read(conditions, ranged=False) == ReadDecision(ReadOutcome.WHOLE)


@pytest.mark.parametrize(
    ("conditions", "current", "allowed"),
    [
        (None, None, True),
        (None, ETAG, True),
        (Conditions(if_match=ANY), ETAG, True),
        (Conditions(if_match=ANY), None, False),
        (Conditions(if_match=frozenset({ETAG})), ETAG, True),
        (Conditions(if_match=frozenset({ETAG, OTHER})), ETAG, True),
        (Conditions(if_match=frozenset({OTHER})), ETAG, False),
        (Conditions(if_match=frozenset({ETAG})), None, False),
        (Conditions(if_match=frozenset({f"W/{ETAG}"})), ETAG, False),
        (Conditions(if_match=frozenset()), ETAG, False),
        (Conditions(if_none_match=ANY), None, True),
        (Conditions(if_none_match=ANY), ETAG, False),
        (Conditions(if_none_match=frozenset({ETAG})), ETAG, False),
        (Conditions(if_none_match=frozenset({OTHER})), ETAG, True),
        (Conditions(if_match=frozenset({ETAG}), if_none_match=frozenset({ETAG})), ETAG, False),
        (Conditions(range=ByteRange(0, 1, None)), ETAG, True),
    ],
)
def test_write_allowed(conditions: Conditions | None, current: str | None, allowed: bool) -> None:
    assert write_allowed(conditions, current) is allowed

"""Conditional and range requests as data (RFC 9110 §13 and §14), free of files and sockets.

A request's `If-Match`, `If-None-Match`, `Range` and `If-Range` fields become one
`Conditions`; the store decides it against the current version of the file, under the
file's lock, with `decide_read` (GET, HEAD) or `write_allowed` (PUT, DELETE). The order of
evaluation is RFC 9110 §13.2.2: If-Match, then If-None-Match, then If-Range and Range.

ETags are compared as the strings asrv sends (quoted, strong). A weak tag (`W/"..."`) never
matches strongly, so it fails an If-Match and an If-Range; If-None-Match compares weakly.
Field values that are not lists of entity tags match nothing: a client that sent one cannot
have got it from asrv.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')
_DIGITS = re.compile(r"[0-9]{1,19}")


class AnyTag(enum.Enum):
    """`*`: any current version of the file matches."""

    ANY = "*"


ANY = AnyTag.ANY

TagSet = AnyTag | frozenset[str]
"""`*`, or the entity tags of a list, as sent (with their quotes and any `W/`)."""


class ByteRange(NamedTuple):
    """One `bytes=` range as sent: `first-last`, `first-`, or the `-suffix` last bytes."""

    first: int | None
    last: int | None
    suffix: int | None


class Span(NamedTuple):
    """Bytes `first` to `last`, inclusive, of a file of `size` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


class Conditions(NamedTuple):
    """What a request asks beyond a plain GET, HEAD, PUT or DELETE."""

    if_match: TagSet | None = None
    if_none_match: TagSet | None = None
    range: ByteRange | None = None
    """The one range asked for; None without a Range field, or with one asrv ignores
    (another unit, several ranges, malformed): the whole file is then sent."""
    if_range: str | None = None

    @property
    def preconditions(self) -> bool:
        """Whether a write is conditional (Range and If-Range mean nothing to one)."""
        return self.if_match is not None or self.if_none_match is not None


class ReadOutcome(enum.Enum):
    """What a GET or HEAD of an existing file gets, once its conditions are decided."""

    WHOLE = "whole"
    PARTIAL = "partial"
    NOT_MODIFIED = "not modified"
    PRECONDITION_FAILED = "precondition failed"
    UNSATISFIABLE = "unsatisfiable"


class ReadDecision(NamedTuple):
    outcome: ReadOutcome
    span: Span | None = None
    """The bytes to send for PARTIAL."""


NAMES = frozenset({"if-match", "if-none-match", "range", "if-range"})
"""The (lower-cased) fields that make a request conditional or ranged."""


def parse_conditions(fields: dict[str, str]) -> Conditions | None:
    """The conditions among a request's fields (lower-cased names); None if it has none."""
    if NAMES.isdisjoint(fields):
        return None
    if_match = fields.get("if-match")
    if_none_match = fields.get("if-none-match")
    raw_range = fields.get("range")
    return Conditions(
        if_match=None if if_match is None else parse_tags(if_match),
        if_none_match=None if if_none_match is None else parse_tags(if_none_match),
        range=None if raw_range is None else parse_range(raw_range),
        if_range=fields.get("if-range"),
    )


def parse_tags(value: str) -> TagSet:
    """An If-Match or If-None-Match value: `*`, or its entity tags (malformed members,
    which can match nothing, are left out)."""
    if value.strip() == "*":
        return ANY
    members = (member.strip(" \t") for member in value.split(","))
    return frozenset(member for member in members if _ENTITY_TAG.fullmatch(member))


def parse_range(value: str) -> ByteRange | None:
    """A Range value asrv serves: exactly one range of bytes. None for anything else, which
    RFC 9110 §14.2 lets a server ignore (the whole file is sent)."""
    unit, equals, ranges = value.partition("=")
    if not equals or unit.strip(" \t").lower() != "bytes" or "," in ranges:
        return None
    first, dash, last = ranges.strip(" \t").partition("-")
    if not dash:
        return None
    if not first:
        return ByteRange(None, None, int(last)) if _DIGITS.fullmatch(last) else None
    if _DIGITS.fullmatch(first) is None:
        return None
    if not last:
        return ByteRange(int(first), None, None)
    if _DIGITS.fullmatch(last) is None or int(last) < int(first):
        return None
    return ByteRange(int(first), int(last), None)


def resolve(asked: ByteRange, size: int) -> Span | None:
    """The bytes of a file of `size` that `asked` selects; None if none (416)."""
    if asked.suffix is not None:
        if asked.suffix == 0 or size == 0:
            return None
        return Span(max(0, size - asked.suffix), size - 1, size)
    assert asked.first is not None
    if asked.first >= size:
        return None
    last = size - 1 if asked.last is None else min(asked.last, size - 1)
    return Span(asked.first, last, size)


def _strong_match(tags: TagSet, etag: str) -> bool:
    return tags is ANY or etag in tags


def _weak_match(tags: TagSet, etag: str) -> bool:
    if tags is ANY:
        return True
    return any(tag.removeprefix("W/") == etag for tag in tags)


def decide_read(
    conditions: Conditions | None, etag: str, size: int, *, ranged: bool
) -> ReadDecision:
    """The outcome of a GET (`ranged`) or HEAD of an existing file whose current version is
    `etag` and `size` bytes long."""
    if conditions is None:
        return ReadDecision(ReadOutcome.WHOLE)
    if conditions.if_match is not None and not _strong_match(conditions.if_match, etag):
        return ReadDecision(ReadOutcome.PRECONDITION_FAILED)
    if conditions.if_none_match is not None and _weak_match(conditions.if_none_match, etag):
        return ReadDecision(ReadOutcome.NOT_MODIFIED)
    asked = conditions.range
    if not ranged or asked is None:
        return ReadDecision(ReadOutcome.WHOLE)
    # If-Range: only a strong tag equal to the current one keeps the range (a date never
    # matches: asrv sends no Last-Modified).
    if conditions.if_range is not None and conditions.if_range.strip(" \t") != etag:
        return ReadDecision(ReadOutcome.WHOLE)
    if size == 0 and asked.suffix:
        # RFC 9110 §14.1.1: the one satisfiable range of an empty file, with no byte a 206
        # could send: the whole (empty) file.
        return ReadDecision(ReadOutcome.WHOLE)
    span = resolve(asked, size)
    if span is None:
        return ReadDecision(ReadOutcome.UNSATISFIABLE)
    return ReadDecision(ReadOutcome.PARTIAL, span)


def write_allowed(conditions: Conditions | None, etag: str | None) -> bool:
    """Whether a PUT or DELETE may change a file whose current version is `etag` (None: the
    file does not exist). False means 412."""
    if conditions is None:
        return True
    if conditions.if_match is not None and (
        etag is None or not _strong_match(conditions.if_match, etag)
    ):
        return False
    return not (
        conditions.if_none_match is not None
        and etag is not None
        and _weak_match(conditions.if_none_match, etag)
    )

"""Check an asrv audit log, alone or against the history of a load run (`asrv.load`).

    python -m asrv.check audit.log                      # every line whole and well-formed
    python -m asrv.check audit.log run.jsonl --final-dir ROOT

With the log alone: every line ends with a newline and reads `METHOD,URI,STATUS,REQUEST-ID`
as SPEC §3, §4 and §6 allow (a status the method can get, `POSSIBLE`; a request id without a
comma). With a history as well, the run's lines must be a linearization of what the clients
saw:

- replay: processing the lines in order against a single-threaded model of the files,
  starting from the history's initial contents (inferred from the first responses when the
  history has none), reproduces every recorded status and response: bodies by sha256, and
  for HEAD, DELETE, Range and the conditions of SPEC §5.2 and §5.3 (history version 2) also
  the declared Content-Length of a HEAD or 304, the Content-Range and bytes of a 206 and
  the Content-Range of a 416;
- ETags: the model knows which version of each file is current (the file as it was before
  the run, or the one a PUT's line wrote) and learns each version's ETag from the responses
  in log order. A response that names a version must name the current one by the ETag it
  is known by; two ETags for one version (`etag-mismatch`) or one ETag for two versions, of
  any files (`etag-collision`), are violations. A request's If-Match, If-None-Match and
  If-Range tags are judged by what is known: a tag known to be another version's does not
  match; one never seen before may (the server's outcome is accepted, and a match teaches
  the model the current version's ETag); `*` matches any file that exists;
- real time: when request A's response was complete before request B was sent, A's line
  comes first;
- lines per request: exactly one for each request that got a response, at most one for a
  request that got none (its logged effect is then replayed too), none for an id the run
  never sent.

The bytes of a 206 are checked where the model can know them: a version written by a PUT
of `asrv.load` holds `body_for` its id (confirmed once per version against the recorded
sha256), and a range of the whole file has the file's sha256; elsewhere (say, a file that
was there before the run) its length and Content-Range are.

The history is the JSON lines `asrv.load` writes (its module notes describe them): version
1, of GETs and PUTs, or version 2, whose records add the condition and range headers sent
and the response's ETag, Content-Range and declared Content-Length.

Which lines are the run's: those from the first to the last line carrying one of the
history's ids (the lines around them, say from other runs appending to the same log, are
only checked for form); `--since-line N` makes the run's part start at line N instead, for
when lines from others may precede the run's first line (N: one more than `wc -l` of the
log before the run). Any line in the run's part for an id the history lacks is a violation:
someone else used the server meanwhile, and the model cannot account for it.

`--final-dir DIR` also compares the files in DIR, for every URI of the history, with the
replay's final state, a deleted file included (so it is meaningful for the last run on a
root, once it is over).

Exit status: 0 when every check passes, 1 on a violation, 2 on bad input (an unreadable
file, a malformed history, a bad command line).
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import re
import stat
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from asrv.load import body_for

PHRASES = {
    200: "OK",
    201: "Created",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    412: "Precondition Failed",
    413: "Payload Too Large",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
}
"""Every status asrv sends (SPEC §4.1); the body of each, but a GET's 200 and 206 and any 304,
is the phrase and a newline."""
FIXED_BODIES = {status: f"{phrase}\n".encode() for status, phrase in PHRASES.items()} | {304: b""}
FIXED_BODY_SHA256 = {
    status: hashlib.sha256(body).hexdigest() for status, body in FIXED_BODIES.items()
}
NO_EFFECT = frozenset({400, 401, 403, 413, 500, 503, 505})
"""Statuses that change no file and say nothing about one (503: cluster mode, not committed)."""
POSSIBLE = {
    "GET": {200, 206, 304, 404, 412, 416} | NO_EFFECT,
    "HEAD": {200, 304, 404, 412, 501} | NO_EFFECT,
    "PUT": {200, 201, 412} | NO_EFFECT,
    "DELETE": {200, 404, 412, 501} | NO_EFFECT,
}
"""The statuses each method can get (201 only creates, 404 only reads or deletes, 206 and 416
only answer a GET's Range, 501 is for other methods, and for HEAD and DELETE with
`--course`)."""
OTHER_METHODS_POSSIBLE = frozenset({400, 501, 505})
CONDITION_HEADERS = frozenset({"If-Match", "If-None-Match", "Range", "If-Range"})
"""The request headers a history records: those that make a request conditional or ranged."""

# The id is the client's Request-Id as sent: visible ASCII, spaces and tabs, no comma, of
# any length (the course's grammar caps it at 128; the default grammar only caps the head).
LINE = re.compile(r"([a-zA-Z]{1,8}),(/[a-zA-Z0-9.-]{1,63}),([0-9]{3}),([\t -+\--~]*)")
SHA256 = re.compile(r"[0-9a-f]{64}")
ENTITY_TAG = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')
"""An entity tag of an If-Match or If-None-Match list (RFC 9110 §8.8.3), W/ when weak."""
STRONG_TAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')
RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
"""The one Range form asrv serves: a single range of bytes (anything else gets the whole file)."""
CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)")
UNSATISFIED_RANGE = re.compile(r"bytes \*/([0-9]+)")
HISTORY_FORMAT = "asrv-history"
HISTORY_VERSIONS = (1, 2)
DEFAULT_REPORT_LIMIT = 20


class BadInput(Exception):
    """A file cannot be read, or the history is not one `asrv.load` could have written."""


class Content(NamedTuple):
    """A file's content, known by its sha256 and length."""

    sha256: str
    length: int

    def __str__(self) -> str:
        return f"{self.length} bytes, sha256 {self.sha256[:12]}"


class Unknown(enum.Enum):
    """What the model may not know about a file when the history has no initial state."""

    ANYTHING = "unknown"
    PRESENT = "present, content unknown"


State = Content | Unknown | None
"""A file in the model: its content, None when absent, or what little is known."""


class LogLine(NamedTuple):
    """One well-formed audit-log line and its 1-based line number."""

    number: int
    method: str
    uri: str
    status: int
    request_id: str


class Request(NamedTuple):
    """One request of the history, as its client saw it."""

    request_id: str
    method: str
    uri: str
    body: Content | None
    invoke: float
    complete: float | None
    status: int | None
    response: Content | None
    headers: dict[str, str]
    """The condition and range headers sent (`CONDITION_HEADERS`), by name."""
    etag: str | None
    """The response's ETag, as sent (quotes included)."""
    content_range: str | None
    content_length: int | None
    """The response's declared Content-Length (a HEAD reads no body; a 304 declares none)."""

    def describe(self) -> str:
        outcome = "no response" if self.status is None else f"answered {self.status}"
        sent = "".join(f", {name}: {value}" for name, value in self.headers.items())
        return f"request {self.request_id} ({self.method} {self.uri}{sent}, {outcome})"


@dataclass(frozen=True)
class History:
    """A load run: the known initial contents, and the requests by id."""

    initial: dict[str, State]
    requests: dict[str, Request]

    def uris(self) -> set[str]:
        """Every URI the run touched or recorded."""
        return set(self.initial) | {request.uri for request in self.requests.values()}


@dataclass(frozen=True, slots=True)
class Violation:
    """One reason the log is wrong: a short kind and a sentence naming lines and requests."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class Report:
    """The outcome of a check."""

    lines: int = 0
    run_lines: int = 0
    requests: int = 0
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[str]:
        """The kinds of violation found."""
        return {violation.kind for violation in self.violations}

    def render(self, limit: int = DEFAULT_REPORT_LIMIT) -> str:
        """A human-readable account: a verdict line, then the first `limit` violations."""
        scope = f"{self.lines} log lines"
        if self.requests:
            scope += f", {self.run_lines} of them this run's, {self.requests} requests"
        if self.ok:
            return f"asrv.check: ok: {scope} checked in {self.seconds:.2f} s"
        shown = self.violations[:limit]
        more = len(self.violations) - len(shown)
        lines = [f"asrv.check: {len(self.violations)} violations in {scope}:"]
        lines += [f"  {violation}" for violation in shown]
        if more:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)


def read_log(path: Path) -> tuple[list[LogLine], list[Violation]]:
    """The well-formed lines of a log, and a violation for each line that is not."""
    try:
        # latin-1 maps every byte to one character; the line pattern admits ASCII only.
        chunks = path.read_bytes().decode("latin-1").split("\n")
    except OSError as error:
        raise BadInput(f"cannot read the log: {error}") from None
    lines: list[LogLine] = []
    violations: list[Violation] = []
    for number, chunk in enumerate(chunks[:-1], start=1):
        match = LINE.fullmatch(chunk)
        if match is None or int(match[3]) not in POSSIBLE.get(match[1], OTHER_METHODS_POSSIBLE):
            violations.append(Violation("malformed-line", f"line {number}: {chunk[:160]!r}"))
            continue
        lines.append(LogLine(number, match[1], match[2], int(match[3]), match[4]))
    if chunks[-1]:
        detail = f"line {len(chunks)} does not end with a newline: {chunks[-1][:160]!r}"
        violations.append(Violation("torn-line", detail))
    return lines, violations


def read_history(path: Path) -> History:
    """Parse a history file; `BadInput` names the first thing wrong with it."""
    try:
        with path.open("rb") as stream:
            records = [
                (number, _parse_json(line, number))
                for number, line in enumerate(stream, start=1)
                if not line.isspace()
            ]
    except OSError as error:
        raise BadInput(f"cannot read the history: {error}") from None
    if not records:
        raise BadInput("the history is empty")
    initial = _parse_header(*records[0])
    requests: dict[str, Request] = {}
    for number, record in records[1:]:
        request = _parse_request(record, number)
        if request.request_id in requests:
            raise BadInput(f"history line {number}: request id {request.request_id} again")
        requests[request.request_id] = request
    return History(initial, requests)


def _parse_json(line: bytes, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise BadInput(f"history line {number}: not JSON ({error})") from None
    if not isinstance(record, dict):
        raise BadInput(f"history line {number}: not a JSON object")
    return record


def _parse_header(number: int, header: dict[str, Any]) -> dict[str, State]:
    if header.get("type") != "header" or header.get("format") != HISTORY_FORMAT:
        raise BadInput(f"history line {number}: not an {HISTORY_FORMAT} header")
    if header.get("version") not in HISTORY_VERSIONS:
        version = header.get("version")
        raise BadInput(f"history line {number}: version {version!r} is not supported")
    initial = header.get("initial")
    if initial is None:
        return {}
    if not isinstance(initial, dict):
        raise BadInput(f"history line {number}: 'initial' must be an object or null")
    return {uri: _parse_content(content, "initial", number) for uri, content in initial.items()}


def _parse_content(value: Any, what: str, number: int) -> Content | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadInput(f"history line {number}: {what} must be an object or null")
    return _content(value.get("sha256"), value.get("length"), what, number)


def _content(sha256: Any, length: Any, what: str, number: int) -> Content:
    if not isinstance(sha256, str) or SHA256.fullmatch(sha256) is None:
        raise BadInput(f"history line {number}: {what}: bad sha256 {sha256!r}")
    if type(length) is not int or length < 0:
        raise BadInput(f"history line {number}: {what}: bad length {length!r}")
    return Content(sha256, length)


def _parse_request(record: dict[str, Any], number: int) -> Request:
    def bad(name: str) -> BadInput:
        return BadInput(f"history line {number}: bad or missing {name!r}: {record.get(name)!r}")

    # `type(...) in` rather than isinstance: a bool is no number here, and it is faster.
    for name in ("id", "method", "uri"):
        if type(record.get(name)) is not str:
            raise bad(name)
    if record.get("type") != "request":
        raise bad("type")
    invoke: Any = record.get("invoke")
    complete: Any = record.get("complete")
    status: Any = record.get("status")
    if type(invoke) not in (int, float):
        raise bad("invoke")
    if status is not None and type(status) is not int:
        raise bad("status")
    if (complete is None) != (status is None) or type(complete) not in (int, float, type(None)):
        raise bad("complete")
    body = None
    if record["method"] == "PUT":
        body = _content(record.get("body_sha256"), record.get("body_length"), "body", number)
    response = None
    if status is not None:
        response = _content(
            record.get("response_sha256"), record.get("response_length"), "response", number
        )
    headers: Any = record.get("headers") or {}
    if type(headers) is not dict or not all(
        name in CONDITION_HEADERS and type(value) is str for name, value in headers.items()
    ):
        raise bad("headers")
    # Absent in version 1, and wherever the response had no such header.
    etag, content_range = record.get("response_etag"), record.get("content_range")
    content_length = record.get("content_length")
    if type(etag) not in (str, type(None)):
        raise bad("response_etag")
    if type(content_range) not in (str, type(None)):
        raise bad("content_range")
    if content_length is not None and (type(content_length) is not int or content_length < 0):
        raise bad("content_length")
    return Request(
        record["id"],
        record["method"],
        record["uri"],
        body,
        float(invoke),
        complete,
        status,
        response,
        headers,
        etag,
        content_range,
        content_length,
    )


def select_run(lines: list[LogLine], history: History, since_line: int | None) -> list[LogLine]:
    """The lines that belong to the history's run: from `since_line` (by default, the first
    line with one of the run's ids) to the last line with one of the run's ids."""
    indices = [index for index, line in enumerate(lines) if line.request_id in history.requests]
    if not indices:
        return []
    first = indices[0]
    if since_line is not None:
        first = next((i for i, line in enumerate(lines) if line.number >= since_line), len(lines))
    return lines[first : indices[-1] + 1]


def check_membership(
    run_lines: Sequence[LogLine], history: History
) -> tuple[list[LogLine], list[Violation]]:
    """The first line of each known request, in log order, and the lines that are wrong:
    foreign ids, duplicates, answered requests without a line."""
    first: dict[str, LogLine] = {}
    violations: list[Violation] = []
    for line in run_lines:
        if line.request_id not in history.requests:
            detail = f"line {line.number} has id {line.request_id!r}, which the run never sent"
            violations.append(Violation("foreign-id", detail))
        elif line.request_id in first:
            detail = (
                f"request {line.request_id} has line {first[line.request_id].number} "
                f"and again line {line.number}"
            )
            violations.append(Violation("duplicate-line", detail))
        else:
            first[line.request_id] = line
    for request in history.requests.values():
        if request.status is not None and request.request_id not in first:
            violations.append(Violation("missing-line", f"{request.describe()} has no line"))
    return list(first.values()), violations


Problem = tuple[str, str]
"""What is wrong with one line: the kind of violation, and why."""


class Version(NamedTuple):
    """One version of a file: as it was before the run (no writer), or as a PUT's line wrote it."""

    uri: str
    writer: LogLine | None

    def __str__(self) -> str:
        if self.writer is None:
            return f"{self.uri} as it was before the run"
        return f"{self.uri} as written by line {self.writer.number} ({self.writer.request_id})"


@dataclass
class _Model:
    """The single-threaded server: each file's state, which line last wrote or deleted it, and
    the ETag of each version as far as the responses have shown them."""

    files: dict[str, State]
    requests: dict[str, Request]
    writers: dict[str, LogLine] = field(default_factory=dict)
    etags: dict[Version, str] = field(default_factory=dict)
    versions: dict[str, Version] = field(default_factory=dict)
    """The version each known ETag names: the inverse of `etags`."""
    derived: dict[str, bool] = field(default_factory=dict)
    """Whether a PUT's recorded body is `body_for` its id, by request id (checked once)."""

    def state(self, uri: str) -> State:
        return self.files.get(uri, Unknown.ANYTHING)

    def current(self, uri: str) -> Version | None:
        """The file's current version; None when it is absent."""
        if self.state(uri) is None:
            return None
        return Version(uri, self.writers.get(uri))

    def size(self, uri: str) -> int | None:
        """The file's length, when the model knows it."""
        state = self.state(uri)
        return state.length if isinstance(state, Content) else None

    def write(self, line: LogLine, content: Content | None) -> None:
        self.files[line.uri] = content
        self.writers[line.uri] = line

    def delete(self, line: LogLine) -> None:
        self.files[line.uri] = None
        self.writers[line.uri] = line

    def bind(self, version: Version, etag: str) -> Problem | None:
        """Learn that `etag` names `version`, or say how that contradicts what is known."""
        known = self.etags.get(version)
        if known is not None:
            if known == etag:
                return None
            return "etag-mismatch", f"ETag {etag} for {version}, which has ETag {known}"
        owner = self.versions.get(etag)
        if owner is not None:
            return "etag-collision", f"ETag {etag} for {version}, but it names {owner}"
        self.etags[version] = etag
        self.versions[etag] = version
        return None

    def matches(self, value: str, uri: str, *, weak: bool) -> bool | None:
        """Whether an If-Match (strong comparison) or If-None-Match (weak) value matches the
        file's current version; None when the model cannot tell: the version's ETag is not
        known yet and the value lists a tag that names no known version."""
        version = self.current(uri)
        if version is None:
            return False
        if value.strip() == "*":
            return True
        tags = _listed_tags(value, weak=weak)
        etag = self.etags.get(version)
        if etag is not None:
            return etag in tags
        return None if any(tag not in self.versions for tag in tags) else False

    def if_range_matches(self, value: str, uri: str) -> bool | None:
        """Whether an If-Range value is the current version's strong ETag (a date never is)."""
        if STRONG_TAG.fullmatch(value.strip()) is None:
            return False
        return self.matches(value, uri, weak=False)

    def learn_match(self, value: str, uri: str, *, weak: bool) -> Problem | None:
        """The server took `value` as matching the current version: when the model could not
        tell and the value lists a single unknown tag, that tag is the version's ETag."""
        version = self.current(uri)
        if version is None or version in self.etags or value.strip() == "*":
            return None
        unknown = {tag for tag in _listed_tags(value, weak=weak) if tag not in self.versions}
        return self.bind(version, unknown.pop()) if len(unknown) == 1 else None

    def range_sha256(self, uri: str, first: int, last: int) -> str | None:
        """sha256 of the current version's bytes first..last, when the model can know them:
        a PUT of `asrv.load` wrote `body_for` its id, and any whole file has its sha256."""
        state = self.state(uri)
        if isinstance(state, Content) and (first, last) == (0, state.length - 1):
            return state.sha256
        writer = self.writers.get(uri)
        if writer is None or not self._derived(writer.request_id):
            return None
        return hashlib.sha256(body_for(writer.request_id, last + 1, first)).hexdigest()

    def _derived(self, request_id: str) -> bool:
        derived = self.derived.get(request_id)
        if derived is None:
            body = self.requests[request_id].body
            derived = body is not None and body == _derived_content(request_id, body.length)
            self.derived[request_id] = derived
        return derived

    def describe(self, uri: str) -> str:
        """The file's state and where it comes from, for a report."""
        writer = self.writers.get(uri)
        origin = (
            "the initial state" if writer is None else f"line {writer.number} ({writer.request_id})"
        )
        version = self.current(uri)
        if version is None:
            return f"absent (as of {origin})"
        etag = self.etags.get(version)
        known = "" if etag is None else f", ETag {etag}"
        return f"{_describe(self.state(uri))}, written by {origin}{known}"


def _listed_tags(value: str, *, weak: bool) -> set[str]:
    """The entity tags (quoted) a list names; weak ones only for a weak comparison."""
    tags = set()
    for member in value.split(","):
        match = ENTITY_TAG.fullmatch(member.strip())
        if match is not None and (weak or match[1] is None):
            tags.add(match[2])
    return tags


def _derived_content(request_id: str, length: int) -> Content:
    return Content(hashlib.sha256(body_for(request_id, length)).hexdigest(), length)


def replay(lines: Iterable[LogLine], history: History) -> tuple[dict[str, State], list[Violation]]:
    """Process `lines` (one per request) in order against the model of the files; return the
    final state and every line whose response the model would not have given."""
    model = _Model(dict(history.initial), history.requests)
    violations: list[Violation] = []
    for line in lines:
        request = history.requests[line.request_id]
        problem = _replay_line(line, request, model)
        if problem is not None:
            kind, why = problem
            violations.append(Violation(kind, f"line {line.number}, {request.describe()}: {why}"))
    return model.files, violations


def _replay_line(line: LogLine, request: Request, model: _Model) -> Problem | None:
    if (line.method, line.uri) != (request.method, request.uri):
        return "request-mismatch", f"the line says {line.method} {line.uri}"
    # The model follows the log even where the log is wrong, so that later lines are judged
    # against what the log says happened rather than failing in a cascade.
    problem = _apply(line, request, model)
    if request.status is not None and request.status != line.status:
        return "status-mismatch", f"the line says {line.status}"
    return problem


def _apply(line: LogLine, request: Request, model: _Model) -> Problem | None:
    """Judge one line against the model and apply its effect; the first problem found, the
    status's before the ETag's before the response's."""
    # The response fields belong to the line only when the client saw the logged status;
    # otherwise the status mismatch is the line's problem.
    answered = request.status == line.status
    if line.status in NO_EFFECT or line.status == 501:  # 501: HEAD and DELETE with --course
        if answered and request.etag is not None:
            return "unexpected-etag", f"a {line.status} carries ETag {request.etag}"
        if line.method == "HEAD":
            return _head_problem(line, request, model) if answered else None
        return _fixed_body_problem(line.status, request.response)
    _settle(line, request, model)
    writes = line.method == "PUT" and line.status != 412
    etag_problem = None
    if answered and not writes:
        etag_problem = _current_etag_problem(line, request, model)
    status_problem = _status_problem(line, request, model)
    response_problem = _response_problem(line, request, model) if answered else None
    if writes:
        model.write(line, request.body)
        if answered:
            etag_problem = _new_etag_problem(line, request, model)
    elif line.method == "DELETE" and line.status == 200:
        model.delete(line)
    return status_problem or etag_problem or response_problem


def _settle(line: LogLine, request: Request, model: _Model) -> None:
    """The first look at a file whose initial state is unknown: learn from the status
    whether it was there (a PUT's 412 may not tell)."""
    if model.state(line.uri) is not Unknown.ANYTHING:
        return
    if line.status in (404, 201):
        model.files[line.uri] = None
    elif line.status != 412 or line.method != "PUT":
        model.files[line.uri] = Unknown.PRESENT
    elif request.etag is not None or "If-Match" not in request.headers:
        model.files[line.uri] = Unknown.PRESENT  # If-None-Match failed: the file is there


def _status_problem(line: LogLine, request: Request, model: _Model) -> Problem | None:
    expected = _expected_statuses(line.method, request.headers, line.uri, model)
    if expected is None or line.status in expected:
        return _learn_from_status(line, request, model)
    kind = "stale-304" if line.status == 304 else "wrong-status"
    wanted = " or ".join(map(str, sorted(expected)))
    why = f"got {line.status}, but the model gives {wanted}"
    return kind, f"{why}: the file was {model.describe(line.uri)}"


def _expected_statuses(
    method: str, headers: dict[str, str], uri: str, model: _Model
) -> set[int] | None:
    """The statuses a single-threaded server may give (more than one where the model does
    not know an ETag or a size), or None when it knows nothing of the file."""
    state = model.state(uri)
    if state is Unknown.ANYTHING:
        return None
    if state is None:
        if method != "PUT":
            return {404}
        return {412} if "If-Match" in headers else {201}
    statuses: set[int] = set()
    for failed in _precondition_outcomes(method, headers, uri, model):
        if failed is not None:
            statuses.add(failed)
        elif method == "GET":
            statuses |= _range_outcomes(headers, uri, model)
        else:
            statuses.add(200)
    return statuses


def _precondition_outcomes(
    method: str, headers: dict[str, str], uri: str, model: _Model
) -> set[int | None]:
    """412 or 304 for each way the preconditions may fail, None if they may pass (on a file
    that exists; If-Match first, then If-None-Match, as RFC 9110 §13.2.2 orders them)."""
    if_match, if_none_match = headers.get("If-Match"), headers.get("If-None-Match")
    failing = 304 if method in ("GET", "HEAD") else 412
    outcomes: set[int | None] = set()
    for matched in _cases(True if if_match is None else model.matches(if_match, uri, weak=False)):
        if not matched:
            outcomes.add(412)
            continue
        none_matched = (
            False if if_none_match is None else model.matches(if_none_match, uri, weak=True)
        )
        outcomes.update(failing if case else None for case in _cases(none_matched))
    return outcomes


def _cases(known: bool | None) -> tuple[bool, ...]:
    return (True, False) if known is None else (known,)


def _range_outcomes(headers: dict[str, str], uri: str, model: _Model) -> set[int]:
    """The statuses of a GET whose preconditions passed: 206 or 416 when its Range applies."""
    spec = _parse_range(headers.get("Range"))
    if spec is None:
        return {200}
    if_range = headers.get("If-Range")
    applies = True if if_range is None else model.if_range_matches(if_range, uri)
    statuses = {200} if applies is not True else set()
    if applies is not False:
        size = model.size(uri)
        if size is None:
            statuses |= {200, 206, 416} if spec[0] is None else {206, 416}
        elif size == 0 and spec[0] is None and spec[1]:
            statuses.add(200)  # an empty file's one satisfiable range: the whole (empty) file
        else:
            statuses.add(416 if _resolve_range(spec, size) is None else 206)
    return statuses


def _learn_from_status(line: LogLine, request: Request, model: _Model) -> Problem | None:
    """Where the model could not tell whether a tag matched, the status tells; learn it."""
    headers, uri = request.headers, line.uri
    if "If-Match" in headers and line.status not in (404, 412):
        return model.learn_match(headers["If-Match"], uri, weak=False)
    if "If-None-Match" in headers and line.status == 304:
        return model.learn_match(headers["If-None-Match"], uri, weak=True)
    if "If-Range" in headers and line.status == 206:
        return model.learn_match(headers["If-Range"], uri, weak=False)
    return None


RangeSpec = tuple[int | None, int | None]
"""A single byte range as asked: (first, last), first None for a suffix of `last` bytes."""


def _parse_range(value: str | None) -> RangeSpec | None:
    """The range a Range value asks for; None when asrv serves the whole file instead
    (no Range, several ranges, another unit, first > last, anything malformed)."""
    match = None if value is None else RANGE.fullmatch(value.strip())
    if match is None or not (match[1] or match[2]):
        return None
    first = int(match[1]) if match[1] else None
    last = int(match[2]) if match[2] else None
    if first is not None and last is not None and first > last:
        return None
    return first, last


def _resolve_range(spec: RangeSpec, size: int) -> tuple[int, int] | None:
    """The bytes first..last (inclusive) a range selects of a file of `size` bytes; None
    when it selects none (416)."""
    first, last = spec
    if first is None:  # the last `last` bytes
        return None if last == 0 or size == 0 else (max(0, size - (last or 0)), size - 1)
    if first >= size:
        return None
    return first, size - 1 if last is None else min(last, size - 1)


def _carries_etag(method: str, headers: dict[str, str], status: int) -> bool:
    """Whether the response to a request that writes nothing names the current version
    (on a file that exists): every HEAD, every featured GET, every 412."""
    if status == 404 or (method == "DELETE" and status == 200):
        return False
    if status == 412 or method == "HEAD":
        return True
    return method == "GET" and (status != 200 or bool(headers))


def _current_etag_problem(line: LogLine, request: Request, model: _Model) -> Problem | None:
    """The response's ETag (if it has one) must be the current version's, and it must have
    one where the server sends it; learn it when the version's ETag was unknown."""
    state = model.state(line.uri)
    carries = state is not None and _carries_etag(line.method, request.headers, line.status)
    etag = request.etag
    if etag is None:
        if carries and state is not Unknown.ANYTHING:
            return "missing-etag", f"a {line.status} without an ETag"
        return None
    version = model.current(line.uri)
    if not carries or version is None:
        return "unexpected-etag", f"a {line.status} carries ETag {etag}"
    return _malformed_etag(etag) or model.bind(version, etag)


def _new_etag_problem(line: LogLine, request: Request, model: _Model) -> Problem | None:
    """A conditional PUT's success names the version it wrote; a plain PUT's names none."""
    conditional = "If-Match" in request.headers or "If-None-Match" in request.headers
    etag = request.etag
    if etag is None:
        return (
            ("missing-etag", f"a conditional {line.status} without an ETag")
            if conditional
            else None
        )
    version = model.current(line.uri)
    if not conditional or version is None:
        return "unexpected-etag", f"a plain PUT's {line.status} carries ETag {etag}"
    return _malformed_etag(etag) or model.bind(version, etag)


def _malformed_etag(etag: str) -> Problem | None:
    if STRONG_TAG.fullmatch(etag) is None:
        return "malformed-etag", f"ETag {etag!r} is not a quoted strong tag"
    return None


def _response_problem(line: LogLine, request: Request, model: _Model) -> Problem | None:
    """The response's body and framing headers against the model, before the line's effect."""
    if line.method == "HEAD":
        return _head_problem(line, request, model)
    if line.method == "GET":
        if line.status == 200:
            return _read(line, request.response, model)
        if line.status == 206:
            return _partial_problem(line, request, model)
        if line.status == 416:
            return _unsatisfiable_problem(line, request, model) or _fixed_body_problem(
                416, request.response
            )
    if line.status == 304 and request.content_length not in (None, model.size(line.uri)):
        # RFC 9110 §8.6: a 304 may declare the length its 200 would have had, nothing else.
        return "wrong-length", f"a 304 declares Content-Length {request.content_length}"
    return _fixed_body_problem(line.status, request.response)


def _read(line: LogLine, response: Content | None, model: _Model) -> Problem | None:
    current = model.state(line.uri)
    if isinstance(current, Content):
        if response is not None and response != current:
            return "stale-read", f"read {response}, but the file held {model.describe(line.uri)}"
    elif current is Unknown.PRESENT and response is not None:
        model.files[line.uri] = response  # the first read of a file whose content was unknown
    return None


def _head_problem(line: LogLine, request: Request, model: _Model) -> Problem | None:
    """A HEAD declares the Content-Length its GET would have, and has no body."""
    if request.response is not None and request.response.length:
        return "wrong-body", f"a HEAD response with a body of {request.response.length} bytes"
    if line.status == 200:
        expected = model.size(line.uri)
        if expected is None:
            return None
    else:
        expected = None if line.status == 304 else len(FIXED_BODIES[line.status])
    if request.content_length == expected:
        return None
    if line.status == 304 and request.content_length == model.size(line.uri):
        return None  # RFC 9110 §8.6: the length the 200 would have had
    return "wrong-length", (
        f"declares Content-Length {request.content_length}, but the model gives {expected}: "
        f"the file was {model.describe(line.uri)}"
    )


def _partial_problem(line: LogLine, request: Request, model: _Model) -> Problem | None:
    """A 206: its Content-Range is the asked range of the file's size, its body those bytes."""
    declared = CONTENT_RANGE.fullmatch(request.content_range or "")
    if declared is None:
        return "wrong-range", f"a 206 with Content-Range {request.content_range!r}"
    first, last, size = int(declared[1]), int(declared[2]), int(declared[3])
    known = model.size(line.uri)
    spec = _parse_range(request.headers.get("Range"))
    # Where the model does not know the size, the range must at least fit the one declared.
    selected = None if spec is None else _resolve_range(spec, size if known is None else known)
    if (known is not None and size != known) or selected != (first, last):
        expected = "no range" if selected is None else f"bytes {selected[0]}-{selected[1]}"
        return "wrong-range", (
            f"Content-Range {request.content_range!r}, but the model gives {expected} of "
            f"{model.describe(line.uri)}"
        )
    response = request.response
    if response is None:
        return None
    if response.length != last - first + 1:
        return "wrong-range", f"{response.length} bytes for Content-Range {request.content_range!r}"
    expected_sha256 = model.range_sha256(line.uri, first, last)
    if expected_sha256 is not None and expected_sha256 != response.sha256:
        return "stale-read", (
            f"read bytes {first}-{last} ({response}), but they are not those of "
            f"{model.describe(line.uri)}"
        )
    return None


def _unsatisfiable_problem(line: LogLine, request: Request, model: _Model) -> Problem | None:
    """A 416's Content-Range names the file's size, and the range selects none of it."""
    declared = UNSATISFIED_RANGE.fullmatch(request.content_range or "")
    size = None if declared is None else int(declared[1])
    spec = _parse_range(request.headers.get("Range"))
    selects_none = size is not None and spec is not None and _resolve_range(spec, size) is None
    if selects_none and model.size(line.uri) in (None, size):
        return None
    return "wrong-range", (
        f"a 416 with Content-Range {request.content_range!r}, but the file was "
        f"{model.describe(line.uri)}"
    )


def _fixed_body_problem(status: int, response: Content | None) -> Problem | None:
    if response is None or response.sha256 == FIXED_BODY_SHA256[status]:
        return None
    return "wrong-body", f"the response body ({response}) is not the fixed body of a {status}"


def check_real_time(lines: Sequence[LogLine], history: History) -> list[Violation]:
    """Pairs out of real-time order: A's response was complete before B was sent, yet A's
    line comes after B's. One sweep over the requests by invoke time, with a pointer over
    the completions in time order that keeps the latest line of those completed so far:
    O(n log n), and each late request B is reported once, with its latest-lined witness A."""
    requests = [history.requests[line.request_id] for line in lines]
    invoked = sorted(range(len(lines)), key=lambda index: requests[index].invoke)
    completed = sorted(
        (request.complete, index)
        for index, request in enumerate(requests)
        if request.complete is not None
    )
    violations: list[Violation] = []
    latest = -1
    done = 0
    for index in invoked:
        invoke = requests[index].invoke
        while done < len(completed) and completed[done][0] < invoke:
            latest = max(latest, completed[done][1])
            done += 1
        if latest > index:
            violations.append(
                _order_violation(lines[latest], requests[latest], lines[index], requests[index])
            )
    return violations


def _order_violation(
    early_line: LogLine, early: Request, late_line: LogLine, late: Request
) -> Violation:
    detail = (
        f"{early.describe()} was complete at {early.complete:.6f}, before {late.describe()} "
        f"was sent at {late.invoke:.6f}, but its line {early_line.number} comes after "
        f"line {late_line.number}"
    )
    return Violation("real-time-order", detail)


def check_final_dir(
    final: dict[str, State], uris: Iterable[str], directory: Path
) -> list[Violation]:
    """The files in `directory` that differ from the replay's final state."""
    violations: list[Violation] = []
    for uri in sorted(uris):
        expected = final.get(uri, Unknown.ANYTHING)
        if expected is Unknown.ANYTHING:
            continue
        path = directory / uri.removeprefix("/")
        actual = _disk_state(path)
        agrees = actual is not None if expected is Unknown.PRESENT else actual == expected
        if not agrees:
            detail = (
                f"{path} is {_describe(actual)}, but the replay ends with {_describe(expected)}"
            )
            violations.append(Violation("final-state", detail))
    return violations


def _disk_state(path: Path) -> Content | str | None:
    """The file's content, None if absent, or a word for what is there instead."""
    try:
        mode = path.lstat().st_mode
        if not stat.S_ISREG(mode):
            return "not a regular file"
        digest = hashlib.sha256()
        length = 0
        with path.open("rb") as stream:
            while data := stream.read(1 << 16):
                digest.update(data)
                length += len(data)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise BadInput(f"cannot read {path}: {error}") from None
    return Content(digest.hexdigest(), length)


def _describe(state: Content | Unknown | str | None) -> str:
    if state is None:
        return "absent"
    if isinstance(state, Unknown):
        return state.value
    return str(state)


def check(
    log: Path,
    history: Path | None = None,
    *,
    final_dir: Path | None = None,
    since_line: int | None = None,
) -> Report:
    """Check `log`, against `history` when given (and the files in `final_dir`).

    Raises `BadInput` when a file cannot be read or the history is malformed.
    """
    started = time.monotonic()
    if final_dir is not None and history is None:
        raise BadInput("--final-dir needs a history")
    lines, violations = read_log(log)
    report = Report(lines=len(lines) + sum(v.kind == "malformed-line" for v in violations))
    if history is not None:
        run = read_history(history)
        run_lines = select_run(lines, run, since_line)
        firsts, membership = check_membership(run_lines, run)
        final, replayed = replay(firsts, run)
        violations += membership + replayed + check_real_time(firsts, run)
        if final_dir is not None:
            violations += check_final_dir(final, run.uris(), final_dir)
        report.run_lines, report.requests = len(run_lines), len(run.requests)
    report.violations = violations
    report.seconds = time.monotonic() - started
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m asrv.check`."""
    parser = argparse.ArgumentParser(
        prog="python -m asrv.check",
        description="Check that an asrv audit log is well-formed and, given the history of "
        "an asrv.load run, that it is a linearization of what the clients saw.",
        epilog="exit status: 0 all checks pass, 1 a violation, 2 bad input",
    )
    parser.add_argument("log", type=Path, help="the audit log")
    parser.add_argument("history", type=Path, nargs="?", help="history written by asrv.load")
    parser.add_argument(
        "--final-dir", type=Path, help="compare the files here with the replay's final state"
    )
    parser.add_argument(
        "--since-line",
        type=_positive,
        help="the run's lines start at this line (default: at the first line with a run id)",
    )
    parser.add_argument(
        "--max-report",
        type=_positive,
        default=DEFAULT_REPORT_LIMIT,
        help="violations to print (default: %(default)s)",
    )
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        report = check(args.log, args.history, final_dir=args.final_dir, since_line=args.since_line)
    except BadInput as error:
        print(f"asrv.check: {error}", file=sys.stderr)
        return 2
    print(report.render(args.max_report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

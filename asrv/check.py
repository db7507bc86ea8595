"""Check an asrv audit log, alone or against the history of a load run (`asrv.load`).

    python -m asrv.check audit.log                      # every line whole and well-formed
    python -m asrv.check audit.log run.jsonl --final-dir ROOT

With the log alone: every line ends with a newline and reads `METHOD,URI,STATUS,REQUEST-ID`
as SPEC §3 and §4 allow (a status asrv sends, 413 included; a request id without a comma).
With a history as well, the run's lines must be a linearization of what the clients saw:

- replay: processing the lines in order against a single-threaded model of the files,
  starting from the history's initial contents (inferred from the first responses when the
  history has none), reproduces every recorded status and response body (by sha256);
- real time: when request A's response was complete before request B was sent, A's line
  comes first;
- lines per request: exactly one for each request that got a response, at most one for a
  request that got none (its logged effect is then replayed too), none for an id the run
  never sent.

Which lines are the run's: those from the first to the last line carrying one of the
history's ids (the lines around them, say from other runs appending to the same log, are
only checked for form); `--since-line N` makes the run's part start at line N instead, for
when lines from others may precede the run's first line (N: one more than `wc -l` of the
log before the run). Any line in the run's part for an id the history lacks is a violation:
someone else used the server meanwhile, and the model cannot account for it.

`--final-dir DIR` also compares the files in DIR, for every URI of the history, with the
replay's final state (so it is meaningful for the last run on a root, once it is over).

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

PHRASES = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "Version Not Supported",
}
"""Every status asrv sends (SPEC §4, and 413 under `--max-body`); the body of each, but a
GET's 200, is the phrase and a newline."""
FIXED_BODY_SHA256 = {
    status: hashlib.sha256(f"{phrase}\n".encode()).hexdigest() for status, phrase in PHRASES.items()
}
POSSIBLE = {
    "GET": {200, 400, 403, 404, 413, 500, 505},
    "PUT": {200, 201, 400, 403, 413, 500, 505},
}
"""The statuses each method can get (201 only creates, 404 only reads, 501 is for others)."""
OTHER_METHODS_POSSIBLE = {400, 501, 505}

# The id is the client's Request-Id as sent: visible ASCII, spaces and tabs, no comma, of
# any length (the course's grammar caps it at 128; the default grammar only caps the head).
LINE = re.compile(r"([a-zA-Z]{1,8}),(/[a-zA-Z0-9.-]{1,63}),([0-9]{3}),([\t -+\--~]*)")
SHA256 = re.compile(r"[0-9a-f]{64}")
HISTORY_FORMAT = "asrv-history"
HISTORY_VERSION = 1
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

    def describe(self) -> str:
        outcome = "no response" if self.status is None else f"answered {self.status}"
        return f"request {self.request_id} ({self.method} {self.uri}, {outcome})"


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
        if match is None or int(match[3]) not in PHRASES:
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
    if header.get("version") != HISTORY_VERSION:
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
    return Request(
        record["id"],
        record["method"],
        record["uri"],
        body,
        float(invoke),
        complete,
        status,
        response,
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


@dataclass
class _Model:
    """The single-threaded server: each file's state, and which line last wrote it."""

    files: dict[str, State]
    writers: dict[str, LogLine] = field(default_factory=dict)

    def state(self, uri: str) -> State:
        return self.files.get(uri, Unknown.ANYTHING)

    def write(self, line: LogLine, content: Content | None) -> None:
        self.files[line.uri] = content
        self.writers[line.uri] = line

    def describe(self, uri: str) -> str:
        """The file's state and where it comes from, for a report."""
        writer = self.writers.get(uri)
        origin = (
            "the initial state" if writer is None else f"line {writer.number} ({writer.request_id})"
        )
        state = self.state(uri)
        if state is None:
            return f"absent (as of {origin})"
        return f"{_describe(state)}, written by {origin}"


def replay(lines: Iterable[LogLine], history: History) -> tuple[dict[str, State], list[Violation]]:
    """Process `lines` (one per request) in order against the model of the files; return the
    final state and every line whose response the model would not have given."""
    model = _Model(dict(history.initial))
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
    if line.status not in POSSIBLE.get(line.method, OTHER_METHODS_POSSIBLE):
        return "wrong-status", f"{line.method} cannot be {line.status}"
    if line.method == "GET" and line.status == 200:
        return _read(line, request.response, model)
    problem = None
    if line.method == "GET" and line.status == 404:
        problem = _read_absent(line, model)
    elif line.method == "PUT" and line.status in (200, 201):
        problem = _write(line, request.body, model)
    return problem or _fixed_body_problem(line.status, request.response)


def _read(line: LogLine, response: Content | None, model: _Model) -> Problem | None:
    current = model.state(line.uri)
    if current is None:
        return "wrong-status", f"got 200 but the file was {model.describe(line.uri)}"
    if isinstance(current, Content):
        if response is not None and response != current:
            return "stale-read", f"read {response}, but the file held {model.describe(line.uri)}"
    else:  # the first look at a file whose initial content is unknown
        model.files[line.uri] = Unknown.PRESENT if response is None else response
    return None


def _read_absent(line: LogLine, model: _Model) -> Problem | None:
    if model.state(line.uri) not in (None, Unknown.ANYTHING):
        return "wrong-status", f"got 404 but the file was {model.describe(line.uri)}"
    model.files[line.uri] = None
    return None


def _write(line: LogLine, body: Content | None, model: _Model) -> Problem | None:
    current = model.state(line.uri)
    problem = None
    if line.status == 201 and current not in (None, Unknown.ANYTHING):
        problem = "wrong-status", f"got 201 but the file was {model.describe(line.uri)}"
    elif line.status == 200 and current is None:
        problem = "wrong-status", f"got 200 but the file was {model.describe(line.uri)}"
    model.write(line, body)
    return problem


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

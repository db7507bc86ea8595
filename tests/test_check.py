"""The audit-log checker against hand-made histories and logs: every broken case is rejected
for the right reason, and the correct ones pass."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asrv.check import BadInput, Report, check

PHRASES = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found"}


def digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


class Run:
    """A hand-made run: what the clients saw (the history) and what the server logged."""

    def __init__(self, tmp_path: Path, initial: dict[str, bytes | None] | None = None) -> None:
        self.directory = tmp_path
        self.initial = (
            None
            if initial is None
            else {uri: None if data is None else digest(data) for uri, data in initial.items()}
        )
        self.records: list[dict[str, Any]] = []

    def put(
        self, request_id: str, uri: str, body: bytes, span: tuple[float, float], status: int | None
    ) -> None:
        """A PUT sent at span[0] and answered at span[1] (never answered if status is None)."""
        body_digest = digest(body)
        response = f"{PHRASES[status]}\n".encode() if status is not None else b""
        self._add(request_id, "PUT", uri, span, status, response)
        self.records[-1].update(body_sha256=body_digest["sha256"], body_length=len(body))

    def get(
        self,
        request_id: str,
        uri: str,
        span: tuple[float, float],
        status: int | None,
        content: bytes | None = None,
    ) -> None:
        """A GET; `content` is the body of a 200, the fixed body otherwise."""
        body = content if status == 200 and content is not None else b""
        if status is not None and status != 200:
            body = f"{PHRASES[status]}\n".encode()
        self._add(request_id, "GET", uri, span, status, body)

    def _add(
        self,
        request_id: str,
        method: str,
        uri: str,
        span: tuple[float, float],
        status: int | None,
        response: bytes,
    ) -> None:
        answered = status is not None
        response_digest = digest(response)
        self.records.append(
            {
                "type": "request",
                "id": request_id,
                "method": method,
                "uri": uri,
                "body_sha256": None,
                "body_length": 0,
                "invoke": span[0],
                "complete": span[1] if answered else None,
                "status": status,
                "response_sha256": response_digest["sha256"] if answered else None,
                "response_length": response_digest["length"] if answered else None,
                "error": None if answered else "connection: reset",
            }
        )

    def write(self, log_text: str) -> tuple[Path, Path]:
        header = {"type": "header", "format": "asrv-history", "version": 1}
        header |= {"run": "t", "target": "127.0.0.1:1", "initial": self.initial}
        history = self.directory / "history.jsonl"
        history.write_text("".join(json.dumps(r) + "\n" for r in [header, *self.records]))
        log = self.directory / "audit.log"
        log.write_bytes(log_text.encode())
        return log, history

    def check(self, log_text: str, **options: Any) -> Report:
        return check(*self.write(log_text), **options)


def assert_rejected(report: Report, kind: str, *mentions: str) -> None:
    """The report names exactly this kind of violation, and the given ids or lines."""
    assert report.kinds() == {kind}, report.render()
    text = report.render()
    for mention in mentions:
        assert mention in text, text


def assert_passes(report: Report) -> None:
    assert report.ok, report.render()


@pytest.fixture
def basic(tmp_path: Path) -> Run:
    """a exists with b"old"; b is absent; four sequential requests."""
    run = Run(tmp_path, {"/a": b"old", "/b": None})
    run.get("g1", "/a", (1, 2), 200, b"old")
    run.put("p1", "/a", b"new", (3, 4), 200)
    run.put("p2", "/b", b"bee", (5, 6), 201)
    run.get("g2", "/a", (7, 8), 200, b"new")
    return run


BASIC_LOG = "GET,/a,200,g1\nPUT,/a,200,p1\nPUT,/b,201,p2\nGET,/a,200,g2\n"


# Correct runs pass.


def test_sequential_run_passes(basic: Run) -> None:
    report = basic.check(BASIC_LOG)
    assert_passes(report)
    assert (report.lines, report.run_lines, report.requests) == (4, 4, 4)


def test_overlapping_requests_may_be_logged_in_either_order(tmp_path: Path) -> None:
    run = Run(tmp_path, {"/a": None})
    run.put("p", "/a", b"x", (1, 10), 201)
    run.get("g", "/a", (2, 3), 404)  # overlaps the PUT, so it may come first
    assert_passes(run.check("GET,/a,404,g\nPUT,/a,201,p\n"))


def test_unanswered_put_with_a_line_takes_effect(tmp_path: Path) -> None:
    run = Run(tmp_path, {"/a": None})
    run.put("lost", "/a", b"x", (1, 0), None)
    run.put("never-logged", "/a", b"y", (1, 0), None)
    run.get("g", "/a", (5, 6), 200, b"x")
    assert_passes(run.check("PUT,/a,201,lost\nGET,/a,200,g\n"))


def test_unanswered_put_logged_as_cut_short_changes_nothing(tmp_path: Path) -> None:
    run = Run(tmp_path, {"/a": b"old"})
    run.put("gave-up", "/a", b"new", (1, 0), None)
    run.get("g", "/a", (5, 6), 200, b"old")
    assert_passes(run.check("PUT,/a,400,gave-up\nGET,/a,200,g\n"))


def test_lines_of_earlier_runs_are_ignored(basic: Run) -> None:
    earlier = "PUT,/a,201,old-1\nGET,/zzz,404,0\n"
    report = basic.check(earlier + BASIC_LOG)
    assert_passes(report)
    assert (report.lines, report.run_lines) == (6, 4)
    assert_passes(basic.check(earlier + BASIC_LOG, since_line=3))
    assert_passes(basic.check(earlier + BASIC_LOG + "PUT,/a,201,later-1\n"))


def test_since_line_catches_intruders_before_the_first_run_line(basic: Run) -> None:
    report = basic.check("GET,/a,200,0\n" + BASIC_LOG, since_line=1)
    assert_rejected(report, "foreign-id", "line 1", "'0'")


def test_unknown_initial_state_is_inferred(tmp_path: Path) -> None:
    run = Run(tmp_path, initial=None)
    run.get("g1", "/a", (1, 2), 200, b"was there")
    run.get("g2", "/a", (3, 4), 200, b"was there")
    run.put("p", "/b", b"x", (5, 6), 200)
    assert_passes(run.check("GET,/a,200,g1\nGET,/a,200,g2\nPUT,/b,200,p\n"))


def test_final_dir_agrees_with_replay(basic: Run, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(b"new")
    (root / "b").write_bytes(b"bee")
    assert_passes(basic.check(BASIC_LOG, final_dir=root))


# Broken runs are rejected, each for its reason.


def test_line_out_of_real_time_order(tmp_path: Path) -> None:
    run = Run(tmp_path, {"/a": None, "/b": None})
    run.get("first", "/a", (1, 2), 404)
    run.get("second", "/b", (3, 4), 404)  # sent after "first" was answered
    report = run.check("GET,/b,404,second\nGET,/a,404,first\n")
    assert_rejected(report, "real-time-order", "request first", "request second", "line 2")


def test_stale_get_body(basic: Run) -> None:
    basic.records[-1]["response_sha256"] = digest(b"old")["sha256"]
    report = basic.check(BASIC_LOG)
    assert_rejected(report, "stale-read", "request g2", "line 4", "written by line 2 (p1)")


def test_missing_line_for_answered_request(basic: Run) -> None:
    report = basic.check("GET,/a,200,g1\nPUT,/a,200,p1\nGET,/a,200,g2\n")
    assert_rejected(report, "missing-line", "request p2")


def test_duplicate_line(basic: Run) -> None:
    report = basic.check(BASIC_LOG + "PUT,/b,201,p2\n")
    assert_rejected(report, "duplicate-line", "request p2", "line 3", "line 5")


def test_torn_last_line(basic: Run) -> None:
    report = basic.check(BASIC_LOG[: -len("0,g2\n")])
    assert report.kinds() == {"torn-line", "missing-line"}, report.render()
    assert "line 4 does not end with a newline" in report.render()


def test_torn_line_alone_is_rejected_without_history(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"GET,/a,200,1\nGET,/a,2")
    assert_rejected(check(log), "torn-line")


def test_foreign_id(basic: Run) -> None:
    report = basic.check(
        "GET,/a,200,g1\nGET,/a,200,intruder\n" + BASIC_LOG[len("GET,/a,200,g1\n") :]
    )
    assert_rejected(report, "foreign-id", "line 2", "'intruder'")


def test_put_created_a_file_that_existed(tmp_path: Path) -> None:
    run = Run(tmp_path, {"/a": b"old"})
    run.put("p", "/a", b"new", (1, 2), 201)
    assert_rejected(run.check("PUT,/a,201,p\n"), "wrong-status", "request p", "got 201")


def test_put_replaced_a_file_that_was_absent(tmp_path: Path) -> None:
    run = Run(tmp_path, {"/a": None})
    run.put("p", "/a", b"new", (1, 2), 200)
    assert_rejected(run.check("PUT,/a,200,p\n"), "wrong-status", "request p", "absent")


def test_logged_status_differs_from_the_response(basic: Run) -> None:
    report = basic.check(BASIC_LOG.replace("PUT,/a,200,p1", "PUT,/a,201,p1"))
    assert_rejected(report, "status-mismatch", "request p1", "answered 200", "says 201")


def test_line_for_another_uri(basic: Run) -> None:
    report = basic.check(BASIC_LOG.replace("GET,/a,200,g1", "GET,/b,200,g1"))
    assert_rejected(report, "request-mismatch", "request g1")


def test_malformed_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"GET,/a,200,a,b\nGET,/a,299,1\nGET,a,200,1\nGETTINGIT,/a,200,1\n")
    report = check(log)
    assert [violation.kind for violation in report.violations] == ["malformed-line"] * 4


def test_final_dir_differs_from_replay(basic: Run, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(b"old")
    report = basic.check(BASIC_LOG, final_dir=root)
    assert_rejected(report, "final-state", "/a is 3 bytes", "/b is absent")


def test_malformed_history_is_bad_input(basic: Run) -> None:
    log, history = basic.write(BASIC_LOG)
    history.write_text(history.read_text().replace('"invoke": 3', '"invoke": "soon"'))
    with pytest.raises(BadInput, match="history line 3: bad or missing 'invoke'"):
        check(log, history)


def test_command_line_exit_status(basic: Run) -> None:
    log, history = basic.write(BASIC_LOG)

    def status(*args: str | Path) -> tuple[int, str]:
        command = [sys.executable, "-m", "asrv.check", *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        return done.returncode, done.stdout + done.stderr

    assert status(log, history)[0] == 0
    log.write_text(BASIC_LOG.replace("201", "200"))
    code, output = status(log, history)
    assert code == 1 and "status-mismatch" in output
    assert status(log, history.with_name("missing.jsonl"))[0] == 2


def test_a_hundred_thousand_requests_check_in_seconds(tmp_path: Path) -> None:
    run = Run(tmp_path, {"/a": None})
    count = 100_000
    run.put("p0", "/a", b"v0", (0, 1), 201)
    lines = ["PUT,/a,201,p0\n"]
    for n in range(1, count):
        if n % 2:
            run.get(f"g{n}", "/a", (2 * n, 2 * n + 3), 200, f"v{n - 1}".encode())
            lines.append(f"GET,/a,200,g{n}\n")
        else:
            run.put(f"p{n}", "/a", f"v{n}".encode(), (2 * n, 2 * n + 3), 200)
            lines.append(f"PUT,/a,200,p{n}\n")
    log, history = run.write("".join(lines))
    started = time.monotonic()
    report = check(log, history)
    assert_passes(report)
    assert report.requests == count
    assert time.monotonic() - started < 10

"""The audit-log checker on HEAD, DELETE, Range and conditional requests (history version 2),
against hand-made histories and logs: every new status passes where the model gives it, and
each broken case is rejected for its own reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from asrv import check as check_module
from asrv.check import PHRASES, BadInput, Report, check
from asrv.load import body_for
from tests.test_check import assert_passes, assert_rejected, digest

HELLO = b"hello world"  # /a before the run: 11 bytes


class Scenario:
    """Requests sent one after another, each answered before the next was sent; `log()` logs
    them in that order, the only order real time allows."""

    def __init__(self, tmp_path: Path, initial: dict[str, bytes | None] | None) -> None:
        self.directory = tmp_path
        self.initial = (
            None
            if initial is None
            else {uri: None if data is None else digest(data) for uri, data in initial.items()}
        )
        self.records: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        uri: str,
        status: int | None,
        *,
        headers: dict[str, str] | None = None,
        response: bytes | None = None,
        etag: str | None = None,
        content_range: str | None = None,
        content_length: int | None = None,
        body: bytes | None = None,
    ) -> str:
        """Record one request and return its id. `response` defaults to the status's fixed
        body (none for a HEAD or a 304), `content_length` to the response's length (a HEAD's
        must be given for its 200), `body` is a PUT's (default: `body_for` its id, 40 bytes)."""
        request_id = f"r{len(self.records)}"
        if method == "PUT" and body is None:
            body = body_for(request_id, 40)
        if response is None and status is not None:
            response = fixed_response(method, status)
        if content_length is None and status is not None:
            content_length = declared_length(method, status, response or b"")
        answered = status is not None
        number = len(self.records)
        self.records.append(
            {
                "type": "request",
                "id": request_id,
                "method": method,
                "uri": uri,
                "body_sha256": None if body is None else digest(body)["sha256"],
                "body_length": 0 if body is None else len(body),
                "headers": headers or {},
                "invoke": 2.0 * number,
                "complete": 2.0 * number + 1 if answered else None,
                "status": status,
                "response_sha256": digest(response or b"")["sha256"] if answered else None,
                "response_length": len(response or b"") if answered else None,
                "response_etag": etag,
                "content_range": content_range,
                "content_length": content_length,
                "error": None if answered else "connection: reset",
            }
        )
        return request_id

    def log(self) -> str:
        return "".join(
            f"{record['method']},{record['uri']},{record['status']},{record['id']}\n"
            for record in self.records
        )

    def write(self, log_text: str) -> tuple[Path, Path]:
        header = {"type": "header", "format": "asrv-history", "version": 2}
        header |= {"run": "t", "target": "127.0.0.1:1", "initial": self.initial}
        history = self.directory / "history.jsonl"
        history.write_text("".join(json.dumps(r) + "\n" for r in [header, *self.records]))
        log = self.directory / "audit.log"
        log.write_bytes(log_text.encode())
        return log, history

    def check(self, log_text: str | None = None, **options: Any) -> Report:
        return check(*self.write(self.log() if log_text is None else log_text), **options)


@pytest.fixture
def run(tmp_path: Path) -> Scenario:
    return Scenario(tmp_path, {"/a": HELLO, "/b": None})


def fixed_response(method: str, status: int) -> bytes:
    """What a client reads after the head of a response that is not a GET's 200 or 206."""
    if method == "HEAD" or status == 304:
        return b""
    return f"{PHRASES[status]}\n".encode()


def declared_length(method: str, status: int, response: bytes) -> int | None:
    """The Content-Length a response declares unless a test says otherwise: none for a 304,
    a HEAD's that of its GET (but a test gives a HEAD's 200 its length)."""
    if status == 304 or (method == "HEAD" and status == 200):
        return None
    return len(fixed_response("GET", status) if method == "HEAD" else response)


def head_a(run: Scenario, etag: str = '"e0"') -> str:
    """HEAD /a while it holds HELLO: the ETag of the version before the run."""
    return run.send("HEAD", "/a", 200, etag=etag, content_length=len(HELLO))


def ranged(run: Scenario, value: str, status: int, **fields: Any) -> str:
    return run.send("GET", "/a", status, headers={"Range": value}, **fields)


# Every new status passes where the model gives it.


def test_head_and_conditional_reads_pass(run: Scenario) -> None:
    head_a(run)
    run.send("HEAD", "/b", 404)
    run.send("GET", "/a", 304, headers={"If-None-Match": '"e0"'}, etag='"e0"')
    run.send("HEAD", "/a", 304, headers={"If-None-Match": '"x", W/"e0"'}, etag='"e0"')
    run.send("GET", "/a", 304, headers={"If-None-Match": "*"}, etag='"e0"')
    run.send("GET", "/a", 200, headers={"If-Match": "*"}, response=HELLO, etag='"e0"')
    run.send("GET", "/a", 200, headers={"If-None-Match": '"other"'}, response=HELLO, etag='"e0"')
    run.send("GET", "/a", 412, headers={"If-Match": '"other"'}, etag='"e0"')
    run.send("HEAD", "/a", 412, headers={"If-Match": 'W/"e0"'}, etag='"e0"')  # never strong
    run.send("GET", "/b", 404, headers={"If-Match": "*"})
    assert_passes(run.check())


def test_ranges_pass(run: Scenario) -> None:
    tag = {"etag": '"e0"'}
    ranged(run, "bytes=0-4", 206, response=b"hello", content_range="bytes 0-4/11", **tag)
    ranged(run, "bytes=6-", 206, response=b"world", content_range="bytes 6-10/11", **tag)
    ranged(run, "bytes=-5", 206, response=b"world", content_range="bytes 6-10/11", **tag)
    ranged(run, "bytes=-50", 206, response=HELLO, content_range="bytes 0-10/11", **tag)
    ranged(run, "bytes=4-400", 206, response=b"o world", content_range="bytes 4-10/11", **tag)
    ranged(run, "bytes=11-", 416, content_range="bytes */11", **tag)
    ranged(run, "bytes=-0", 416, content_range="bytes */11", **tag)
    for ignored in ("bytes=0-1,3-4", "bytes=5-2", "items=0-1", "bytes=x-"):
        ranged(run, ignored, 200, response=HELLO, **tag)
    run.send("HEAD", "/a", 200, headers={"Range": "bytes=0-1"}, content_length=11, **tag)
    run.send(
        "GET",
        "/a",
        206,
        headers={"Range": "bytes=0-0", "If-Range": '"e0"'},
        response=b"h",
        content_range="bytes 0-0/11",
        **tag,
    )
    for stale in ('"other"', "Wed, 21 Oct 2015 07:28:00 GMT", 'W/"e0"'):
        headers = {"Range": "bytes=0-0", "If-Range": stale}
        run.send("GET", "/a", 200, headers=headers, response=HELLO, **tag)
    assert_passes(run.check())


def test_conditional_writes_and_deletes_pass(run: Scenario, tmp_path: Path) -> None:
    head_a(run)
    first = run.send("PUT", "/a", 200, headers={"If-Match": '"e0"'}, etag='"e1"')
    run.send("PUT", "/a", 412, headers={"If-Match": '"e0"'}, etag='"e1"')
    run.send("PUT", "/a", 412, headers={"If-None-Match": "*"}, etag='"e1"')
    run.send(
        "GET", "/a", 200, headers={"If-Match": '"e1"'}, response=body_for(first, 40), etag='"e1"'
    )
    run.send("PUT", "/b", 412, headers={"If-Match": "*"})  # no file: no ETag
    run.send("PUT", "/b", 201, headers={"If-None-Match": "*"}, etag='"e2"')
    run.send("DELETE", "/b", 412, headers={"If-Match": '"e1"'}, etag='"e2"')
    run.send("DELETE", "/b", 412, headers={"If-None-Match": '"e2"'}, etag='"e2"')
    run.send("DELETE", "/b", 200, headers={"If-Match": '"e2"'})
    run.send("DELETE", "/b", 404, headers={"If-Match": "*"})
    run.send("GET", "/b", 404)
    run.send("PUT", "/b", 201)
    run.send("DELETE", "/b", 200)
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(body_for(first, 40))
    assert_passes(run.check(final_dir=root))


def test_ranges_of_a_version_the_load_wrote_are_read_back(run: Scenario) -> None:
    put = run.send("PUT", "/a", 200, body=body_for("r0", 100_000))
    whole = body_for(put, 100_000)
    ranged(
        run,
        "bytes=1000-1999",
        206,
        response=whole[1000:2000],
        content_range="bytes 1000-1999/100000",
        etag='"e1"',
    )
    ranged(
        run,
        "bytes=-33",
        206,
        response=whole[-33:],
        content_range="bytes 99967-99999/100000",
        etag='"e1"',
    )
    assert_passes(run.check())


def test_an_unknown_tag_that_matched_becomes_the_versions_etag(run: Scenario) -> None:
    # A DELETE's 200 names no ETag, so only its If-Match tells the initial version's ETag:
    # a later version with that ETag is then a collision.
    run.send("DELETE", "/a", 200, headers={"If-Match": '"x"'})
    run.send("PUT", "/a", 201, headers={"If-None-Match": "*"}, etag='"x"')
    assert_rejected(run.check(), "etag-collision", "line 2", '"x"', "/a as it was before the run")


def test_an_unknown_initial_state_is_learnt_from_new_statuses(tmp_path: Path) -> None:
    run = Scenario(tmp_path, initial=None)
    run.send("HEAD", "/a", 200, etag='"e0"', content_length=11)
    ranged(run, "bytes=3-", 206, response=b"lo world", content_range="bytes 3-10/11", etag='"e0"')
    run.send("DELETE", "/b", 404)
    run.send("PUT", "/c", 412, headers={"If-None-Match": "*"}, etag='"e1"')
    run.send("HEAD", "/c", 200, etag='"e1"', content_length=5)
    assert_passes(run.check())


# Broken runs are rejected, each for its reason.


def test_delete_logged_but_not_in_effect(run: Scenario) -> None:
    run.send("DELETE", "/a", 200)
    run.send("GET", "/a", 200, response=HELLO)  # still the old content
    assert_rejected(run.check(), "wrong-status", "line 2", "got 200", "absent (as of line 1 (r0))")


def test_delete_of_an_absent_file_cannot_succeed(run: Scenario) -> None:
    run.send("DELETE", "/b", 200)
    assert_rejected(run.check(), "wrong-status", "request r0", "got 200, but the model gives 404")


def test_a_412_that_should_have_been_a_200(run: Scenario) -> None:
    head_a(run)
    run.send("PUT", "/a", 412, headers={"If-Match": '"e0"'}, etag='"e0"')
    report = run.check()
    assert_rejected(report, "wrong-status", "request r1", "got 412, but the model gives 200")


def test_two_writers_with_the_same_etag_cannot_both_succeed(run: Scenario) -> None:
    head_a(run)
    run.send("PUT", "/a", 200, headers={"If-Match": '"e0"'}, etag='"e1"')
    run.send("PUT", "/a", 200, headers={"If-Match": '"e0"'}, etag='"e2"')
    report = run.check()
    assert_rejected(report, "wrong-status", "request r2", "got 200, but the model gives 412")


def test_a_create_only_put_over_an_existing_file(run: Scenario) -> None:
    run.send("PUT", "/a", 200, headers={"If-None-Match": "*"}, etag='"e1"')
    assert_rejected(run.check(), "wrong-status", "got 200, but the model gives 412")


@pytest.mark.parametrize("etag", ['"e1"', '"e0"'])
def test_a_stale_304(run: Scenario, etag: str) -> None:
    # Whatever ETag the 304 names, the current version is not the one the client had.
    head_a(run)
    run.send("PUT", "/a", 200)
    run.send("GET", "/a", 304, headers={"If-None-Match": '"e0"'}, etag=etag)
    assert_rejected(run.check(), "stale-304", "request r2", "got 304, but the model gives 200")


def test_a_304_that_should_have_been_a_412(run: Scenario) -> None:
    run.send("GET", "/a", 304, headers={"If-Match": '"x"', "If-None-Match": "*"}, etag='"e0"')
    assert_rejected(run.check(), "stale-304", "got 304, but the model gives 412")


def test_an_etag_reused_for_a_new_version(run: Scenario) -> None:
    head_a(run)
    run.send("PUT", "/a", 200)
    head_a(run)  # the same ETag for the content the PUT wrote
    assert_rejected(run.check(), "etag-collision", "line 3", "/a as it was before the run")


def test_an_etag_shared_by_two_files(run: Scenario) -> None:
    head_a(run)
    run.send("PUT", "/b", 201, headers={"If-None-Match": "*"}, etag='"e0"')
    assert_rejected(run.check(), "etag-collision", "line 2", "/b as written by line 2 (r1)")


def test_one_version_with_two_etags(run: Scenario) -> None:
    head_a(run)
    head_a(run, etag='"e9"')
    assert_rejected(run.check(), "etag-mismatch", "line 2", '"e9"', 'has ETag "e0"')


def test_an_etag_where_none_belongs(run: Scenario) -> None:
    run.send("GET", "/a", 200, response=HELLO, etag='"e0"')  # a plain GET
    run.send("DELETE", "/a", 200, headers={"If-Match": "*"}, etag='"e0"')
    report = run.check()
    assert report.kinds() == {"unexpected-etag"}, report.render()
    assert len(report.violations) == 2


def test_a_featured_response_without_its_etag(run: Scenario) -> None:
    run.send("HEAD", "/a", 200, content_length=11)
    assert_rejected(run.check(), "missing-etag", "request r0")


def test_a_malformed_etag(run: Scenario) -> None:
    head_a(run, etag='W/"e0"')
    assert_rejected(run.check(), "malformed-etag", "W/")


def test_a_head_with_the_wrong_length(run: Scenario) -> None:
    run.send("HEAD", "/a", 200, etag='"e0"', content_length=12)
    assert_rejected(run.check(), "wrong-length", "Content-Length 12", "model gives 11")


def test_a_head_refused_declares_the_length_of_the_refusal_and_has_no_body(
    run: Scenario,
) -> None:
    run.send("HEAD", "/a", 403)
    run.send("HEAD", "/a", 401)
    assert_passes(run.check())
    run.records[-1]["content_length"] = 10
    assert_rejected(run.check(), "wrong-length", "request r1", "model gives 13")


def test_a_304_with_a_length(run: Scenario) -> None:
    run.send("GET", "/a", 304, headers={"If-None-Match": "*"}, etag='"e0"', content_length=0)
    assert_rejected(run.check(), "wrong-length", "304")


def test_a_304_may_declare_the_length_of_its_200(run: Scenario) -> None:
    # RFC 9110 §8.6: a 304 may carry the Content-Length the 200 would have had.
    run.send("GET", "/a", 304, headers={"If-None-Match": "*"}, etag='"e0"', content_length=11)
    run.send("HEAD", "/a", 304, headers={"If-None-Match": "*"}, etag='"e0"', content_length=11)
    assert_passes(run.check())


def test_head_and_delete_refused_by_a_course_server_change_nothing(tmp_path: Path) -> None:
    run = Scenario(tmp_path, None)  # nothing known about the files: nothing may be learnt
    run.send("DELETE", "/a", 501)
    run.send("HEAD", "/b", 501, content_length=16)
    run.send("GET", "/a", 404)
    run.send("GET", "/b", 200, response=b"b")
    assert_passes(run.check())


def test_a_suffix_range_of_an_empty_file_is_the_whole_file(tmp_path: Path) -> None:
    run = Scenario(tmp_path, {"/e": b""})
    run.send("GET", "/e", 200, headers={"Range": "bytes=-5"}, etag='"e0"', response=b"")
    run.send(
        "GET", "/e", 416, headers={"Range": "bytes=0-"}, etag='"e0"', content_range="bytes */0"
    )
    assert_passes(run.check())


def test_a_206_with_the_wrong_bytes(run: Scenario) -> None:
    put = run.send("PUT", "/a", 200)
    wrong = body_for("r-other", 40)[:10]
    ranged(run, "bytes=0-9", 206, response=wrong, content_range="bytes 0-9/40", etag='"e1"')
    assert_rejected(run.check(), "stale-read", "bytes 0-9", f"line 1 ({put})")


def test_a_206_with_the_bytes_of_the_old_version(run: Scenario) -> None:
    run.send("PUT", "/a", 200, body=body_for("r0", 11))
    ranged(run, "bytes=0-10", 206, response=HELLO, content_range="bytes 0-10/11", etag='"e1"')
    assert_rejected(run.check(), "stale-read", "request r1")


@pytest.mark.parametrize(
    "content_range",
    ["bytes 0-4/12", "bytes 1-5/11", "bytes 0-4", None],
)
def test_a_206_with_the_wrong_content_range(run: Scenario, content_range: str | None) -> None:
    ranged(run, "bytes=0-4", 206, response=b"hello", content_range=content_range, etag='"e0"')
    assert_rejected(run.check(), "wrong-range", "request r0")


def test_a_206_of_the_wrong_length(run: Scenario) -> None:
    ranged(run, "bytes=0-4", 206, response=b"hell", content_range="bytes 0-4/11", etag='"e0"')
    assert_rejected(run.check(), "wrong-range", "4 bytes")


def test_a_range_of_a_file_from_before_the_run_is_checked_by_length(run: Scenario) -> None:
    # Its bytes are unknown: other bytes of the right length pass, as they must.
    ranged(run, "bytes=0-4", 206, response=b"jello", content_range="bytes 0-4/11", etag='"e0"')
    assert_passes(run.check())


def test_a_416_with_the_wrong_size(run: Scenario) -> None:
    ranged(run, "bytes=20-", 416, content_range="bytes */20", etag='"e0"')
    assert_rejected(run.check(), "wrong-range", "bytes */20")


def test_a_satisfiable_range_refused(run: Scenario) -> None:
    ranged(run, "bytes=10-", 416, content_range="bytes */11", etag='"e0"')
    assert_rejected(run.check(), "wrong-status", "got 416, but the model gives 206")


def test_a_range_served_despite_a_stale_if_range(run: Scenario) -> None:
    head_a(run)
    run.send("PUT", "/a", 200, body=body_for("r1", 11))
    run.send(
        "GET",
        "/a",
        206,
        headers={"Range": "bytes=0-0", "If-Range": '"e0"'},
        response=body_for("r1", 1),
        content_range="bytes 0-0/11",
        etag='"e1"',
    )
    assert_rejected(run.check(), "wrong-status", "got 206, but the model gives 200")


def test_final_dir_still_holding_a_deleted_file(run: Scenario, tmp_path: Path) -> None:
    run.send("DELETE", "/a", 200)
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(HELLO)
    assert_rejected(run.check(final_dir=root), "final-state", "/a is 11 bytes", "absent")


def test_log_lines_of_the_new_methods_and_statuses(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    good = [
        "HEAD,/a,200,1",
        "HEAD,/a,304,2",
        "DELETE,/a,200,3",
        "DELETE,/a,412,4",
        "GET,/a,206,5",
        "GET,/a,416,6",
        "PUT,/a,412,7",
        "GET,/a,401,8",
        "PUT,/a,503,9",
        "PATCH,/a,501,10",
        "HEAD,/a,501,15",  # with --course
        "DELETE,/a,501,16",
    ]
    impossible = ["PUT,/a,206,11", "HEAD,/a,416,12", "DELETE,/a,201,13", "PATCH,/a,200,14"]
    log.write_text("".join(line + "\n" for line in good + impossible))
    report = check(log)
    assert [violation.kind for violation in report.violations] == ["malformed-line"] * 4
    assert all(f"line {n}:" in report.render() for n in range(13, 17)), report.render()


def test_a_version_1_history_is_still_read(tmp_path: Path) -> None:
    run = Scenario(tmp_path, {"/a": HELLO})
    run.send("GET", "/a", 200, response=HELLO)
    log, history = run.write(run.log())
    header, record = (json.loads(line) for line in history.read_text().splitlines())
    header["version"] = 1
    for name in ("headers", "response_etag", "content_range", "content_length"):
        del record[name]
    history.write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")
    assert_passes(check(log, history))
    header["version"] = 3
    history.write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(BadInput, match="version 3 is not supported"):
        check(log, history)


def test_bad_new_fields_are_bad_input(run: Scenario) -> None:
    run.send("HEAD", "/a", 200, etag='"e0"', content_length=11)
    log, history = run.write(run.log())
    text = history.read_text()
    for old, new, name in [
        ('"headers": {}', '"headers": {"Cookie": "x"}', "headers"),
        ('"content_length": 11', '"content_length": -1', "content_length"),
        ('"response_etag": "\\"e0\\""', '"response_etag": 7', "response_etag"),
    ]:
        assert old in text, (old, text)
        history.write_text(text.replace(old, new))
        with pytest.raises(BadInput, match=f"bad or missing '{name}'"):
            check(log, history)


def test_range_bytes_are_confirmed_once_per_version(
    run: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each 206 hashes only its own bytes; the whole body is regenerated once per version.
    put = run.send("PUT", "/a", 200, body=body_for("r0", 1 << 20))
    whole = body_for(put, 1 << 20)
    for first in range(0, 1 << 20, 1 << 14):
        last = first + 99
        ranged(
            run,
            f"bytes={first}-{last}",
            206,
            response=whole[first : last + 1],
            content_range=f"bytes {first}-{last}/{1 << 20}",
            etag='"e1"',
        )
    whole_bodies: list[int] = []
    original = check_module.body_for

    def counting(request_id: str, length: int, start: int = 0) -> bytes:
        if length - start == 1 << 20:
            whole_bodies.append(length)
        return original(request_id, length, start)

    monkeypatch.setattr(check_module, "body_for", counting)
    assert_passes(run.check())
    assert whole_bodies == [1 << 20]

"""Stress: the real server, as a process on 127.0.0.1, under concurrent conflicting load.

After each run the audit log must be a linearization of what the clients saw, and the files
left in the root must be what replaying the log produces (`asrv.check`). Every run is bounded
by its request count and a duration cap; the whole file takes about a minute on two cores.

The tests of the section "HEAD, DELETE, Range and conditional requests" need a server that
implements SPEC §5.2 and §5.3 (HEAD, DELETE, Range, ETags, If-Match, If-None-Match, If-Range):
each drives one feature end to end and fails against a server without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asrv.check import check
from asrv.load import (
    SLOW_MODES,
    HistoryWriter,
    LoadError,
    LoadOptions,
    PlannedRequest,
    RequestRecord,
    Stall,
    Summary,
    body_for,
    history_header,
    perform,
    run_load,
    snapshot_initial,
    uri_names,
)
from tests.conftest import HOST, Process, Site

MiB = 1 << 20


def assert_linearizable(site: Site, history: Path, requests: int) -> None:
    report = check(site.log, history, final_dir=site.root)
    assert report.ok, report.render()
    assert report.requests == requests


def assert_no_stray_files(site: Site, uris: list[str]) -> None:
    """Only the served files remain: no temporary file of a PUT outlives it."""
    names = {path.name for path in site.root.iterdir()}
    assert names <= {uri.removeprefix("/") for uri in uris}, names


LOADS = {
    "1-thread-1-uri": (1, (), {"uris": 1, "clients": 16, "requests": 1500}),
    "2-threads-stalled-uploads-some-too-large": (
        2,
        ("--no-fsync", "--max-body", str(MiB // 2)),
        {"uris": 2, "clients": 32, "requests": 1500, "slow": frozenset({"stall-upload"})},
    ),
    "4-threads-slow-readers": (
        4,
        ("--keep-alive",),
        {"uris": 4, "clients": 64, "requests": 2000, "slow": frozenset({"slow-read"})},
    ),
    "8-threads-all-slow": (
        8,
        (),
        {"uris": 3, "clients": 48, "requests": 2000, "slow": frozenset(SLOW_MODES)},
    ),
    "4-threads-hot-file-small-writes": (
        4,
        ("--no-fsync",),
        {"uris": 1, "clients": 64, "requests": 3000, "max_body": 4096, "get_ratio": 0.3},
    ),
}


@pytest.mark.parametrize(
    ("threads", "server_flags", "load"),
    [pytest.param(*case, id=name) for name, case in LOADS.items()],
)
def test_load_is_linearizable(
    site: Site,
    spawn_server: Callable[..., Process],
    threads: int,
    server_flags: tuple[str, ...],
    load: dict[str, Any],
) -> None:
    run_checked_load(site, spawn_server, threads, server_flags, load)


def run_checked_load(
    site: Site,
    spawn_server: Callable[..., Process],
    threads: int,
    server_flags: tuple[str, ...],
    load: dict[str, Any],
) -> tuple[Summary, list[dict[str, Any]]]:
    """Run a load against a fresh server process over a root holding one file; the log and
    the files must pass `asrv.check`. The summary, and the history's records."""
    (site.root / "load-0").write_bytes(b"there before the run\n")
    server = spawn_server("-t", str(threads), *server_flags, "0")
    history = site.log.with_name("history.jsonl")
    defaults = {"max_body": MiB, "seed": threads, "duration": 30, "request_timeout": 20}
    options = LoadOptions(port=server.port, root=site.root, history=history, **(defaults | load))
    summary = asyncio.run(run_load(options))
    print(summary.line())
    assert summary.failures == 0, summary.line()
    assert server.stop() == 0
    assert_linearizable(site, history, summary.requests)
    assert_no_stray_files(site, uri_names(options.uris))
    _header, *records = (json.loads(line) for line in history.read_text().splitlines())
    return summary, records


# Small random schedules of overlapping requests, each checked on its own.

example_numbers = itertools.count()


@dataclass(frozen=True)
class Step:
    """One request of a random schedule, sent after `delay` seconds, before it is named."""

    delay: float
    method: str
    fresh: bool  # to the example's own new file, else to the file all examples share
    body_length: int = 0
    stall: Stall | None = None
    slow_read: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    def plan(self, example: int, number: int) -> PlannedRequest:
        uri = f"/fresh-{example}" if self.fresh else "/shared"
        request_id = f"s{example}-{number}"
        return PlannedRequest(
            request_id,
            self.method,
            uri,
            self.body_length,
            self.stall,
            self.slow_read,
            headers=self.headers,
        )


@st.composite
def steps(draw: st.DrawFn) -> Step:
    delay = draw(st.floats(0, 0.02))
    fresh = draw(st.booleans())
    if draw(st.booleans()):
        return Step(delay, "GET", fresh, slow_read=draw(st.booleans()))
    length = draw(st.integers(0, 256 * 1024))
    stall = None
    if length and draw(st.booleans()):
        stall = Stall(draw(st.integers(0, length - 1)), draw(st.floats(0, 0.03)), "resume")
    return Step(delay, "PUT", fresh, length, stall)


@pytest.fixture
def schedule_server(spawn_server: Callable[..., Process]) -> Iterator[Process]:
    server = spawn_server("-t", "2", "--no-fsync", "0")
    yield server
    assert server.stop() == 0


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=st.lists(steps(), min_size=1, max_size=6))
def test_random_schedules_are_linearizable(
    site: Site, schedule_server: Process, schedule: list[Step]
) -> None:
    check_schedule(site, schedule_server, schedule)


def check_schedule(site: Site, server: Process, schedule: list[Step]) -> None:
    """Send the schedule's requests, each on its own connection after its delay, and check
    the log against what they saw."""
    # One server serves every example: each starts from the files the previous one left.
    # No request gives up here: its 400 line could land after the example is checked.
    example = next(example_numbers)
    plans = [step.plan(example, number) for number, step in enumerate(schedule)]
    initial = snapshot_initial(site.root, ["/shared", f"/fresh-{example}"])
    records = asyncio.run(run_schedule(server.port, plans, [s.delay for s in schedule]))
    history = site.log.with_name(f"schedule-{example}.jsonl")
    with HistoryWriter(history, history_header(f"s{example}", HOST, initial)) as writer:
        for record in records:
            writer.write(record)
    assert all(record.status is not None for record in records), records
    assert_linearizable(site, history, len(plans))


async def run_schedule(
    port: int, plans: list[PlannedRequest], delays: list[float]
) -> list[RequestRecord]:
    async def delayed(plan: PlannedRequest, delay: float) -> RequestRecord:
        await asyncio.sleep(delay)
        return await perform(plan, HOST, port, timeout=20)

    return await asyncio.gather(*map(delayed, plans, delays))


def test_history_records_what_the_clients_saw(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    """The history is the checker's only evidence: its records must be complete and true."""
    server = spawn_server("0")
    history = site.log.with_name("history.jsonl")
    options = LoadOptions(port=server.port, requests=20, uris=1, get_ratio=0, history=history)
    asyncio.run(run_load(options))
    assert server.stop() == 0
    header, *records = (json.loads(line) for line in history.read_text().splitlines())
    assert header["initial"] is None
    assert len(records) == 20
    assert sorted(record["status"] for record in records) == [200] * 19 + [201]
    for record in records:
        assert record["invoke"] < record["complete"]
        assert f"PUT,/load-0,{record['status']},{record['id']}" in site.log_lines()
        body = body_for(record["id"], record["body_length"])
        assert hashlib.sha256(body).hexdigest() == record["body_sha256"]


def test_load_refuses_a_remote_target() -> None:
    with pytest.raises(LoadError, match="not a loopback address"):
        asyncio.run(run_load(LoadOptions(port=8080, host="192.0.2.1")))


# HEAD, DELETE, Range and conditional requests: these need a server with SPEC §5.2 and §5.3.


def statuses(records: list[dict[str, Any]], method: str, *headers: str) -> Counter[int]:
    """The statuses of the requests of this method that sent all these headers."""
    return Counter(
        record["status"]
        for record in records
        if record["method"] == method and set(headers) <= set(record["headers"])
    )


def test_heads_and_deletes_are_linearizable(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    load = {"uris": 2, "clients": 32, "requests": 1500, "max_body": 64 * 1024}
    load |= {"get_ratio": 0.3, "head_ratio": 0.2, "delete_ratio": 0.15}
    summary, records = run_checked_load(site, spawn_server, 4, ("--no-fsync",), load)
    assert statuses(records, "HEAD").keys() == {200, 404}, summary.line()
    assert statuses(records, "DELETE").keys() == {200, 404}, summary.line()
    found = [r for r in records if r["method"] == "HEAD" and r["status"] == 200]
    assert all(r["response_etag"] and r["response_length"] == 0 for r in found)


def test_ranges_are_linearizable(site: Site, spawn_server: Callable[..., Process]) -> None:
    load = {"uris": 2, "clients": 32, "requests": 1500, "max_body": 256 * 1024}
    # Few writes: an If-Range names the latest ETag its client saw, which many writes
    # would make stale before it arrives, and then no If-Range would ever get a 206.
    load |= {"get_ratio": 0.3, "range_ratio": 0.6, "slow": frozenset({"slow-read"})}
    summary, records = run_checked_load(site, spawn_server, 4, (), load)
    assert {200, 206, 416} <= statuses(records, "GET", "Range").keys(), summary.line()
    assert {200, 206} <= statuses(records, "GET", "Range", "If-Range").keys(), summary.line()


def test_read_modify_writes_are_linearizable(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    # One hot file and many conditional writers: of those that read the same version, one
    # writes and the others get 412 and read again; the checker holds every 412 and 200 to
    # the versions the log says were current.
    load = {"uris": 1, "clients": 16, "requests": 1000, "max_body": 16 * 1024, "cas": True}
    load |= {"get_ratio": 0.2, "head_ratio": 0.1, "delete_ratio": 0.05, "keep_alive": True}
    summary, records = run_checked_load(site, spawn_server, 4, ("--no-fsync",), load)
    writes = statuses(records, "PUT", "If-Match")
    assert writes[200] > 0 and writes[412] > 0, summary.line()
    assert any(record["id"].endswith(".3") for record in records), "no write was retried"
    assert statuses(records, "PUT", "If-None-Match")[412] > 0, summary.line()


def test_conditional_reads_and_deletes_are_linearizable(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    # Few writes, so that the ETag a client names is often still current: 304s and
    # If-Match DELETEs that apply, as well as 412s.
    load = {"uris": 3, "clients": 16, "requests": 1500, "max_body": 16 * 1024, "cas": True}
    load |= {"get_ratio": 0.45, "head_ratio": 0.3, "delete_ratio": 0.05}
    summary, records = run_checked_load(site, spawn_server, 2, (), load)
    reads = statuses(records, "GET", "If-None-Match") + statuses(records, "HEAD", "If-None-Match")
    assert reads[304] > 0 and reads[200] > 0, summary.line()
    assert statuses(records, "DELETE", "If-Match")[200] > 0, summary.line()


def test_every_new_request_at_once_is_linearizable(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    load = {"uris": 3, "clients": 48, "requests": 2000, "max_body": 256 * 1024, "cas": True}
    load |= {"get_ratio": 0.15, "head_ratio": 0.1, "delete_ratio": 0.05, "range_ratio": 0.25}
    load |= {"keep_alive": True, "slow": frozenset(SLOW_MODES)}
    summary, _records = run_checked_load(site, spawn_server, 8, (), load)
    assert {200, 201, 206, 404, 412, 416} <= summary.statuses.keys(), summary.line()


NEVER = '"never-issued"'
FEATURED_HEADERS = {
    "GET": [
        (),
        (("Range", "bytes=0-99"),),
        (("Range", "bytes=-10"),),
        (("Range", "bytes=1000000-"),),
        (("Range", "bytes=5-"), ("If-Range", NEVER)),
        (("If-Match", "*"),),
        (("If-None-Match", "*"),),
    ],
    "HEAD": [(), (("If-Match", "*"),), (("If-None-Match", "*"),)],
    "PUT": [(), (("If-None-Match", "*"),), (("If-Match", "*"),), (("If-Match", NEVER),)],
    "DELETE": [(), (("If-Match", "*"),), (("If-Match", NEVER),)],
}
"""Headers of the new requests that need no ETag seen: `*`, and a tag no server issued."""


@st.composite
def featured_steps(draw: st.DrawFn) -> Step:
    delay = draw(st.floats(0, 0.02))
    fresh = draw(st.booleans())
    method = draw(st.sampled_from(sorted(FEATURED_HEADERS)))
    headers = draw(st.sampled_from(FEATURED_HEADERS[method]))
    length = draw(st.integers(0, 64 * 1024)) if method == "PUT" else 0
    return Step(delay, method, fresh, length, headers=headers)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=st.lists(featured_steps(), min_size=1, max_size=6))
def test_random_schedules_of_the_new_requests_are_linearizable(
    site: Site, schedule_server: Process, schedule: list[Step]
) -> None:
    check_schedule(site, schedule_server, schedule)

"""Stress: the real server, as a process on 127.0.0.1, under concurrent conflicting load.

After each run the audit log must be a linearization of what the clients saw, and the files
left in the root must be what replaying the log produces (`asrv.check`). Every run is bounded
by its request count and a duration cap; the whole file takes about half a minute on two
cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
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

    def plan(self, example: int, number: int) -> PlannedRequest:
        uri = f"/fresh-{example}" if self.fresh else "/shared"
        request_id = f"s{example}-{number}"
        return PlannedRequest(
            request_id, self.method, uri, self.body_length, self.stall, self.slow_read
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
    # One server serves every example: each starts from the files the previous one left.
    # No request gives up here: its 400 line could land after the example is checked.
    example = next(example_numbers)
    plans = [step.plan(example, number) for number, step in enumerate(schedule)]
    initial = snapshot_initial(site.root, ["/shared", f"/fresh-{example}"])
    records = asyncio.run(run_schedule(schedule_server.port, plans, [s.delay for s in schedule]))
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

"""Conditional writes under contention, against a real server process (SPEC §5.3): the
precondition is decided in the critical step of the change, so of many writers holding the
same ETag exactly one wins, and read-modify-write loops lose no update."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from tests.conftest import Process, Site
from tests.http_client import Connection, request

Spawn = Callable[..., Process]
RACERS = 16


async def race(port: int, method: str, round_number: int, **condition: str) -> dict[str, int]:
    """RACERS clients send `method` /f with the same `condition` at once; status by id."""
    connections = [Connection(port) for _ in range(RACERS)]
    for connection in connections:
        await connection.__aenter__()
    start = asyncio.Event()

    async def racer(n: int) -> tuple[str, int]:
        rid = f"{method}-{'-'.join(condition)}-{round_number}-{n}"
        body = rid.encode() if method == "PUT" else None
        await start.wait()
        reply = await connections[n].request(method, "/f", body, request_id=rid, **condition)
        return rid, reply.status

    tasks = [asyncio.ensure_future(racer(n)) for n in range(RACERS)]
    await asyncio.sleep(0.1)
    start.set()
    results = dict(await asyncio.gather(*tasks))
    for connection in connections:
        await connection.__aexit__(None, None, None)
    return results


def test_of_sixteen_writers_with_one_etag_exactly_one_wins(site: Site, spawn_server: Spawn) -> None:
    server = spawn_server("-t", "4")
    winners: list[str] = []

    async def rounds() -> None:
        for round_number in range(5):
            created = await request(
                server.port, "PUT", "/f", b"start", request_id=f"c{round_number}"
            )
            etag = (await request(server.port, "HEAD", "/f")).etag
            assert created.status in (200, 201) and etag is not None
            puts = await race(server.port, "PUT", round_number, if_match=etag)
            assert sorted(puts.values()) == [200] + [412] * (RACERS - 1), puts
            winner = next(rid for rid, status in puts.items() if status == 200)
            assert (site.root / "f").read_bytes() == winner.encode()
            winners.append(winner)
            etag = (await request(server.port, "HEAD", "/f")).etag
            assert etag is not None
            # The DELETE that wins leaves no file: the others find nothing to delete, and
            # preconditions apply only where the plain request would succeed.
            deletes = await race(server.port, "DELETE", round_number, if_match=etag)
            assert sorted(deletes.values()) == [200] + [404] * (RACERS - 1), deletes
            assert not (site.root / "f").exists()
            creates = await race(server.port, "PUT", round_number, if_none_match="*")
            assert sorted(creates.values()) == [201] + [412] * (RACERS - 1), creates
            creator = next(rid for rid, status in creates.items() if status == 201)
            assert (site.root / "f").read_bytes() == creator.encode()

    asyncio.run(rounds())
    assert server.stop() == 0
    lines = site.log_lines()
    statuses = Counter(tuple(line.split(",")[0:3:2]) for line in lines)
    assert statuses[("PUT", "412")] == 2 * 5 * (RACERS - 1)
    assert statuses[("DELETE", "404")] == 5 * (RACERS - 1)
    assert statuses[("DELETE", "200")] == 5
    assert statuses[("PUT", "201")] == 1 + 5  # the first PUT, then one creator a round
    for winner in winners:
        assert f"PUT,/f,200,{winner}" in lines


def test_read_modify_write_counters_lose_no_update(site: Site, spawn_server: Spawn) -> None:
    clients, increments = 8, 50
    (site.root / "counter").write_bytes(b"0")
    server = spawn_server("-t", "4")
    conflicts = Counter[int]()

    async def client(n: int) -> None:
        async with Connection(server.port) as conn:
            for i in range(increments):
                while True:
                    rid = f"{n}-{i}-{conflicts[n]}"
                    read = await conn.request("GET", "/counter", if_match="*", request_id=f"r{rid}")
                    assert read.status == 200 and read.etag is not None
                    value = str(int(read.body) + 1).encode()
                    write = await conn.request(
                        "PUT", "/counter", value, if_match=read.etag, request_id=f"w{rid}"
                    )
                    if write.status == 200:
                        break
                    assert write.status == 412, write
                    conflicts[n] += 1

    async def run() -> None:
        await asyncio.gather(*(client(n) for n in range(clients)))

    asyncio.run(run())
    assert server.stop() == 0
    assert (site.root / "counter").read_bytes() == str(clients * increments).encode()
    lines = site.log_lines()
    assert sum(line.startswith("PUT,/counter,200,") for line in lines) == clients * increments
    assert sum(line.startswith("PUT,/counter,412,") for line in lines) == sum(conflicts.values())
    assert sum(conflicts.values()) > 0, "the clients never contended"

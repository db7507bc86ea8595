"""A bounded, concurrent load driver for a running asrv that records what every client saw.

    python -m asrv.load --port 8080 --root ./files --history run.jsonl --requests 5000
    python -m asrv.load --port 8080 --root ./files --history run.jsonl --keep-alive
    python -m asrv.load --port 8080 --root ./files --history run.jsonl --head-ratio 0.1 \
        --delete-ratio 0.05 --range-ratio 0.15 --cas

Every request has a unique `Request-Id` (`RUN-N`, where RUN is a random tag of this run).
By default each request goes on a new connection and says `Connection: close`. With
`--keep-alive` each client keeps one persistent connection and sends its requests on it one
after another (no `Connection: close`; the responses are framed by their Content-Length). It
opens a new connection only when the old one cannot carry the next request: the server closed
it or said `Connection: close`, the last response was an error after which a server may close
(any 4xx or 5xx but 404, 412 and 416), the request timed out or its response was malformed, or a
`--slow stall-upload` request gave up (closing its connection). A request sent on a reused
connection that the server closed before answering is recorded as failed, like any other,
and is not retried: the checker must treat it as possibly logged. With `--slow slow-read`,
every kept connection has a slow reader's small receive buffer (it carries fast readers'
requests too); only the requests planned as slow read slowly. `--keep-alive` needs a server
that keeps connections (not one running with `--course`).

The mix: `--get-ratio`, `--head-ratio`, `--delete-ratio` and `--range-ratio` are the shares
of plain GETs, HEADs, DELETEs and ranged GETs; PUTs take the rest. A ranged GET asks for one
range (`bytes=A-B`, `bytes=A-` or `bytes=-N`, some starting past the end of any file the load
writes), or now and then for something a server answers with the whole file (`IGNORED_RANGES`);
some carry If-Range with the latest ETag the run has seen of the file, some a stale one.
With `--cas`, half the clients (at least one) are conditional: each PUT they take is a
read-modify-write (`read_modify_write`: GET with `If-Match: *`, then the PUT with `If-Match`
of the ETag read, or `If-None-Match: *` if the file was missing, again after a 412, at most
`CAS_ATTEMPTS` rounds) or, sometimes, a create-only PUT (`If-None-Match: *`); each DELETE
carries If-Match and some GETs and HEADs If-None-Match, with the latest ETag the run has seen
of the file (`*` before it has seen one). The plan is drawn from the seed alone; which ETags a
request names is decided when it is sent. The other clients send their requests plainly.

A PUT's body is derived from its id (`body_for`: sha256 of the id, repeated to the length),
so contents can be recomputed from an id alone. The requests of a read-modify-write take the
planned id, then `ID.1`, `ID.2`, ... (so `--requests` counts planned requests, and a
read-modify-write sends up to 2 * CAS_ATTEMPTS). The history (`--history`, JSON lines) is
what `python -m asrv.check` needs to judge the server's audit log: a header, then one record
per request, in completion order:

    {"type": "header", "format": "asrv-history", "version": 2, "run": "5f0c9a1e",
     "target": "127.0.0.1:8080", "initial": {"/load-0": {"sha256": "9f86...", "length": 4},
     "/load-1": null}, "options": {..., "keep_alive": false, "cas": true, ...}}
    {"type": "request", "id": "5f0c9a1e-0.1", "method": "PUT", "uri": "/load-0",
     "body_sha256": "2c26...", "body_length": 4096, "headers": {"If-Match": "\"1a2b-3f9\""},
     "invoke": 5021.25, "complete": 5021.31, "status": 200, "response_sha256": "a1b2...",
     "response_length": 3, "response_etag": "\"1a2c-77e\"", "content_range": null,
     "content_length": 3, "error": null}

`initial` maps each URI the run uses to its content before the first request (`null`: absent);
it is itself `null` without `--root`, and the checker then infers the start state. `options`
records how the run was driven (`keep_alive` says which connection mode ran). `headers` holds
the Range, If-Range, If-Match and If-None-Match headers the request sent (only those).
`invoke` is `time.monotonic()` just before sending the request (before connecting, when the
request needs a new connection) and `complete` just after the whole response was read.
`response_sha256` and `response_length` are of the body read (none for a HEAD or a 304);
`content_length` is the Content-Length the response declared (`null`: none, as for a 304),
`response_etag` and `content_range` its ETag and Content-Range as sent (`null`: absent). A
request that got no whole response has `status`, `complete` and the response fields `null`
and says why in `error` (`gave-up: ...` when the plan was to abandon it). Version 1 had no
`headers`, `response_etag`, `content_range` or `content_length` (and only GETs and PUTs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import math
import random
import re
import secrets
import socket
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, TextIO

HISTORY_FORMAT = "asrv-history"
HISTORY_VERSION = 2
SLOW_MODES = ("stall-upload", "slow-read")

STALLED_PUT_SHARE = 0.25
"""With `--slow stall-upload`, the share of PUTs that pause part-way through their body."""
GIVE_UP_SHARE = 0.2
"""The share of stalled PUTs that never finish their body (they close or reset instead)."""
STALL_SECONDS = (0.05, 0.5)
"""Range of an upload pause: well under the server's default 5 s timeout."""
SLOW_READ_SHARE = 0.25
"""With `--slow slow-read`, the share of requests whose client reads the response slowly."""
SLOW_READ_PAUSES = 32
"""A slow reader takes a body in at most this many pieces (of 4 KiB or more), pausing after each."""
SLOW_READ_PAUSE = 0.01
SLOW_READ_BUFFER = 4096
"""Receive buffer of a slow reader's socket: small, so that the server's sends must wait."""
READ_CHUNK = 1 << 16
CLOSE_GRACE = 1.0
PROGRESS_EVERY = 3.0
"""Seconds between progress lines; shorter runs print none."""
KEPT_AFTER_ERROR = frozenset({404, 412, 416})
"""Error statuses after which a kept connection carries the next request. After any other
4xx or 5xx a server may close without saying so (asrv does after 400, 413 and 505): the
client opens a new connection rather than race that close."""
CAS_ATTEMPTS = 3
"""Rounds of read and conditional write a read-modify-write makes before it gives up."""
CREATE_ONLY_SHARE = 0.2
"""With `--cas`, the share of a conditional client's PUTs that only create (If-None-Match: *)
instead of a read-modify-write."""
IF_NONE_MATCH_SHARE = 0.3
"""With `--cas`, the share of a conditional client's plain GETs and HEADs that carry
If-None-Match (the latest ETag seen of the file, `*` when none was)."""
IF_RANGE_SHARES = (0.15, 0.15)
"""The shares of ranged GETs whose If-Range is the latest ETag seen of the file, and a stale
one."""
IGNORED_RANGES = ("bytes=0-0,2-3", "bytes=9-3", "items=0-9", "bytes=x-1")
"""Range values a server answers with the whole file: several ranges, first > last, another
unit, not a number."""
NEVER_ISSUED_ETAG = '"asrv-load-never-issued"'
"""A stale ETag for a file of which no older ETag was seen: no server issued it."""
ETAGS_KEPT = 8
"""ETags remembered per file, the latest last."""


class LoadError(Exception):
    """The load cannot run as asked (bad option, non-loopback target, unusable root)."""


class BadResponse(Exception):
    """The server's answer is not an HTTP/1.1 response with a Content-Length."""


@dataclass(frozen=True)
class LoadOptions:
    """What `run_load` does; each field mirrors the command-line option of the same name."""

    port: int
    host: str = "127.0.0.1"
    allow_remote: bool = False
    clients: int = 16
    requests: int = 1000
    uris: int = 4
    get_ratio: float = 0.5
    min_body: int = 0
    max_body: int = 1 << 20
    seed: int | None = None
    duration: float | None = None
    slow: frozenset[str] = frozenset()
    root: Path | None = None
    history: Path | None = None
    request_timeout: float = 30.0
    keep_alive: bool = False
    head_ratio: float = 0.0
    delete_ratio: float = 0.0
    range_ratio: float = 0.0
    cas: bool = False

    def validate(self) -> None:
        """Raise `LoadError` naming the first option that cannot work."""
        problems = [
            (not 1 <= self.port <= 65535, "--port must be 1-65535"),
            (self.clients < 1, "--clients must be at least 1"),
            (self.requests < 0, "--requests must not be negative"),
            (self.uris < 1, "--uris must be at least 1"),
            (not 0 <= self.get_ratio <= 1, "--get-ratio must be between 0 and 1"),
            (not 0 <= self.head_ratio <= 1, "--head-ratio must be between 0 and 1"),
            (not 0 <= self.delete_ratio <= 1, "--delete-ratio must be between 0 and 1"),
            (not 0 <= self.range_ratio <= 1, "--range-ratio must be between 0 and 1"),
            (sum(self.ratios()) > 1, "the --*-ratio options must add up to at most 1"),
            (not 0 <= self.min_body <= self.max_body, "need 0 <= --min-body <= --max-body"),
            (self.duration is not None and self.duration <= 0, "--duration must be positive"),
            (self.request_timeout <= 0, "--request-timeout must be positive"),
            (not self.slow <= set(SLOW_MODES), f"--slow takes {' or '.join(SLOW_MODES)}"),
        ]
        for failed, message in problems:
            if failed:
                raise LoadError(message)
        _check_target(self.host, self.allow_remote)

    def ratios(self) -> tuple[float, float, float, float]:
        """The shares of GETs, HEADs, DELETEs and ranged GETs; PUTs take the rest."""
        return self.get_ratio, self.head_ratio, self.delete_ratio, self.range_ratio

    def describe(self) -> dict[str, Any]:
        """The options as JSON values, for the history header."""
        return {
            "clients": self.clients,
            "requests": self.requests,
            "uris": self.uris,
            "get_ratio": self.get_ratio,
            "head_ratio": self.head_ratio,
            "delete_ratio": self.delete_ratio,
            "range_ratio": self.range_ratio,
            "cas": self.cas,
            "min_body": self.min_body,
            "max_body": self.max_body,
            "seed": self.seed,
            "duration": self.duration,
            "slow": sorted(self.slow),
            "root": None if self.root is None else str(self.root),
            "request_timeout": self.request_timeout,
            "keep_alive": self.keep_alive,
        }


def _check_target(host: str, allow_remote: bool) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise LoadError(f"--host must be a numeric address, not {host!r}") from None
    if not address.is_loopback and not allow_remote:
        raise LoadError(f"{host} is not a loopback address (use --allow-remote to load it)")


@dataclass(frozen=True, slots=True)
class Stall:
    """A PUT that sends `sent` body bytes, pauses, then finishes or gives up."""

    sent: int
    pause: float
    then: Literal["resume", "close", "reset"]

    def __str__(self) -> str:
        return f"{self.then} after {self.pause:.2f} s and {self.sent} body bytes"


Condition = Literal["read-modify-write", "create-only", "if-match", "if-none-match"]
"""What a conditional client (`--cas`) makes of a planned request: a PUT as a read-modify-write
or a create-only PUT, a DELETE with If-Match, a GET or HEAD with If-None-Match."""
EtagChoice = Literal["latest", "stale"]


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request to send: everything about it is decided before it is sent, but the ETags
    it names, which are chosen from those seen when it is sent (`resolve`)."""

    request_id: str
    method: str
    uri: str
    body_length: int = 0
    stall: Stall | None = None
    slow_read: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    """Headers sent as they are (Range, and the conditions once resolved)."""
    if_range: EtagChoice | None = None
    condition: Condition | None = None


@dataclass(slots=True)
class RequestRecord:
    """A request as its client saw it: one record of the history."""

    request_id: str
    method: str
    uri: str
    body_sha256: str | None
    body_length: int
    invoke: float
    complete: float | None = None
    status: int | None = None
    response_sha256: str | None = None
    response_length: int | None = None
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    response_etag: str | None = None
    content_range: str | None = None
    content_length: int | None = None

    def to_json(self) -> str:
        """The record as one line of the history (without the newline)."""
        return json.dumps(
            {
                "type": "request",
                "id": self.request_id,
                "method": self.method,
                "uri": self.uri,
                "body_sha256": self.body_sha256,
                "body_length": self.body_length,
                "headers": self.headers,
                "invoke": self.invoke,
                "complete": self.complete,
                "status": self.status,
                "response_sha256": self.response_sha256,
                "response_length": self.response_length,
                "response_etag": self.response_etag,
                "content_range": self.content_range,
                "content_length": self.content_length,
                "error": self.error,
            }
        )


@dataclass
class Summary:
    """What a run did: requests finished, by status and by kind of error."""

    run: str
    seed: int | None = None
    requests: int = 0
    connections: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    def add(self, record: RequestRecord) -> None:
        """Count one finished request."""
        self.requests += 1
        if record.status is not None:
            self.statuses[record.status] += 1
        if record.error is not None:
            self.errors[record.error.partition(":")[0]] += 1

    @property
    def failures(self) -> int:
        """Requests that got no response although the plan was to finish them."""
        return sum(count for kind, count in self.errors.items() if kind != "gave-up")

    def line(self) -> str:
        """The one-line summary the command prints."""
        rate = self.requests / self.elapsed if self.elapsed > 0 else 0.0
        statuses = " ".join(f"{code}:{n}" for code, n in sorted(self.statuses.items()))
        errors = " ".join(f"{kind}:{n}" for kind, n in sorted(self.errors.items()))
        return (
            f"asrv.load: run {self.run} (seed {self.seed}): {self.requests} requests on "
            f"{self.connections} connections in {self.elapsed:.1f} s ({rate:.0f} req/s); "
            f"statuses {statuses or 'none'}; "
            f"errors {errors or 'none'}"
        )


def uri_names(count: int) -> list[str]:
    """The URIs a run with `--uris count` uses."""
    return [f"/load-{number}" for number in range(count)]


def body_for(request_id: str, length: int, start: int = 0) -> bytes:
    """The body of the PUT with this id: sha256(id) repeated to `length` bytes; from byte
    `start` on when given (without making the bytes before it: the checker reads ranges)."""
    block = hashlib.sha256(request_id.encode()).digest()
    offset = start % len(block)
    block = block[offset:] + block[:offset]
    count = max(0, length - start)
    return (block * (count // len(block) + 1))[:count]


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    """A size in [low, high] whose logarithm is uniform: tiny and huge bodies both occur."""
    size = math.exp(rng.uniform(math.log(low + 1), math.log(high + 1))) - 1
    return min(high, max(low, round(size)))


def plan_requests(options: LoadOptions, run: str) -> Iterator[PlannedRequest]:
    """The run's requests in the order they are issued; the seed makes them repeatable."""
    rng = random.Random(options.seed)
    uris = uri_names(options.uris)
    for number in range(options.requests):
        yield _plan_one(rng, options, uris, f"{run}-{number}")


def _plan_one(
    rng: random.Random, options: LoadOptions, uris: list[str], request_id: str
) -> PlannedRequest:
    # The draws of a plan without the newer options are those of earlier versions, so that
    # a seed still names the same plan.
    uri = rng.choice(uris)
    slow_read = "slow-read" in options.slow and rng.random() < SLOW_READ_SHARE
    kind = _plan_kind(rng.random(), options)
    if kind == "PUT":
        length = log_uniform(rng, options.min_body, options.max_body)
        stall = _plan_stall(rng, length) if "stall-upload" in options.slow else None
        planned = PlannedRequest(request_id, "PUT", uri, length, stall, slow_read)
    elif kind == "RANGE":
        headers = (("Range", _plan_range(rng, options.max_body)),)
        if_range = _plan_if_range(rng)
        planned = PlannedRequest(request_id, "GET", uri, slow_read=slow_read, headers=headers)
        planned = replace(planned, if_range=if_range)
    else:
        planned = PlannedRequest(request_id, kind, uri, slow_read=slow_read)
    if options.cas:
        planned = replace(planned, condition=_plan_condition(rng, planned))
    return planned


def _plan_kind(draw: float, options: LoadOptions) -> str:
    """GET, HEAD, DELETE, RANGE (a ranged GET) or PUT, by the options' shares."""
    for kind, share in zip(("GET", "HEAD", "DELETE", "RANGE"), options.ratios(), strict=True):
        if draw < share:
            return kind
        draw -= share
    return "PUT"


def _plan_range(rng: random.Random, max_body: int) -> str:
    """A Range value: mostly one range of the forms asrv serves (some starting past the end
    of any file the load writes, for 416), sometimes one it answers with the whole file."""
    form = rng.random()
    if form < 0.4:
        first = log_uniform(rng, 0, max_body)
        return f"bytes={first}-{first + log_uniform(rng, 0, max_body)}"
    if form < 0.6:
        return f"bytes={log_uniform(rng, 0, max_body)}-"
    if form < 0.8:
        return f"bytes=-{log_uniform(rng, 0, max_body)}"
    if form < 0.9:
        return f"bytes={max_body + 1 + log_uniform(rng, 0, max_body)}-"
    return rng.choice(IGNORED_RANGES)


def _plan_if_range(rng: random.Random) -> EtagChoice | None:
    draw = rng.random()
    latest, stale = IF_RANGE_SHARES
    if draw < latest:
        return "latest"
    return "stale" if draw < latest + stale else None


def _plan_condition(rng: random.Random, planned: PlannedRequest) -> Condition | None:
    """What a conditional client makes of the request (a plain client sends it as planned)."""
    if planned.method == "PUT":
        return "create-only" if rng.random() < CREATE_ONLY_SHARE else "read-modify-write"
    if planned.method == "DELETE":
        return "if-match"
    if planned.headers:  # a ranged GET: its If-Range is condition enough
        return None
    return "if-none-match" if rng.random() < IF_NONE_MATCH_SHARE else None


def _plan_stall(rng: random.Random, length: int) -> Stall | None:
    if length == 0 or rng.random() >= STALLED_PUT_SHARE:
        return None
    then: Literal["resume", "close", "reset"] = "resume"
    if rng.random() < GIVE_UP_SHARE:
        then = rng.choice(("close", "reset"))
    return Stall(rng.randrange(length), rng.uniform(*STALL_SECONDS), then)


class EtagBook:
    """The ETags the run has seen, per URI, latest last; shared by the clients, so a tag one
    client saw may be stale by the time another sends it, as it should sometimes be."""

    def __init__(self) -> None:
        self._seen: dict[str, list[str]] = {}

    def learn(self, record: RequestRecord) -> None:
        """Remember the ETag of a response, which names the version it found or wrote."""
        if record.response_etag is None:
            return
        seen = self._seen.setdefault(record.uri, [])
        if record.response_etag in seen:
            seen.remove(record.response_etag)
        seen.append(record.response_etag)
        del seen[:-ETAGS_KEPT]

    def latest(self, uri: str) -> str | None:
        seen = self._seen.get(uri)
        return seen[-1] if seen else None

    def stale(self, uri: str) -> str:
        """An ETag seen before the latest one, or one no server issued."""
        seen = self._seen.get(uri, [])
        return seen[-2] if len(seen) > 1 else NEVER_ISSUED_ETAG


def resolve(planned: PlannedRequest, book: EtagBook, *, conditional: bool) -> PlannedRequest:
    """The request to send: `planned` with the ETags it names chosen from `book`; its
    condition only from a `conditional` client (a read-modify-write is no single request:
    see `read_modify_write`)."""
    headers = list(planned.headers)
    uri = planned.uri
    if planned.if_range is not None:
        latest = book.latest(uri) if planned.if_range == "latest" else None
        headers.append(("If-Range", latest or book.stale(uri)))
    if conditional and planned.condition is not None:
        latest_or_any = book.latest(uri) or "*"
        condition = {
            "create-only": ("If-None-Match", "*"),
            "if-match": ("If-Match", latest_or_any),
            "if-none-match": ("If-None-Match", latest_or_any),
        }.get(planned.condition)
        if condition is not None:
            headers.append(condition)
    return replace(planned, headers=tuple(headers), if_range=None, condition=None)


def request_head(planned: PlannedRequest, *, close: bool = True) -> bytes:
    """The request line and headers of a planned request; `close` asks for `Connection:
    close`, so that the server ends the connection after its response."""
    lines = [f"{planned.method} {planned.uri} HTTP/1.1", f"Request-Id: {planned.request_id}"]
    if close:
        lines.append("Connection: close")
    if planned.method == "PUT":
        lines.append(f"Content-Length: {planned.body_length}")
    lines += [f"{name}: {value}" for name, value in planned.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def perform(
    planned: PlannedRequest,
    host: str,
    port: int,
    timeout: float = 30.0,  # noqa: ASYNC109 (the record must say which request timed out)
) -> RequestRecord:
    """Send one request on a new connection (with `Connection: close`) and record what came
    back.

    Never raises for network trouble: a request without a whole response is recorded with
    `status` None and the reason in `error`.
    """
    client = Client(host, port)
    try:
        return await client.perform(planned, timeout)
    finally:
        await client.close()


class Client:
    """One client of the load, sending its requests one after another (never two at once).

    Each request goes on a new connection with `Connection: close`, or, with `keep_alive`,
    on the client's one connection for as long as it can carry the next request (see the
    module notes). `connections` counts the connections it opened.
    """

    def __init__(
        self, host: str, port: int, *, keep_alive: bool = False, small_receive_buffer: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.keep_alive = keep_alive
        self.small_receive_buffer = small_receive_buffer
        """Open every connection with a small receive buffer, not only a slow reader's."""
        self.connections = 0
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def perform(
        self,
        planned: PlannedRequest,
        timeout: float = 30.0,  # noqa: ASYNC109 (the record must say which request timed out)
    ) -> RequestRecord:
        """Send one request and record what came back; never raises for network trouble."""
        body = body_for(planned.request_id, planned.body_length) if planned.method == "PUT" else b""
        if self._streams is not None and _ended(*self._streams):
            await self.close()  # the server closed it since the last response: a new one
        reused = self._streams is not None
        record = RequestRecord(
            planned.request_id,
            planned.method,
            planned.uri,
            hashlib.sha256(body).hexdigest() if planned.method == "PUT" else None,
            len(body),
            invoke=time.monotonic(),
            headers=dict(planned.headers),
        )
        keep = False
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._connection(planned.slow_read)
                keep = await _exchange(
                    reader, writer, planned, body, record, keep_alive=self.keep_alive
                )
        except TimeoutError:
            record.error = f"timeout: no whole response within {timeout} s"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            record.error = f"connection: {type(error).__name__}: {error}"
            if reused:
                record.error += " (on a reused connection)"
        except BadResponse as error:
            record.error = f"bad-response: {error}"
        finally:
            if not keep:
                await self.close()
        return record

    async def close(self) -> None:
        """Close the client's connection, if it has one."""
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            await _close(writer)

    async def _connection(
        self, slow_read: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            small = self.small_receive_buffer or slow_read
            self._streams = await _connect(self.host, self.port, small)
            self.connections += 1
        return self._streams


def _ended(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether a kept connection is known to be over (the server's end of stream is in)."""
    return reader.at_eof() or writer.is_closing()


async def _connect(
    host: str, port: int, small_receive_buffer: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if not small_receive_buffer:
        return await asyncio.open_connection(host, port)
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READ_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    planned: PlannedRequest,
    body: bytes,
    record: RequestRecord,
    *,
    keep_alive: bool,
) -> bool:
    """Send the request and read its response into `record`; True if, with `keep_alive`, the
    connection can carry the next request."""
    if not await _send(writer, planned, body, close=not keep_alive):
        record.error = f"gave-up: {planned.stall} of {planned.body_length}"
        return False
    response = await read_response(reader, planned.slow_read, head_only=planned.method == "HEAD")
    record.complete = time.monotonic()
    head = response.head
    record.status, record.response_sha256 = head.status, response.sha256
    record.response_length, record.content_length = response.length, head.length
    record.response_etag, record.content_range = head.etag, head.content_range
    kept_status = head.status < 400 or head.status in KEPT_AFTER_ERROR
    return keep_alive and kept_status and not head.close


async def _send(
    writer: asyncio.StreamWriter, planned: PlannedRequest, body: bytes, *, close: bool = True
) -> bool:
    """Write the request; False when the plan is to give up part-way (connection ended)."""
    writer.write(request_head(planned, close=close))
    stall = planned.stall
    if stall is None:
        writer.write(body)
        await writer.drain()
        return True
    writer.write(body[: stall.sent])
    await writer.drain()
    await asyncio.sleep(stall.pause)
    if stall.then == "resume":
        writer.write(body[stall.sent :])
        await writer.drain()
        return True
    if stall.then == "reset":
        writer.transport.abort()
    else:
        writer.close()
    return False


class ResponseHead(NamedTuple):
    """What a response head says about the response."""

    status: int
    length: int | None
    """The declared Content-Length (None: a 304 declares none)."""
    close: bool
    """The server said `Connection: close`."""
    etag: str | None = None
    content_range: str | None = None


class Response(NamedTuple):
    """One whole response: its head, and the sha256 and length of the body read."""

    head: ResponseHead
    sha256: str
    length: int


async def read_response(
    reader: asyncio.StreamReader, slow: bool, *, head_only: bool = False
) -> Response:
    """Read one whole response, framed by its Content-Length (never reading past it); the
    response to a HEAD (`head_only`) and a 304 have no body, whatever their head says."""
    if slow:
        await asyncio.sleep(SLOW_READ_PAUSE)
    head = parse_response_head(await reader.readuntil(b"\r\n\r\n"))
    remaining = 0
    if not head_only and head.status != 304:
        if head.length is None:
            raise BadResponse(f"a {head.status} without Content-Length")
        remaining = head.length
    digest = hashlib.sha256()
    chunk = max(SLOW_READ_BUFFER, -(-remaining // SLOW_READ_PAUSES)) if slow else READ_CHUNK
    read = 0
    while read < remaining:
        data = await reader.readexactly(min(remaining - read, chunk))
        digest.update(data)
        read += len(data)
        if slow:
            await asyncio.sleep(SLOW_READ_PAUSE)
    return Response(head, digest.hexdigest(), read)


def parse_response_head(head: bytes) -> ResponseHead:
    """Status, Content-Length, `Connection: close`, ETag and Content-Range of a response head
    ending with the empty line."""
    status_line, *header_lines = head[: -len(b"\r\n\r\n")].split(b"\r\n")
    match = re.fullmatch(rb"HTTP/1\.1 ([0-9]{3}) [ -~]*", status_line)
    if match is None:
        raise BadResponse(f"status line {status_line[:80]!r}")
    fields = [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in header_lines)
    ]
    lengths = _values(fields, b"content-length")
    if len(lengths) > 1 or not all(length.isdigit() for length in lengths):
        raise BadResponse(f"Content-Length headers {lengths!r}")
    options = {
        option.strip().lower()
        for value in _values(fields, b"connection")
        for option in value.split(b",")
    }
    return ResponseHead(
        int(match[1]),
        int(lengths[0]) if lengths else None,
        b"close" in options,
        _single(fields, b"etag"),
        _single(fields, b"content-range"),
    )


def _values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for field_name, value in fields if field_name == name]


def _single(fields: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of a header that may appear once, as text; None when absent."""
    values = _values(fields, name)
    if len(values) > 1:
        raise BadResponse(f"{name.decode()} headers {values!r}")
    return values[0].decode("latin-1") if values else None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # The server may have reset the connection first, or stopped reading: neither matters
    # once the response is in, so give up on a graceful close after a moment.
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    writer.transport.abort()


def snapshot_initial(root: Path, uris: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """The content (sha256 and length, or None if absent) of each URI's file in `root`."""
    initial: dict[str, dict[str, Any] | None] = {}
    for uri in uris:
        path = root / uri.removeprefix("/")
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            initial[uri] = None
            continue
        except OSError as error:
            raise LoadError(f"cannot read the initial state of {path}: {error}") from None
        if not stat.S_ISREG(mode):
            raise LoadError(f"{path} is not a regular file: the checker could not model it")
        initial[uri] = file_content(path)
    return initial


def file_content(path: Path) -> dict[str, Any]:
    """sha256 and length of a file, read in pieces."""
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as stream:
        while data := stream.read(READ_CHUNK):
            digest.update(data)
            length += len(data)
    return {"sha256": digest.hexdigest(), "length": length}


def history_header(
    run: str, target: str, initial: dict[str, dict[str, Any] | None] | None, **extra: Any
) -> dict[str, Any]:
    """The first record of a history; `initial` None means the start state is unknown."""
    return {
        "type": "header",
        "format": HISTORY_FORMAT,
        "version": HISTORY_VERSION,
        "run": run,
        "target": target,
        "initial": initial,
        **extra,
    }


class HistoryWriter:
    """Writes a history file as the run goes (a no-op without a path): header, then records."""

    def __init__(self, path: Path | None, header: dict[str, Any]) -> None:
        self._stream: TextIO | None = None
        if path is not None:
            try:
                self._stream = path.open("w", encoding="utf-8")
            except OSError as error:
                raise LoadError(f"cannot write the history: {error}") from None
            self._stream.write(json.dumps(header) + "\n")

    def write(self, record: RequestRecord) -> None:
        """Append one request's record."""
        if self._stream is not None:
            self._stream.write(record.to_json() + "\n")

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            self._stream.close()


async def run_load(options: LoadOptions, progress: TextIO | None = None) -> Summary:
    """Run the load `options` describe, write its history if asked, and sum it up.

    Stops issuing requests when all are sent or `duration` has passed; requests in flight
    then finish, each bounded by `request_timeout`. Progress lines go to `progress`, if
    given, every few seconds.
    """
    options.validate()
    if options.seed is None:  # a random plan, yet one that a failing run can be repeated from
        options = replace(options, seed=secrets.randbits(32))
    run = secrets.token_hex(4)
    # Read before the first request, while nothing else can change the files.
    initial = (
        None if options.root is None else snapshot_initial(options.root, uri_names(options.uris))
    )
    header = history_header(
        run, f"{options.host}:{options.port}", initial, options=options.describe()
    )
    summary = Summary(run, options.seed)
    book = EtagBook()
    with HistoryWriter(options.history, header) as history:

        def finished(record: RequestRecord) -> None:
            book.learn(record)
            history.write(record)
            summary.add(record)

        started = time.monotonic()
        reporter = None
        if progress is not None:
            reporter = asyncio.create_task(
                _report_progress(summary, options.requests, started, progress)
            )
        try:
            summary.connections = await _drive(
                options, plan_requests(options, run), book, finished, started
            )
        finally:
            if reporter is not None:
                reporter.cancel()
        summary.elapsed = time.monotonic() - started
    return summary


async def _drive(
    options: LoadOptions,
    plan: Iterator[PlannedRequest],
    book: EtagBook,
    finished: Callable[[RequestRecord], None],
    started: float,
) -> int:
    """Run the clients until the plan is done or the deadline passed; the connections
    they opened."""
    deadline = None if options.duration is None else started + options.duration
    clients = [
        Client(
            options.host,
            options.port,
            keep_alive=options.keep_alive,
            small_receive_buffer=options.keep_alive and "slow-read" in options.slow,
        )
        for _ in range(options.clients)
    ]
    conditional = conditional_clients(options)
    async with asyncio.TaskGroup() as group:
        for number, client in enumerate(clients):
            driver = _Driver(client, book, finished, options.request_timeout, number < conditional)
            group.create_task(driver.run(plan, deadline))
    return sum(client.connections for client in clients)


def conditional_clients(options: LoadOptions) -> int:
    """How many clients send conditions (the first ones): with `--cas` half, at least one."""
    return max(1, options.clients // 2) if options.cas else 0


@dataclass
class _Driver:
    """One client working through the shared plan, as a conditional client or a plain one."""

    client: Client
    book: EtagBook
    finished: Callable[[RequestRecord], None]
    timeout: float
    conditional: bool

    async def run(self, plan: Iterator[PlannedRequest], deadline: float | None) -> None:
        # The clients share one plan: each takes the next request when its previous one is done.
        try:
            for planned in plan:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if self.conditional and planned.condition == "read-modify-write":
                    await read_modify_write(self.client, planned, self.finished, self.timeout)
                else:
                    request = resolve(planned, self.book, conditional=self.conditional)
                    self.finished(await self.client.perform(request, self.timeout))
        finally:
            await self.client.close()


async def read_modify_write(
    client: Client,
    planned: PlannedRequest,
    finished: Callable[[RequestRecord], None],
    timeout: float = 30.0,  # noqa: ASYNC109 (each request's records say which timed out)
) -> None:
    """Write `planned` (a PUT) over the version just read, never over another: GET with
    `If-Match: *` for the content and its ETag, then the PUT with `If-Match` of that ETag
    (`If-None-Match: *` when the file is missing); after a 412 another round, at most
    `CAS_ATTEMPTS` in all. The requests take the planned id, then `ID.1`, `ID.2`, ...; each
    one's record goes to `finished` as it completes. Stops early when a read gives no ETag
    to write over (an error, or a server without ETags)."""
    ids = (planned.request_id if step == 0 else f"{planned.request_id}.{step}" for step in count())
    for _ in range(CAS_ATTEMPTS):
        read = PlannedRequest(
            next(ids), "GET", planned.uri, slow_read=planned.slow_read, headers=(("If-Match", "*"),)
        )
        record = await client.perform(read, timeout)
        finished(record)
        precondition = _write_precondition(record)
        if precondition is None:
            return
        write = replace(planned, request_id=next(ids), headers=(precondition,), condition=None)
        record = await client.perform(write, timeout)
        finished(record)
        if record.status != 412:
            return


def _write_precondition(read: RequestRecord) -> tuple[str, str] | None:
    """The condition of a write over what `read` found, if it found something to write over."""
    if read.status == 404:
        return "If-None-Match", "*"
    if read.status == 200 and read.response_etag is not None:
        return "If-Match", read.response_etag
    return None


async def _report_progress(summary: Summary, total: int, started: float, stream: TextIO) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        elapsed = time.monotonic() - started
        print(
            f"asrv.load: {summary.requests} requests ({total} planned), "
            f"{summary.requests / elapsed:.0f} req/s, {summary.failures} failed",
            file=stream,
            flush=True,
        )


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m asrv.load`."""
    parser = argparse.ArgumentParser(
        prog="python -m asrv.load",
        description="Load a running asrv with concurrent GETs, PUTs, HEADs, DELETEs, ranged and "
        "conditional requests over a few files and record what every client saw, for "
        "`python -m asrv.check`.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    add("--allow-remote", action="store_true", help="allow a non-loopback --host")
    add("--port", type=int, required=True, help="server port")
    add("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    add("--requests", type=int, default=1000, help="requests in all (default: %(default)s)")
    add("--uris", type=int, default=4, help="distinct files (default: %(default)s)")
    add("--get-ratio", type=float, default=0.5, help="share of GETs (default: %(default)s)")
    add("--head-ratio", type=float, default=0.0, help="share of HEADs (default: %(default)s)")
    add("--delete-ratio", type=float, default=0.0, help="share of DELETEs (default: %(default)s)")
    add(
        "--range-ratio",
        type=float,
        default=0.0,
        help="share of GETs with one Range, some past the end, some with If-Range of the "
        "latest or a stale ETag (default: %(default)s); PUTs take what the ratios leave",
    )
    add(
        "--cas",
        action="store_true",
        help="half the clients (at least one) send conditions: each PUT a read-modify-write "
        f"(GET with If-Match: *, then PUT with If-Match of its ETag, up to {CAS_ATTEMPTS} rounds "
        "while it gets 412) or a create-only PUT (If-None-Match: *), each DELETE with If-Match, "
        "some GETs and HEADs with If-None-Match",
    )
    add("--min-body", type=int, default=0, help="smallest PUT body, bytes (default: 0)")
    add("--max-body", type=int, default=1 << 20, help="largest PUT body (default: 1 MiB)")
    add("--seed", type=int, help="seed of the request plan (default: random, then shown)")
    add("--duration", type=float, help="stop issuing requests after this many seconds")
    add("--request-timeout", type=float, default=30.0, help="seconds per request (default: 30)")
    add(
        "--keep-alive",
        action="store_true",
        help="each client sends its requests one after another on one persistent connection "
        "(no Connection: close), opening a new one only when the server closed it, after an "
        "error response but 404, a timeout, or a request that gave up (default: a new "
        "connection per request, with Connection: close; not for a server run with --course)",
    )
    add(
        "--slow",
        action="append",
        choices=SLOW_MODES,
        default=[],
        help="stall-upload: some PUTs pause mid-body (some then give up); slow-read: some "
        "clients read responses slowly (repeatable)",
    )
    add("--root", type=Path, help="the server's root, to record the files' initial contents")
    add("--history", type=Path, help="write the history (JSON lines) to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; exit status 0 if every request that was meant to finish got a
    response, 1 if some did not, 2 for a bad command line."""
    args = build_parser().parse_args(argv)
    options = LoadOptions(
        port=args.port,
        host=args.host,
        allow_remote=args.allow_remote,
        clients=args.clients,
        requests=args.requests,
        uris=args.uris,
        get_ratio=args.get_ratio,
        min_body=args.min_body,
        max_body=args.max_body,
        seed=args.seed,
        duration=args.duration,
        slow=frozenset(args.slow),
        root=args.root,
        history=args.history,
        request_timeout=args.request_timeout,
        keep_alive=args.keep_alive,
        head_ratio=args.head_ratio,
        delete_ratio=args.delete_ratio,
        range_ratio=args.range_ratio,
        cas=args.cas,
    )
    try:
        summary = asyncio.run(run_load(options, progress=sys.stderr))
    except LoadError as error:
        print(f"asrv.load: {error}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0 if summary.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

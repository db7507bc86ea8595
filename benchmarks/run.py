"""Load asrv with wrk on 127.0.0.1 and print one table of medians.

    python benchmarks/run.py [--seconds 5] [--rounds 3] [--out bench-results/latest.txt]

Cases run in interleaved rounds (A B C A B C ...) so that drift on a shared machine hits them
alike; each cell is the median over rounds, with the spread (min-max) beside it. "flushes /
1k" is how many group commits (log fsyncs, or writes with --no-fsync) served 1,000 requests,
read from the server's own shutdown line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).parent

PUT_SCRIPT = """
local body = string.rep("p", 4096)
local counter = 0
request = function()
  counter = counter + 1
  local name = "/put" .. (counter % 16)
  return wrk.format("PUT", name, {["Content-Length"] = "4096", ["Connection"] = "close"}, body)
end
"""


@dataclass(frozen=True)
class Case:
    name: str
    clients: int
    keep_alive: bool
    fsync: bool
    path: str = "/file4k"
    script: str | None = None


@dataclass
class Samples:
    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    flushes: list[float] = field(default_factory=list)


def cases() -> list[Case]:
    result = []
    for fsync in (True, False):
        result += [
            Case("GET 4 KiB, close, 16 clients", 16, False, fsync),
            Case("GET 4 KiB, keep-alive, 64 clients", 64, True, fsync),
            Case("PUT 4 KiB, close, 16 clients", 16, False, fsync, "/", PUT_SCRIPT),
        ]
    return result


def run_case(case: Case, seconds: float, workdir: Path) -> tuple[float, float, float, float]:
    root = Path(tempfile.mkdtemp(dir=workdir))
    (root / "file4k").write_bytes(b"g" * 4096)
    log = root.parent / f"{root.name}.log"
    argv = [sys.executable, "-m", "asrv", "--host", HOST, "--root", str(root)]
    argv += ["--log", str(log), "--threads", "4", "0"]
    if case.keep_alive:
        argv.insert(-1, "--keep-alive")
    if not case.fsync:
        argv.insert(-1, "--no-fsync")
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        port = int(re.search(r":(\d+) \(", server.stderr.readline())[1])  # type: ignore[index]
        wrk = ["wrk", "-t2", f"-c{case.clients}", f"-d{int(seconds)}s", "--latency"]
        if case.script is not None:
            script = root.parent / f"{root.name}.lua"
            script.write_text(case.script)
            wrk += ["-s", str(script)]
        elif not case.keep_alive:
            wrk += ["-H", "Connection: close"]
        output = subprocess.run(
            [*wrk, f"http://{HOST}:{port}{case.path}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        server.terminate()
        _, tail = server.communicate(timeout=60)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    p50 = _latency_ms(output, "50%")
    p99 = _latency_ms(output, "99%")
    stopped = re.search(r"after (\d+) requests logged in (\d+) log flushes", tail)
    assert stopped is not None, tail
    requests, flushes = int(stopped[1]), int(stopped[2])
    shutil.rmtree(root)
    return rate, p50, p99, 1000 * flushes / max(requests, 1)


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)\b", output)
    assert match is not None, output
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
    return float(match[1]) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/latest.txt"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    samples = {case: Samples() for case in cases()}
    with tempfile.TemporaryDirectory() as directory:
        for round_number in range(args.rounds):
            for case, sample in samples.items():
                rate, p50, p99, flushes = run_case(case, args.seconds, Path(directory))
                sample.rates.append(rate)
                sample.p50.append(p50)
                sample.p99.append(p99)
                sample.flushes.append(flushes)
                print(
                    f"round {round_number + 1}: {case.name}, fsync {case.fsync}: {rate:.0f} req/s",
                    file=sys.stderr,
                    flush=True,
                )
    lines = [
        f"asrv benchmark, {time.strftime('%Y-%m-%d')}, {_cores()} cores, "
        f"{args.rounds} rounds x {args.seconds:g} s, wrk -t2, 4 worker threads",
        "",
        "| case | fsync | req/s median (min-max) | p50 ms | p99 ms | flushes / 1k req |",
        "|---|---|---|---|---|---|",
    ]
    for case, sample in samples.items():
        lines.append(
            f"| {case.name} | {'on' if case.fsync else 'off'} "
            f"| {statistics.median(sample.rates):.0f} "
            f"({min(sample.rates):.0f}-{max(sample.rates):.0f}) "
            f"| {statistics.median(sample.p50):.2f} | {statistics.median(sample.p99):.2f} "
            f"| {statistics.median(sample.flushes):.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")


def _cores() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    main()

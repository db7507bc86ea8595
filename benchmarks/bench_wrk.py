"""The load: wrk command lines, the Lua scripts for PUT and the GET/PUT mix, and its output."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

WRK_THREADS = 2

# One 4 KiB PUT per connection, over 16 names so creates turn into replaces after one lap.
PUT_CLOSE_SCRIPT = """
local body = string.rep("p", 4096)
local counter = 0
request = function()
  counter = counter + 1
  local name = "/put" .. (counter % 16)
  return wrk.format("PUT", name, {["Connection"] = "close"}, body)
end
"""

# Persistent connections; each request picks one of 16 existing files and is a PUT with
# probability 1/10, else a GET. Every wrk thread seeds its own generator.
MIX_SCRIPT = """
local body = string.rep("m", 4096)
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end
function init(args)
  math.randomseed(os.time() * 31 + seed)
end
request = function()
  local name = "/mix" .. math.random(0, 15)
  if math.random(10) == 1 then
    return wrk.format("PUT", name, {}, body)
  end
  return wrk.format("GET", name, {})
end
"""

SCRIPTS = {"put-close": PUT_CLOSE_SCRIPT, "mix": MIX_SCRIPT}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    socket_errors: dict[str, int]
    non_2xx: int

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx

    def describe_errors(self) -> str:
        parts = [f"{kind} {count}" for kind, count in self.socket_errors.items() if count]
        if self.non_2xx:
            parts.append(f"non-2xx {self.non_2xx}")
        return ", ".join(parts)


class WrkError(Exception):
    """wrk failed or printed something this module cannot read."""


def write_scripts(directory: Path) -> dict[str, Path]:
    """Write the Lua scripts into `directory`; return their paths by name."""
    paths = {}
    for name, text in SCRIPTS.items():
        path = directory / f"{name}.lua"
        path.write_text(text)
        paths[name] = path
    return paths


def run_wrk(
    wrk: str,
    url: str,
    *,
    clients: int,
    seconds: int,
    close: bool,
    script: Path | None,
) -> WrkResult:
    """Run one bounded wrk load against `url` and parse what it reports."""
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{clients}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    elif close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    try:
        completed = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=seconds + 30
        )
    except subprocess.TimeoutExpired as error:
        raise WrkError(f"wrk did not finish: {' '.join(argv)}") from error
    if completed.returncode != 0:
        raise WrkError(f"wrk exited {completed.returncode}: {completed.stderr.strip()}")
    return parse(completed.stdout)


def parse(output: str) -> WrkResult:
    totals = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if totals is None or rate is None:
        raise WrkError(f"cannot read wrk output:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if errors is not None:
        for kind, value in zip(socket_errors, errors.groups(), strict=True):
            socket_errors[kind] = int(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(totals[1]),
        seconds=_to_ms(totals[2], totals[3]) / 1000,
        rate=float(rate[1]),
        p50_ms=_latency_ms(output, "50%"),
        p99_ms=_latency_ms(output, "99%"),
        socket_errors=socket_errors,
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
    )


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if match is None:
        raise WrkError(f"no {percentile} latency in wrk output:\n{output}")
    return _to_ms(match[1], match[2])


def _to_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

"""Drive a conflict-heavy load at an embedded server, then verify its audit log.

    python examples/verify.py [REQUESTS]

Serves a fresh temporary directory, sends REQUESTS (default 2,000) concurrent GETs and PUTs
over two files with `asrv.load`, closes the server, and checks with `asrv.check` that the
log is a linearization of what the clients saw and that the files on disk are its replay.
Exits 0 when every check passes.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import asrv
from asrv.check import check
from asrv.load import LoadOptions, run_load


async def load_and_close(root: Path, log: Path, history: Path, requests: int) -> None:
    config = asrv.Config(root=root, log=str(log), host="127.0.0.1", port=0, threads=4)
    async with asrv.Server(config) as server:
        options = LoadOptions(
            port=server.port,
            clients=32,
            requests=requests,
            uris=2,
            max_body=256 * 1024,
            slow=frozenset({"stall-upload", "slow-read"}),
            root=root,
            history=history,
            seed=1,
        )
        summary = await run_load(options)
        print(f"load: {summary.requests} requests, statuses {dict(summary.statuses)}")


def main() -> int:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as directory:
        root, log = Path(directory, "root"), Path(directory, "audit.log")
        history = Path(directory, "run.jsonl")
        root.mkdir()
        asyncio.run(load_and_close(root, log, history, requests))
        report = check(log, history, final_dir=root)
        print(
            f"check: {report.requests} requests, {report.run_lines} log lines, "
            f"{len(report.violations)} violations, {report.seconds:.2f} s"
        )
        for violation in report.violations[:10]:
            print(f"  {violation}")
        return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

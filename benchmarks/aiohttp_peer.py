"""The aiohttp peer: static files for GET, a streaming PUT that renames over the target.

    python benchmarks/aiohttp_peer.py --root DIR PORT

This is what a user of aiohttp would write for the same job, on uvloop, with no access log.
PUT streams the body to a temporary file in the root and renames it over the target; nothing
is fsync'd.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import uvloop
from aiohttp import web

NAME = re.compile(r"[A-Za-z0-9.-]{1,63}")
CHUNK = 256 * 1024


def make_app(root: Path) -> web.Application:
    async def put(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if NAME.fullmatch(name) is None or name in {".", ".."}:
            raise web.HTTPBadRequest()
        target = root / name
        existed = target.exists()
        descriptor, temporary = tempfile.mkstemp(dir=root, prefix=".put_")
        try:
            with os.fdopen(descriptor, "wb") as file:
                async for chunk in request.content.iter_chunked(CHUNK):
                    file.write(chunk)
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise
        if existed:
            return web.Response(text="OK\n")
        return web.Response(status=201, text="Created\n")

    app = web.Application(client_max_size=1 << 40)
    app.add_routes([web.put("/{name}", put), web.static("/", root)])
    return app


async def serve(root: Path, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(root), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"aiohttp: listening on http://{host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    uvloop.run(serve(args.root.resolve(), args.host, args.port))


if __name__ == "__main__":
    main()

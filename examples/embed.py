"""Run asrv inside your own asyncio program, next to your other tasks.

    python examples/embed.py [ROOT]

Serves ROOT (a fresh temporary directory by default) on a free port of 127.0.0.1, stores and
reads back a file over HTTP, prints the audit log, and shuts the server down cleanly.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import asrv


async def http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def main(root: Path) -> None:
    log = root / "audit.log"
    config = asrv.Config(root=root, log=str(log), host="127.0.0.1", port=0, threads=2)
    async with asrv.Server(config) as server:
        print(f"serving {root} on port {server.port}")
        body = b"hello from an embedded server\n"
        head = f"PUT /greeting.txt HTTP/1.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        print((await http(server.port, head.encode() + b"Request-Id: 1\r\n\r\n" + body)).decode())
        print(
            (
                await http(
                    server.port,
                    b"GET /greeting.txt HTTP/1.1\r\nRequest-Id: 2\r\nConnection: close\r\n\r\n",
                )
            ).decode()
        )
    # Leaving the block stopped accepting, finished requests in flight, made the log durable
    # and joined the workers.
    print("audit log:")
    print(log.read_text(), end="")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(main(Path(directory)))

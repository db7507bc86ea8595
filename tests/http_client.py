"""A small HTTP/1.1 client for tests: one persistent connection, requests one after another,
responses framed as asrv frames them (no body after HEAD or in a 304), headers kept exactly
as sent so that tests can assert them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType

from tests.conftest import HOST

TIMEOUT = 30.0


@dataclass(frozen=True)
class Reply:
    status: int
    head: bytes
    """The status line and header lines, without the empty line."""
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of one header field (None when absent)."""
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.decode().lower() == name.lower():
                return value.decode().strip()
        return None

    @property
    def etag(self) -> str | None:
        return self.header("ETag")


class Connection:
    """`async with Connection(port) as conn: reply = await conn.request("GET", "/a")`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __aenter__(self) -> Connection:
        self._streams = await asyncio.open_connection(HOST, self.port)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._streams is not None
        self._streams[1].close()

    async def request(
        self, method: str, uri: str, body: bytes | None = None, **headers: str
    ) -> Reply:
        """Send one request (header names from keywords: if_match -> If-Match) and read
        its response."""
        reader, writer = self._connected()
        lines = [f"{method} {uri} HTTP/1.1"]
        lines += [f"{name.replace('_', '-').title()}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        return await asyncio.wait_for(self._read(reader, method), TIMEOUT)

    def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self._streams is not None, "use the connection in `async with`"
        return self._streams

    @staticmethod
    async def _read(reader: asyncio.StreamReader, method: str) -> Reply:
        head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
        status = int(head[9:12])
        reply = Reply(status, head, b"")
        length = reply.header("Content-Length")
        if method == "HEAD" or status == 304:
            return reply
        assert length is not None, head
        return Reply(status, head, await reader.readexactly(int(length)))


async def request(
    port: int, method: str, uri: str, body: bytes | None = None, **headers: str
) -> Reply:
    """One request on a connection of its own."""
    async with Connection(port) as connection:
        return await connection.request(method, uri, body, **headers)

"""A streamed upload owns its descriptor: abandoning it (the client left, or shutdown cut it
short) waits out a write still in flight, so no chunk can land in another file."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from tests.conftest import HOST, ServerFactory, Site
from tests.threads import TIMEOUT

pytestmark = pytest.mark.asyncio


class UploadWrites:
    """Holds every `os.pwrite` (only uploads use it) until the test lets it go, and records
    whether the descriptor was still the upload's file when the write went through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        self.entered = asyncio.Event()
        self.release = threading.Event()
        self.stale: list[int] = []
        real = os.pwrite

        def gated(fd: int, data: Any, offset: int) -> int:
            before = os.fstat(fd)
            loop.call_soon_threadsafe(self.entered.set)
            assert self.release.wait(TIMEOUT), "the test never released the write"
            try:
                after = os.fstat(fd)
            except OSError:
                self.stale.append(fd)
                raise
            if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                self.stale.append(fd)
            return real(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", gated)


async def test_a_cut_short_upload_waits_out_its_write_before_closing(
    site: Site, running_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = UploadWrites(monkeypatch)
    async with running_server(threads=2, timeout=0.5, min_rate=0) as server:
        _, writer = await asyncio.open_connection(HOST, server.port)
        size = 4 * 1024 * 1024
        writer.write(b"PUT /big HTTP/1.1\r\nContent-Length: %d\r\nRequest-Id: 1\r\n\r\n" % size)
        writer.write(b"x" * (512 * 1024))  # two chunks: the first write is now in flight
        await writer.drain()
        await asyncio.wait_for(writes.entered.wait(), TIMEOUT)
        # Shutdown cuts the upload short (its timeout passes) while the write is held: the
        # abandon must not close the descriptor under it.
        closing = asyncio.ensure_future(server.close())
        await asyncio.sleep(1.5)
        writes.release.set()
        await asyncio.wait_for(closing, 20)
        writer.close()
    assert writes.stale == []
    assert site.log_lines() == ["PUT,/big,400,1"]
    assert sorted(p.name for p in site.root.iterdir()) == []

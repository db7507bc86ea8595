"""`ReadBudget`: one bound on the request data the whole server holds in memory.

Every connection buffers what it reads: bytes not yet parsed, and a PUT body gathered
before it goes to disk. Each holding is bounded per connection, but connections are many:
2,000 uploaders that each send 200 KiB and stall would hold 400 MB. So every such byte is
counted here, against one limit for the server. When the holdings reach the limit, every
connection stops reading at once (the kernel's buffers, then the clients, wait:
backpressure), and bodies gathered in memory go to their upload files instead of waiting
for a full chunk. Once the holdings fall to half the limit, every connection reads again.

Stopping all of them, not only the one whose read crossed the limit, is what makes the
bound hold: the loop reads from every ready socket in one pass, up to 256 KiB each, so
thousands of connections would each bring one more read before noticing.

Only the event loop uses a budget: no lock.
"""

from __future__ import annotations

from collections.abc import Callable

BUFFER_BUDGET = 64 * 1024 * 1024
"""Request bytes the server holds in memory: at most this, plus one read in progress."""


class ReadBudget:
    def __init__(self, limit: int = BUFFER_BUDGET) -> None:
        self.limit = limit
        self.held = 0
        self.exhausted = False
        """Reached the limit and not yet back to half of it: nobody reads."""
        self._readers: dict[object, tuple[Callable[[], None], Callable[[], None]]] = {}

    def join(self, reader: object, stop: Callable[[], None], resume: Callable[[], None]) -> None:
        """`stop()` when the budget is exhausted, `resume()` when it has room again."""
        self._readers[reader] = (stop, resume)
        if self.exhausted:
            stop()

    def leave(self, reader: object) -> None:
        self._readers.pop(reader, None)

    def take(self, count: int) -> None:
        self.held += count
        if not self.exhausted and self.held >= self.limit:
            self.exhausted = True
            for stop, _ in list(self._readers.values()):
                stop()

    def give(self, count: int) -> None:
        self.held -= count
        if self.exhausted and self.held <= self.limit // 2:
            self.exhausted = False
            for _, resume in list(self._readers.values()):
                resume()

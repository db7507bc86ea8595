"""Helpers for tests that drive real threads: every wait is bounded and fails, never hangs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

TIMEOUT = 5.0


class Worker(threading.Thread):
    """A daemon thread that keeps the exception its target raised, for the test to re-raise."""

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as error:  # handed to the test thread by finish()
            self.error = error


def spawn(target: Callable[[], Any], name: str = "worker") -> Worker:
    worker = Worker(target, name)
    worker.start()
    return worker


def join(*workers: Worker) -> None:
    """Join every worker within TIMEOUT; fail if one is stuck."""
    for worker in workers:
        worker.join(TIMEOUT)
        assert not worker.is_alive(), f"{worker.name} did not finish within {TIMEOUT}s"


def finish(*workers: Worker) -> None:
    """Join within TIMEOUT and re-raise what a worker raised."""
    join(*workers)
    for worker in workers:
        if worker.error is not None:
            raise worker.error


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)

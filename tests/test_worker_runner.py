"""The loop every worker runs in: what it does with Python's garbage collector around the iterations."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eventstore.worker import YOUNG_COLLECTION_THRESHOLD, WorkerRunner


class Scripted:
    """A worker whose iterations run ``step`` until it has run ``iterations`` times."""

    kind = "scripted"

    def __init__(self, step: Callable[[], int], iterations: int) -> None:
        self.counters: dict[str, int] = {}
        self.step = step
        self.left = iterations

    def poll_once(self) -> int:
        if self.left == 0:
            return 0
        self.left -= 1
        return self.step()


@pytest.fixture
def restored_gc() -> Iterator[None]:
    gc.unfreeze()
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        gc.enable()


def test_workers_keep_their_startup_objects_out_of_full_collections(fake_redis, keys, restored_gc):
    """A worker freezes what it built at start, so a full GC pass no longer walks it (no 20 ms pauses), and
    collects young objects less often than Python's default."""
    threshold = gc.get_threshold()
    assert WorkerRunner(Scripted(lambda: 0, 0), client=fake_redis, keys=keys, name="idle", burst=True).run() == 0
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *threshold[1:])


def test_the_collector_runs_between_iterations_never_inside_one(fake_redis, keys, restored_gc):
    """An iteration's objects live until it ends, so a collection inside it would walk them for nothing; garbage
    that reference counting cannot free (cycles) is still collected, right after the iteration."""
    inside = {"now": False}
    during: list[int] = []
    after: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            (during if inside["now"] else after).append(info["generation"])

    def busy_iteration() -> int:
        inside["now"] = True
        live = [{"n": n} for n in range(5 * YOUNG_COLLECTION_THRESHOLD)]  # five thresholds' worth, all in use
        for _ in range(2 * YOUNG_COLLECTION_THRESHOLD):  # and cycles that only the collector can free
            cycle: dict[str, Any] = {}
            cycle["self"] = cycle
        inside["now"] = False
        return len(live)

    gc.callbacks.append(count)
    try:
        runner = WorkerRunner(Scripted(busy_iteration, 3), client=fake_redis, keys=keys, name="busy", burst=True)
        assert runner.run() == 0
    finally:
        gc.callbacks.remove(count)
    assert during == []
    assert after, "the cycles left by an iteration are collected after it"
    assert gc.isenabled()

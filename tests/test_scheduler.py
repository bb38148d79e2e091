"""Decode scheduler: batching, fairness and isolation (a recording fake backend; the real one is covered by test_server)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from core.types import Hypothesis, WindowRequest
from streamer.config import SchedulerOptions
from streamer.scheduler import DecodeScheduler


class RecordingBackend:
    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def transcribe(self, requests):
        self.threads.add(threading.current_thread().name)
        names = [r.prompt for r in requests]
        self.batches.append(names)
        if self.fail_on in names:
            raise RuntimeError("bad window")
        return [Hypothesis([], name, 0.0, 0.0, 0.0) for name in names]


def request(name: str) -> WindowRequest:
    return WindowRequest(audio=np.zeros(1600, np.float32), offset=0.0, end=0.1, prompt=name)


def run(backend, names, options=SchedulerOptions(max_batch=4, max_wait_ms=20)):
    async def go():
        scheduler = DecodeScheduler(backend.transcribe, options)
        scheduler.start()
        try:
            return await asyncio.gather(*(scheduler.submit(request(n)) for n in names), return_exceptions=True)
        finally:
            await scheduler.stop()

    return asyncio.run(go())


def test_ready_windows_are_batched_off_the_event_loop():
    backend = RecordingBackend()
    hyps = run(backend, ["a", "b", "c"])
    assert [h.text for h in hyps] == ["a", "b", "c"]
    assert backend.batches == [["a", "b", "c"]]
    assert all(t.startswith("decode") for t in backend.threads)


def test_batches_are_bounded_and_fifo():
    backend = RecordingBackend()
    run(backend, list("abcdef"), SchedulerOptions(max_batch=4, max_wait_ms=20))
    assert backend.batches == [list("abcd"), list("ef")]


def test_a_failing_window_does_not_fail_the_others():
    backend = RecordingBackend(fail_on="b")
    results = run(backend, ["a", "b", "c"])
    assert results[0].text == "a" and results[2].text == "c"
    assert isinstance(results[1], RuntimeError)


def test_shedding_bounds_partials_but_not_commits():
    """Behind the load, partial-only windows wait for the grown interval; windows that may commit words wait
    at most max_commit_interval (so a word's final latency stays bounded)."""
    scheduler = DecodeScheduler(RecordingBackend().transcribe, SchedulerOptions(max_partial_interval=8.0, max_commit_interval=1.0), step=0.5)
    assert scheduler.admits_partial(0.5) and scheduler.admits_partial(0.5, commits=True)  # keeping up: every step
    scheduler.partial_interval = 6.0  # what _adapt reaches while windows wait after every batch
    assert not scheduler.admits_partial(1.2) and scheduler.admits_partial(6.0)
    assert not scheduler.admits_partial(0.9, commits=True) and scheduler.admits_partial(1.0, commits=True)


class SlowBackend(RecordingBackend):
    """A decode that holds its thread for a while (as the model does, without the GIL): how many at once?"""

    def __init__(self):
        super().__init__()
        self.running = self.most = 0
        self.guard = threading.Lock()

    def transcribe(self, requests):
        with self.guard:
            self.running += 1
            self.most = max(self.most, self.running)
        threading.Event().wait(0.2)
        with self.guard:
            self.running -= 1
        return super().transcribe(requests)


def test_workers_decode_that_many_batches_at_once():
    async def go(workers: int) -> SlowBackend:
        backend = SlowBackend()
        scheduler = DecodeScheduler(backend.transcribe, SchedulerOptions(max_batch=2, max_wait_ms=0), workers=workers)
        scheduler.start()
        try:
            hyps = await asyncio.gather(*(scheduler.submit(request(n)) for n in "abcdef"))
        finally:
            await scheduler.stop()
        assert sorted(h.text for h in hyps) == list("abcdef") and len(backend.threads) == workers
        return backend

    assert asyncio.run(go(1)).most == 1
    assert asyncio.run(go(2)).most == 2

"""One decode queue for all sessions, served off the event loop, batching windows that are ready together.

Each session has at most one window queued or in flight, so the queue is bounded by the number of
sessions and FIFO order means no session starves. The event loop never runs model code, so pings
and other sessions' messages are never stalled by a decode (sherpa-onnx's streaming server pattern).

Under overload the scheduler sheds partial decodes, never finals: `partial_interval` is the audio a
session must receive after its last hypothesis came back before it may queue another partial
(non-final) window. It grows while windows are still waiting after a batch is taken (the decoder is
behind) and shrinks back to `streaming.step` once batches have room to spare. Without it, 20 real-time
streams on 2 cores each kept a stale window queued, windows grew towards their length limit, and
finals came 7.2 s after their speech (median; 5.1 s with it, tests/test_load.py -m heavy).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from core.types import Hypothesis, WindowRequest
from streamer.config import SchedulerOptions, StreamingOptions
from streamer.metrics import Metrics

log = logging.getLogger(__name__)

BACKOFF = 1.5  # factor by which the partial interval grows (or shrinks) per batch
LIBC = ctypes.CDLL(None)
M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)


def use_two_malloc_arenas() -> None:
    """glibc gives threads that allocate at once heaps of their own (arenas, up to 8 per core), and each keeps
    what it freed. The decode thread, CTranslate2's and ONNX Runtime's workers and the event loop held
    ~100 MB more in 2-minute runs of 20 streams than with two arenas, at the same speed. Call before the
    models load (their threads take their arenas on their first allocation)."""
    if hasattr(LIBC, "mallopt"):  # glibc only
        LIBC.mallopt(M_ARENA_MAX, 2)


def malloc_trim() -> None:
    """Hand free heap pages back to the OS (glibc only). Sessions' audio buffers grow a frame at a time and
    every window is copied for the decoder: the freed blocks leave holes inside the heap, which glibc does
    not return by itself (it trims only the heap's top)."""
    if hasattr(LIBC, "malloc_trim"):
        LIBC.malloc_trim(0)


class DecodeScheduler:
    def __init__(
        self,
        transcribe: Callable[[Sequence[WindowRequest]], list[Hypothesis]],
        options: SchedulerOptions,
        metrics: Metrics | None = None,
        step: float = StreamingOptions.step,
        workers: int = 1,
    ):
        """`transcribe`: a batch of windows -> their hypotheses (Engine.transcribe), run on a decode thread.
        `step`: the processor's partial step, the shortest partial interval. `workers`: batches decoded at once
        (the backend's model replicas), each on a decode thread of its own."""
        self.transcribe = transcribe
        self.workers = max(workers, 1)
        self.options = options
        self.metrics = metrics
        self.step = step
        self.partial_interval = step
        if metrics:
            metrics.partial_interval.set(step)
        self._queue: asyncio.Queue[tuple[WindowRequest, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._serve(), name=f"decode-scheduler-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def admits_partial(self, new_audio: float, commits: bool = False) -> bool:
        """Whether a session that received `new_audio` seconds of audio since its last hypothesis came back
        may queue a running window now (always while the decoder keeps up; endpoint windows always may).
        A window that may commit words waits at most `max_commit_interval`: shedding bounds partial updates,
        never how late a word becomes final."""
        interval = min(self.partial_interval, self.options.max_commit_interval) if commits else self.partial_interval
        return interval <= self.step or new_audio >= interval

    async def submit(self, request: WindowRequest) -> Hypothesis:
        """Queue a window and wait for its hypothesis."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        if self.metrics:
            self.metrics.queue_depth.set(self._queue.qsize())
        return await future

    async def _next_batch(self) -> list[tuple[WindowRequest, asyncio.Future]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.options.max_wait_ms / 1000
        while len(batch) < self.options.max_batch:
            timeout = deadline - time.monotonic()
            try:
                batch.append(self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        self._adapt(len(batch))
        return [(r, f) for r, f in batch if not f.cancelled()]

    def _adapt(self, taken: int) -> None:
        """Windows left waiting after a full batch: decode partials less often; room to spare: more often."""
        interval = self.partial_interval
        if self._queue.qsize():
            interval *= BACKOFF
        elif taken < self.options.max_batch:
            interval /= BACKOFF
        self.partial_interval = max(self.step, min(interval, self.options.max_partial_interval))
        if self.metrics:
            self.metrics.partial_interval.set(self.partial_interval)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                hyps = await loop.run_in_executor(self._executor, self._transcribe, [r for r, _ in batch])
            except Exception:
                log.exception("batched decode failed; retrying its windows one by one")
                hyps = await self._one_by_one(batch)
            elapsed = time.perf_counter() - t0
            if self.metrics:
                self.metrics.decode_seconds.observe(elapsed)
                self.metrics.batch_size.observe(len(batch))
                self.metrics.queue_depth.set(self._queue.qsize())
            for (_, future), hyp in zip(batch, hyps):
                if future.done():
                    continue
                if isinstance(hyp, BaseException):
                    future.set_exception(hyp)
                else:
                    future.set_result(hyp)

    def _transcribe(self, requests: list[WindowRequest]) -> list[Hypothesis]:
        """One batch, on the decode thread; then the heap's free pages go back to the OS (a few ms)."""
        try:
            return self.transcribe(requests)
        finally:
            malloc_trim()

    async def _one_by_one(self, batch) -> list[Hypothesis | BaseException]:
        loop = asyncio.get_running_loop()
        out: list[Hypothesis | BaseException] = []
        for request, _ in batch:
            try:
                (hyp,) = await loop.run_in_executor(self._executor, self.transcribe, [request])
                out.append(hyp)
            except Exception as exc:  # one bad window must not take the others down
                out.append(exc)
        return out

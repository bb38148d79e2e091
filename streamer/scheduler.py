"""One decode queue for all sessions, served off the event loop, batching windows that are ready together.

Each session has at most one window queued or in flight, so the queue is bounded by the number of
sessions and FIFO order means no session starves. The event loop never runs model code, so pings
and other sessions' messages are never stalled by a decode (sherpa-onnx's streaming server pattern).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from streamer.asr_backend import Hypothesis, WhisperBackend, WindowRequest
from streamer.config import SchedulerOptions
from streamer.metrics import Metrics

log = logging.getLogger(__name__)


class DecodeScheduler:
    def __init__(self, backend: WhisperBackend, options: SchedulerOptions, metrics: Metrics | None = None):
        self.backend = backend
        self.options = options
        self.metrics = metrics
        self._queue: asyncio.Queue[tuple[WindowRequest, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="decode-scheduler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

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
        return [(r, f) for r, f in batch if not f.cancelled()]

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                hyps = await loop.run_in_executor(self._executor, self.backend.transcribe, [r for r, _ in batch])
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

    async def _one_by_one(self, batch) -> list[Hypothesis | BaseException]:
        loop = asyncio.get_running_loop()
        out: list[Hypothesis | BaseException] = []
        for request, _ in batch:
            try:
                (hyp,) = await loop.run_in_executor(self._executor, self.backend.transcribe, [request])
                out.append(hyp)
            except Exception as exc:  # one bad window must not take the others down
                out.append(exc)
        return out

"""A live session: audio intake, its decode loop, limits, persistence, and the outbound queue.

Transport-agnostic: the server feeds it frames and drains `outbox`; the session never touches a socket.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import uuid
from typing import Callable

import numpy as np

from core.types import SAMPLE_RATE, MeetingContext, WindowRequest
from streamer.audio import AudioConverter
from streamer.config import ServerOptions
from streamer.drive import StreamDriver
from streamer.engine import Engine
from streamer.errors import StreamError
from streamer.limits import RateLimits
from streamer.metrics import Metrics
from streamer.protocol import Error, Final, Partial, Ready, ServerMessage, Start
from streamer.scheduler import DecodeScheduler
from streamer.speaker_labels import open_speakers
from streamer.store import Store, StoreUnavailable, Writer

log = logging.getLogger(__name__)


class Outbox:
    """Bounded send queue: a newer partial replaces a partial still waiting at the queue's end (never
    one that a final was queued after, so the words of each final were shown as a partial first);
    past the bound partials are dropped; finals are never dropped.

    If finals alone fill it, the client is not reading: `overflowed` is set and the server closes the
    connection. The finals are on disk, so a reconnect with the session id gets them back.
    """

    def __init__(self, limit: int, metrics: Metrics | None = None):
        self.limit = limit
        self.metrics = metrics
        self._items: collections.deque[ServerMessage | None] = collections.deque()
        self._ready = asyncio.Event()
        self.sending = 0  # taken by the connection's writer and not yet on the wire
        self.overflowed = False

    def put(self, message: ServerMessage | None, force: bool = False) -> None:
        """Queue a message; None marks the end of the stream. `force`: a last message (end, a fatal
        error) that goes in whatever the queue holds."""
        if not force and isinstance(message, Partial):
            if self._items and isinstance(self._items[-1], Partial):
                self._items.pop()
                if self.metrics:
                    self.metrics.send_queue_dropped.inc()
            if len(self._items) >= self.limit:
                if self.metrics:
                    self.metrics.send_queue_dropped.inc()
                return
        elif not force and len(self._items) >= self.limit:
            self.overflowed = True
        self._items.append(message)
        self._ready.set()

    async def get(self) -> ServerMessage | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def unsent(self) -> int:
        """Messages not on the wire yet, the one being written included (what a drain waits for)."""
        return len(self._items) + self.sending


async def open_transcript(store: Store, session_id: str, start: Start, finals: int, secret: str | None) -> Writer:
    """A session's transcript writer (with a shared store, this node becomes the session's owner); `secret`: a
    new session's resume secret, stored as a hash. A store that is down: storage_unavailable; a file that
    cannot be written: storage_failed."""
    fields = {k: v for k, v in start.to_dict().items() if k != "resume_token"}  # the secret is stored hashed only
    info = {"mode": fields.pop("mode", None), "format": fields, "resumed_at": finals}
    try:
        return await store.open(session_id, info, secret)
    except StoreUnavailable as exc:
        log.error("session %s: transcript store unavailable: %s", session_id, exc)
        raise StreamError("storage_unavailable", "the transcript store is unavailable; try again later", fatal=True) from None
    except OSError as exc:
        log.error("session %s: transcript not writable: %s", session_id, exc)
        raise StreamError("storage_failed", "the transcript cannot be written on the server", fatal=True) from None


class Session:
    def __init__(
        self,
        session_id: str,
        start: Start,
        engine: Engine,
        scheduler: DecodeScheduler,
        writer: Writer,
        options: ServerOptions,
        metrics: Metrics,
        limits: RateLimits,
        secret: str,
        previous: list[Final] = (),
        resume_at: float | None = None,
    ):
        """`writer`: the session's transcript (open_transcript); `limits`: its rate allowances (the registry
        keeps them across resumes); `secret`: its resume secret; `previous`: the finals before this connection."""
        self.id, self.secret, self.limits, self.writer = session_id, secret, limits, writer
        self.engine = engine
        self.scheduler = scheduler
        self.options = options
        self.metrics = metrics
        self.mode = engine.check_mode(start.mode)
        self.converter = AudioConverter(start.format)
        previous = list(previous)
        self.start_time = previous[-1].end if previous else 0.0
        if resume_at is not None:  # where the previous connection's audio ended
            self.start_time = max(self.start_time, resume_at)
        self.processor = engine.new_processor(
            self.mode, start_time=self.start_time, first_segment=len(previous), history=" ".join(f.text for f in previous[-20:]),
            meeting=MeetingContext(tuple(start.keyterms or ()), start.context or ""), endpoint_silence=start.endpoint_silence,
        )
        self.finals = len(previous)
        # speaker labels (None unless the session asks): the same audio as the processor, each final labelled before it is stored
        self.speakers = open_speakers(session_id, start, engine.config.speakers, self.start_time, previous)
        self.outbox = Outbox(options.send_queue, metrics)
        self.audio_seconds = 0.0  # received on this connection; the session's total is start_time + this
        self.decoded_at = self.start_time  # stream time when the last hypothesis came back
        self.driver = StreamDriver(self.processor, self._decode, self._emit, self._admit, self._decode_failed)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self.failure: asyncio.Future[StreamError] = loop.create_future()  # set when the session cannot go on
        self._task = loop.create_task(self._decode_loop(), name=f"decode-{session_id}")
        self._closing: asyncio.Future | None = None  # the one close, that a second `close` waits for
        self.stopping = False  # the daemon is shutting down: audio that still arrives is not taken

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    @staticmethod
    def new_secret() -> str:
        return secrets.token_urlsafe(32)

    def ready(self, resumed: bool) -> Ready:
        return Ready(
            session_id=self.id,
            mode=self.mode,
            model=self.engine.backend.model_name,
            sample_rate=self.converter.fmt.sample_rate,
            resumed=resumed,
            stream_time=self.start_time,
            resume_token=self.secret,
        )

    # -- intake --------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """One binary frame. Raises StreamError for a bad frame (dropped) or a broken limit (fatal)."""
        if self.closed or self.stopping or self.failure.done():
            return
        if len(data) > self.options.max_frame_bytes:
            raise StreamError("frame_too_large", f"audio frame of {len(data)} bytes exceeds {self.options.max_frame_bytes}")
        audio = self.converter.decode(data)
        seconds = len(audio) / SAMPLE_RATE
        if self.start_time + self.audio_seconds + seconds > self.options.max_session_seconds:  # resumes included
            raise StreamError("session_too_long", f"session exceeds {self.options.max_session_seconds:.0f} s of audio", fatal=True)
        self.limits.audio(seconds)
        self.audio_seconds += seconds
        self.metrics.audio_seconds.inc(seconds)
        self.processor.insert_audio(audio)
        if self.speakers is not None:
            self.speakers.accept(audio)
        self._wake.set()

    def finalize(self) -> None:
        self.limits.finalize()  # each forces a final decode, which is never shed: bounded
        self.processor.request_finalize()
        self._wake.set()

    # -- decoding ------------------------------------------------------------------------------
    def _admit(self, request: WindowRequest) -> bool:
        # counted from when the last hypothesis came back, not from its window's end: the time a window
        # waited for the decoder must not count as a partial interval (or a lagging decoder gets more work)
        if self.scheduler.admits_partial(request.end - self.decoded_at, request.commits):
            return True
        self.metrics.partials_skipped.inc()
        return False

    async def _decode(self, request: WindowRequest):
        hyp = await self.scheduler.submit(request)
        self.decoded_at = self.processor.stream_time
        self.metrics.llm_calls.inc(hyp.llm_calls)
        if hyp.fallback:
            self.metrics.fusion_fallbacks.inc()
        return hyp

    async def _emit(self, event: Partial | Final) -> None:
        if isinstance(event, Final):
            if self.speakers is not None:  # on the speaker stage's thread; the audio up to where the processor is
                event = await self.speakers.label(event, self.processor.stream_time)
            try:  # stored before it is sent (file appends run off the event loop, which an fsync would stall)
                await self.writer.append(event)
            except OSError as exc:  # a full disk: this final and all after it are never sent
                log.error("session %s: transcript write failed: %s", self.id, exc)
                raise StreamError("storage_failed", "the transcript could not be written on the server; the session ends", fatal=True) from None
            self.finals += 1
            self.metrics.finals.inc()
        self.outbox.put(event)

    def _decode_failed(self, request: WindowRequest, exc: Exception) -> None:
        log.error("session %s: decode failed", self.id, exc_info=exc)
        self.send_error(StreamError("decode_failed", "decoding this window failed; the session goes on", fatal=False))

    async def _drive(self, step) -> None:
        """Run a drive step; a fatal error (storage) ends the session's decoding and is told through `failure`."""
        if self.failure.done():
            return
        try:
            async with self._lock:
                await step()
        except StreamError as exc:
            if not self.failure.done():
                self.failure.set_result(exc)

    async def _decode_loop(self) -> None:
        while not self.failure.done():
            await self._wake.wait()
            self._wake.clear()
            await self._drive(self.driver.pump)

    async def commit(self) -> None:
        """Finalize and wait: the audio received so far is decoded into finals (queued) before this returns, and
        the stream goes on (OpenAI Realtime's `input_audio_buffer.commit`; `flush` also ends the resampler)."""
        if self.closed:
            return
        async with self._lock:
            await self.driver.flush()

    async def transcribe(self, audio: np.ndarray, stopped: Callable[[], bool] = lambda: False) -> None:
        """A whole recording (an uploaded file, 16 kHz float32) at full speed, not rate-limited: frame by frame
        through the drive loop as the in-process pipeline feeds it, so its text is what a live client gets;
        then flushed to finals. Stops early when `stopped()` (the client left) or the daemon shuts down."""
        seconds = len(audio) / SAMPLE_RATE
        if self.start_time + self.audio_seconds + seconds > self.options.max_session_seconds:
            raise StreamError("session_too_long", f"session exceeds {self.options.max_session_seconds:.0f} s of audio", fatal=True)
        self.audio_seconds += seconds
        self.metrics.audio_seconds.inc(seconds)
        if self.speakers is not None:  # all of it at once: each final is labelled with the audio up to the processor's time
            self.speakers.accept(audio)
        await self._drive(lambda: self.driver.feed(audio, stopped=lambda: self.closed or self.stopping or stopped()))
        await self.flush()
        if self.failure.done():
            raise self.failure.result()

    async def flush(self) -> None:
        """Turn every pending sample into finals (stop, disconnect, shutdown); never raises: a failure is in `failure`."""
        if self.closed or self.failure.done():
            return
        tail = self.converter.flush()
        if len(tail):
            self.processor.insert_audio(tail)
            if self.speakers is not None:
                self.speakers.accept(tail)
        await self._drive(self.driver.flush)

    def send_error(self, error: StreamError) -> None:
        self.metrics.errors.labels(error.code).inc()
        self.outbox.put(Error(code=error.code, message=error.message))

    @property
    def closed(self) -> bool:
        """Closing or closed: it takes no audio, and its connection is done with it."""
        return self._closing is not None

    async def close(self) -> None:
        """Stop decoding, close the transcript (its stream end written) and keep the speakers for a resume. A
        second call (a resume taking the session over while its connection ends it) returns when the first is done,
        so a resume never reads the store, or opens the speakers, before the old connection has left them."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.writer.close(stream_time=self.start_time + self.audio_seconds)
        finally:
            if self.speakers is not None:
                self.speakers.close()

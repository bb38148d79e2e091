"""Websocket client core shared by the file and microphone clients and the benchmark: connect, the paced
sender, and a session that survives dropped connections (reconnect with backoff, resume with the session's
secret, every final once)."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

import numpy as np
import websockets

from core.types import Mode

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8765/v1/listen"
# fatal errors after which the same session may go on from a new connection; any other fatal error ends it
RETRYABLE = {"busy", "idle_timeout", "start_timeout", "slow_consumer", "storage_failed", "internal"}


@dataclass
class Received:
    """A server message and when it arrived: wall seconds since streaming began, and audio seconds sent by then."""

    message: dict
    wall: float
    audio_sent: float


@dataclass
class Reconnect:
    """How a session outlives a dropped connection: exponential backoff between `min_delay` and `max_delay`
    seconds, giving up after `attempts` connections in a row that fail before `ready`."""

    attempts: int = 8
    min_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.min_delay * 2 ** max(failures - 1, 0))


class SessionFailed(RuntimeError):
    """The server ended the session for good (a fatal error that a resume cannot mend), or it cannot be reached."""


def connect(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return websockets.connect(url, additional_headers=headers, max_size=2**24, open_timeout=30)


def start_message(
    sample_rate: int,
    channels: int,
    mode: Mode | str | None = None,
    session_id: str | None = None,
    resume_token: str | None = None,
    resume_from: int = 0,
    keyterms: Sequence[str] = (),
) -> str:
    """A `start` (docs/protocol.md); a resume carries the keyterms again, since a resumed session takes its
    meeting context from the `start` that resumes it."""
    msg: dict = {"type": "start", "sample_rate": sample_rate, "encoding": "pcm_s16le", "channels": channels}
    if mode:
        msg["mode"] = str(Mode(mode))
    if session_id:
        msg.update(session_id=session_id, resume_token=resume_token, resume_from=resume_from)
    if keyterms:
        msg["keyterms"] = list(keyterms)
    return json.dumps(msg)


def to_pcm16(audio: np.ndarray) -> bytes:
    """Float samples -> s16le, the inverse of the daemon's /32768 (16-bit sources round-trip exactly)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()


async def paced_blocks(audio: np.ndarray, sample_rate: int, speed: float = 1.0, chunk: float = 0.1) -> AsyncIterator[np.ndarray]:
    """Blocks of `chunk` seconds of audio ([frames] or [frames, channels]) at `speed` x real time (0: at once)."""
    audio = audio.reshape(len(audio), -1)
    step = max(int(chunk * sample_rate), 1)
    t0 = time.monotonic()
    for i in range(0, len(audio), step):
        if speed > 0:
            delay = t0 + (i / sample_rate) / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield audio[i : i + step]


async def send_paced(
    ws,
    audio: np.ndarray,
    sample_rate: int,
    speed: float = 1.0,
    chunk: float = 0.1,
    stop: bool = True,
    on_sent: Callable[[float], None] | None = None,
) -> None:
    """Send audio as PCM frames of `chunk` seconds at `speed` x real time on one connection, then a `stop`
    unless told not to; `on_sent(seconds)` after each frame."""
    sent = 0
    async for block in paced_blocks(audio, sample_rate, speed, chunk):
        await ws.send(to_pcm16(block))
        sent += len(block)
        if on_sent:
            on_sent(sent / sample_rate)
    if stop:
        await ws.send(json.dumps({"type": "stop"}))


class ResumableSession:
    """One session over as many connections as it takes.

    Audio handed to `send` is queued and sent while connected; when the connection drops (a network blip, a
    daemon restart, a node of a cluster lost) it reconnects with backoff and resumes with the session's id and
    resume secret, asking for the finals it lacks, so every final reaches `on_message` once and in order. Sent
    audio is kept (up to `replay` seconds) until a final covers it: a resume sends again what the server had
    not turned into stored finals (from the `stream_time` of its `ready`: what a crashed daemon had received
    but not finalised, frames lost in flight), so the words in it are not lost. `finish` ends the audio:
    `stop` follows the last queued frame, and `run` returns after the server's `end`."""

    def __init__(
        self,
        url: str,
        sample_rate: int,
        channels: int = 1,
        mode: Mode | str | None = None,
        token: str | None = None,
        on_message: Callable[[Received], None] | None = None,
        reconnect: Reconnect = Reconnect(),
        max_buffer: float = 30.0,
        replay: float = 60.0,
        keyterms: Sequence[str] = (),
    ):
        """`max_buffer`: seconds of audio queued while disconnected before `send` waits for room; `replay`:
        seconds of sent audio kept to send again after a resume; `keyterms`: the meeting's words to favour."""
        self.url, self.token, self.mode = url, token, mode
        self.keyterms = tuple(keyterms)
        self.sample_rate, self.channels = sample_rate, channels
        self.on_message = on_message
        self.reconnect = reconnect
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.finals = 0  # finals received: the next one's segment
        self.connections = 0
        self.readies = 0  # connections that got their `ready`
        self.received: list[Received] = []
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_frames = 0
        self._max_frames = int(max_buffer * sample_rate)
        self._changed = asyncio.Event()
        self._finished = False
        self._sent_frames = 0  # the stream position: frames sent (after a resume, from the server's stream_time)
        self._sent: collections.deque[tuple[int, bytes]] = collections.deque()  # (first frame, pcm) not yet final
        self._replay_frames = int(replay * sample_rate)
        self._t0: float | None = None

    # -- the audio side ---------------------------------------------------------------------------
    async def send(self, audio: np.ndarray) -> None:
        """Queue a block of float audio ([frames] or [frames, channels]); waits while the queue is full."""
        while self._pending_frames >= self._max_frames:
            self._changed.clear()
            await self._changed.wait()
        self._pending.append(to_pcm16(audio))
        self._pending_frames += len(audio)
        self._changed.set()

    def finish(self) -> None:
        """No more audio: `stop` goes after what is queued."""
        self._finished = True
        self._changed.set()

    async def _send_queued(self, ws) -> None:
        """Send queued frames (a frame leaves the queue once the socket took it), then `stop` once finished."""
        bytes_per_frame = 2 * self.channels
        while True:
            while self._pending:
                await ws.send(self._pending[0])
                block = self._pending.popleft()
                frames = len(block) // bytes_per_frame
                self._sent.append((self._sent_frames, block))
                while self._sent and self._sent[0][0] < self._sent_frames - self._replay_frames:
                    self._sent.popleft()
                self._pending_frames -= frames
                self._sent_frames += frames
                self._changed.set()
            if self._finished:
                await ws.send(json.dumps({"type": "stop"}))
                return
            self._changed.clear()
            await self._changed.wait()

    # -- the connection side ----------------------------------------------------------------------
    def _take(self, message: dict) -> None:
        if message.get("type") == "final":
            segment = message.get("segment", self.finals)
            if segment < self.finals:
                return  # resent after a resume: already had
            if segment > self.finals:
                log.warning("finals %d to %d are missing", self.finals, segment - 1)
            self.finals = segment + 1
            self._forget_before(float(message.get("end", 0.0)))
        if self._t0 is None:
            self._t0 = time.monotonic()
        item = Received(message, time.monotonic() - self._t0, self._sent_frames / self.sample_rate)
        self.received.append(item)
        if self.on_message:
            self.on_message(item)

    def _forget_before(self, seconds: float) -> None:
        """Sent audio that ends before a final's end is in the store: no resume needs it again."""
        frame, bytes_per_frame = int(seconds * self.sample_rate), 2 * self.channels
        while self._sent and self._sent[0][0] + len(self._sent[0][1]) // bytes_per_frame <= frame:
            self._sent.popleft()

    def _rewind(self, stream_time: float) -> None:
        """A resume goes on at the server's `stream_time`: sent audio after it is queued again, in front."""
        position, bytes_per_frame = round(stream_time * self.sample_rate), 2 * self.channels
        if position >= self._sent_frames:
            return
        again = []
        while self._sent and self._sent[-1][0] + len(self._sent[-1][1]) // bytes_per_frame > position:
            first, block = self._sent.pop()
            skip = max(position - first, 0) * bytes_per_frame
            again.append(block[skip:])
        for block in again:  # newest first: each goes in front of the later ones
            self._pending.appendleft(block)
            self._pending_frames += len(block) // bytes_per_frame
        self._sent_frames = position

    async def _connection(self) -> tuple[bool, dict | None, int | None]:
        """One connection: start or resume, stream, read. Returns (ended with `end`, the last fatal error
        message, close code); raises OSError/ConnectionClosed/InvalidStatus when it drops or is refused."""
        async with connect(self.url, self.token) as ws:
            self.connections += 1
            await ws.send(start_message(self.sample_rate, self.channels, self.mode, self.session_id, self.resume_token, self.finals, self.keyterms))
            sender: asyncio.Task | None = None
            error = None
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "ready":
                        self.readies += 1
                        self.session_id = message["session_id"]
                        self.resume_token = message.get("resume_token")
                        if message.get("resumed"):
                            self._rewind(float(message.get("stream_time", 0.0)))
                        sender = asyncio.create_task(self._send_queued(ws))
                    elif kind == "error":
                        error = message
                    self._take(message)
                    if kind == "end":
                        return self._finished and sender is not None and sender.done(), None, None
            finally:
                if sender is not None:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
            close = ws.close_code
        return False, error, close

    async def run(self) -> list[Received]:
        """Stream until the session's `end`; every message received (duplicate finals left out)."""
        failures = 0
        while True:
            readies = self.readies
            try:
                done, error, close = await self._connection()
                if done:
                    return self.received
                if error and close in (1003, 1008, 1011) and error.get("code") not in RETRYABLE:
                    raise SessionFailed(f"{error['code']}: {error.get('message', '')}")
                failures = 0 if self.readies > readies else failures + 1
            except websockets.InvalidStatus as exc:
                if exc.response.status_code < 500:  # a wrong token, a foreign origin or host: retrying cannot help
                    raise SessionFailed(f"the server refused the connection: HTTP {exc.response.status_code}") from None
                failures += 1
            except (OSError, asyncio.TimeoutError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
                log.info("connection lost: %s", exc)
                failures = 0 if self.readies > readies else failures + 1
            if failures >= self.reconnect.attempts:
                raise SessionFailed(f"no connection to {self.url} after {failures} attempts")
            await asyncio.sleep(self.reconnect.delay(max(failures, 1)))


async def stream_audio(
    url: str,
    audio: np.ndarray,
    sample_rate: int,
    channels: int = 1,
    mode: Mode | str | None = None,
    speed: float = 1.0,
    chunk: float = 0.1,
    token: str | None = None,
    on_message: Callable[[Received], None] | None = None,
    reconnect: Reconnect = Reconnect(),
    keyterms: Sequence[str] = (),
) -> list[Received]:
    """Send audio (float, [frames] or [frames, channels]) at `speed` x real time, then stop; collect every
    message (the first is `ready`), reconnecting and resuming when the connection drops."""
    session = ResumableSession(url, sample_rate, channels, mode, token, on_message, reconnect, keyterms=keyterms)

    async def produce() -> None:
        async for block in paced_blocks(audio, sample_rate, speed, chunk):
            await session.send(block)
        session.finish()

    producer = asyncio.create_task(produce())
    try:
        return await session.run()
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)

"""One websocket connection's state machine, the same for every wire API:
connect -> (start) -> session -> frames in / messages out -> stop, error or disconnect -> close.

The wire adapter turns frames into client messages and session messages into frames; what each client
message does is the dispatch table `Connection.HANDLERS`. Errors map to close codes in streamer/errors.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from core.types import MeetingContext
from streamer.config import ServerOptions
from streamer.errors import CLOSE_NORMAL, CLOSE_POLICY, StreamError
from streamer.metrics import Metrics
from streamer.protocol import Audio, Context, End, Error, Finalize, KeepAlive, Start, Stop
from streamer.registry import SessionRegistry, drain
from streamer.session import Session
from streamer.wire import Reply, WireAdapter

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # seconds a close handshake (or a send to a client that does not read) may take
ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)  # frames after which nothing comes


class Pending:
    """Connections waiting for their `start`, bounded so that connections that never start cannot pile up."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0


class Connection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        adapter: WireAdapter,
        registry: SessionRegistry,
        options: ServerOptions,
        metrics: Metrics,
        pending: Pending,
    ):
        self.ws = ws
        self.adapter = adapter
        self.registry = registry
        self.options = options
        self.metrics = metrics
        self.pending = pending
        self.session: Session | None = None
        self.writer: asyncio.Task | None = None
        self.backlog: list = []  # messages that came after the start in its frame, handled once the session is open
        self._deadline = 0.0
        self._touch()

    # -- the life of a connection ------------------------------------------------------------------
    async def run(self, transport) -> None:
        """Serve until stop, a fatal error or the client leaves; the session's pending audio always becomes finals."""
        try:
            if not self.registry.accepting:
                raise StreamError("busy", "the daemon is shutting down", fatal=True)
            start = self.adapter.opening_start() or await self._wait_for_start()
            if start is None:
                return
            self.session, missed = await self.registry.open(start, self._taken_over)
            await self._send_direct(self.session.ready(resumed=bool(start.session_id)))
            for final in missed:
                await self._send_direct(final)
            self.writer = asyncio.create_task(self._write(), name=f"send-{self.session.id}")
            if not await self._dispatch(self.backlog):
                await self._serve()
        except StreamError as exc:
            await self._fail(exc, transport)
        except ConnectionError as exc:  # the client left while we sent (e.g. a reset right after its start)
            log.info("connection lost: %s", exc)
        except Exception:
            log.exception("connection failed")
            await self._fail(StreamError("internal", "internal error"), transport)
        finally:
            if self.session is not None:
                await self._end()

    async def _serve(self) -> None:
        """Read the client's frames until the session ends, or until the session fails (e.g. storage): then
        that failure is raised."""
        reader = asyncio.create_task(self._read(), name=f"read-{self.session.id}")
        failure = self.session.failure
        await asyncio.wait([reader, failure], return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        if failure.done():
            raise failure.result()
        reader.result()

    def _touch(self) -> None:
        self._deadline = time.monotonic() + self.options.idle_timeout

    async def _receive(self):
        """The next frame. Protocol pings do not count as activity: idle means no frame from the client."""
        try:
            msg = await asyncio.wait_for(self.ws.receive(), max(self._deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise StreamError("idle_timeout", f"no message for {self.options.idle_timeout:g} s", fatal=True) from None
        self._touch()
        return msg

    async def _wait_for_start(self) -> Start | None:
        """A valid `start` within server.start_timeout; frames before it get not_started and are dropped."""
        if self.pending.count >= self.pending.limit:
            raise StreamError("busy", f"{self.pending.count} connections are waiting to start; try again later", fatal=True)
        self.pending.count += 1
        try:
            async with asyncio.timeout(self.options.start_timeout):
                return await self._first_start()
        except TimeoutError:
            raise StreamError("start_timeout", f"no start message within {self.options.start_timeout:g} s", fatal=True) from None
        finally:
            self.pending.count -= 1

    async def _first_start(self) -> Start | None:
        """Frames until a valid `start` (returned) or the end of the connection (None)."""
        while True:
            msg = await self._receive()
            if msg.type in ENDED:
                return None
            if msg.type == WSMsgType.BINARY:
                await self._send_error(StreamError("not_started", "send a start message before audio"))
                continue
            try:
                parsed = self.adapter.parse(msg.data, started=False)
            except StreamError as exc:
                if exc.fatal:
                    raise
                await self._send_error(exc)
                continue
            messages = parsed if isinstance(parsed, list) else [parsed]
            for i, message in enumerate(messages):
                if isinstance(message, Start):
                    self.backlog = messages[i + 1 :]
                    return message
                if isinstance(message, Reply):  # an adapter's own answer (OpenAI Realtime's session.updated)
                    self._count_reply(message)
                    await self._send_direct(message)
                else:
                    await self._send_error(StreamError("not_started", f"{message.type} before start"))

    # -- in a session ------------------------------------------------------------------------------
    async def _read(self) -> None:
        session = self.session
        # the failure check is not redundant with _serve's cancel: asyncio.wait_for (3.11) swallows a cancel that
        # arrives as its frame does, and a client that streams on would keep this loop going
        while not session.closed and not session.failure.done():
            msg = await self._receive()
            if session.closed or session.failure.done():  # taken over by a resume, or failed, while we waited
                return
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                session.limits.frame()  # a flood of frames, tiny or not, is bounded per second
            if msg.type == WSMsgType.BINARY:
                message = self._guard(self.adapter.binary, msg.data)
            elif msg.type == WSMsgType.TEXT:
                message = self._guard(self.adapter.parse, msg.data, True)
            else:  # close, error
                return
            if message is not None and await self._dispatch(message):
                return
            if session.outbox.overflowed:
                raise StreamError("slow_consumer", "the client does not read its messages", fatal=True)

    async def _dispatch(self, parsed) -> bool:
        """One frame's message, or its list of messages in order: each by the dispatch table, else by the
        adapter (messages of its own API). True: the connection ends."""
        for message in parsed if isinstance(parsed, list) else [parsed]:
            handler = self.HANDLERS.get(type(message))
            if await (handler(self, message) if handler else self.adapter.handle(self.session, message)):
                return True
        return False

    def _guard(self, fn, *args):
        """Per-frame errors go back to the client; fatal ones end the session."""
        try:
            return fn(*args)
        except StreamError as exc:
            if exc.fatal:
                raise
            self.session.send_error(exc)
            return None

    async def _on_audio(self, message: Audio) -> bool:
        self._guard(self.session.feed, message.data)
        return False

    async def _on_finalize(self, message: Finalize) -> bool:
        self._guard(self.session.finalize)
        return False

    async def _on_keepalive(self, message: KeepAlive) -> bool:
        return False

    async def _on_start(self, message: Start) -> bool:
        self.session.send_error(StreamError("already_started", "this session has started already"))
        return False

    async def _on_context(self, message: Context) -> bool:
        """New keyterms and notes for the rest of the session: Whisper's prompt from the next window on, the
        LLM's prefix from its next decode."""
        self.session.processor.set_meeting(MeetingContext(tuple(message.keyterms), message.context))
        return False

    async def _on_stop(self, message: Stop) -> bool:
        """Flush while still reading the socket: aiohttp answers pings only inside receive(), and a flush
        behind a busy decoder can outlast the client's ping timeout (20 s in websockets), which then drops
        the connection just before the last finals and `end`. Frames that still arrive are not taken."""

        async def discard() -> None:
            while (await self.ws.receive()).type not in ENDED:
                pass

        reader = asyncio.create_task(discard())
        try:
            await self.session.flush()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        session = self.session
        if session.failure.done():
            raise session.failure.result()
        session.outbox.put(End(session_id=session.id, finals=session.finals, audio_seconds=session.audio_seconds))
        return True

    async def _on_reply(self, message: Reply) -> bool:
        """An adapter's own answer, queued in order with the session's messages."""
        self._count_reply(message)
        self.session.outbox.put(message)
        return False

    def _count_reply(self, message: Reply) -> None:
        if message.error:
            self.metrics.errors.labels(message.error).inc()

    HANDLERS = {
        Audio: _on_audio, Context: _on_context, Finalize: _on_finalize, KeepAlive: _on_keepalive, Start: _on_start, Stop: _on_stop,
        Reply: _on_reply,
    }

    # -- sending -----------------------------------------------------------------------------------
    async def _write(self) -> None:
        """The session's outbox -> the socket; `end` closes the connection normally, None stops."""
        outbox = self.session.outbox
        while (message := await outbox.get()) is not None:
            outbox.sending += 1
            for frame in self.adapter.render(message):
                await self.ws.send_str(frame)
            outbox.sending -= 1
            if isinstance(message, End):
                await self.ws.close(code=CLOSE_NORMAL)
                return

    async def _send_direct(self, message) -> None:
        """A send outside the outbox (before the session's writer runs), bounded in time."""
        for frame in self.adapter.render(message):
            await self._send_frame(frame)

    async def _send_frame(self, frame: str) -> None:
        try:
            await asyncio.wait_for(self.ws.send_str(frame), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            raise StreamError("slow_consumer", "the client does not read its messages", fatal=True) from None

    async def _send_error(self, exc: StreamError) -> None:
        self.metrics.errors.labels(exc.code).inc()
        frame = self.adapter.render_error(exc)
        if frame is not None and not self.ws.closed:
            await self._send_frame(frame)

    # -- ending ------------------------------------------------------------------------------------
    async def close(self, code: int, reason: bytes, transport=None, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close with a code; a peer that does not take part in the close handshake is cut off."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason), timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            if transport is not None:
                transport.abort()

    async def _taken_over(self) -> None:
        if not self.ws.closed:
            await self.close(CLOSE_POLICY, b"session resumed on another connection")

    async def _fail(self, exc: StreamError, transport) -> None:
        """A fatal error: what was said is kept (flushed to finals), the client is told, then closed."""
        code = exc.close_code if exc.fatal else CLOSE_POLICY
        slow = exc.code == "slow_consumer"
        # a flooding client gets no leisurely close handshake: every frame it sends meanwhile is parsed on the loop
        wait = {"slow_consumer": 1.0, "rate_limited": 0.5}.get(exc.code, CLOSE_TIMEOUT)
        session, writer = self.session, self.writer
        if session is not None and writer is not None and not writer.done():
            # through the outbox, after the finals it holds; bounded, since the client may not read
            if not slow:
                await session.flush()
            self.metrics.errors.labels(exc.code).inc()
            session.outbox.put(Error(code=exc.code, message=exc.message), force=True)
            # a client that does not read will not drain it: cut it off without waiting long
            await drain(session, wait, lambda: writer.done() or self.ws.closed)
        else:
            if session is not None:
                await session.flush()
            try:
                await self._send_error(exc)
            except (StreamError, ConnectionError, RuntimeError):
                pass
        code, reason = self.adapter.close_frame(exc, code)
        await self.close(code, reason, transport, wait)

    async def _end(self) -> None:
        """The session ends with its connection: finals on disk, the slot freed, the outbox sent."""
        session, writer = self.session, self.writer
        await self.registry.end(session)
        if writer is None:
            return
        if not writer.done():
            session.outbox.put(None, force=True)
            try:
                await asyncio.wait_for(writer, CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, asyncio.CancelledError, ConnectionError, RuntimeError):
                writer.cancel()
        if writer.done() and not writer.cancelled():
            writer.exception()  # retrieved: a connection reset while sending is not an error of ours

"""Transport: aiohttp websocket and HTTP endpoints. Moves bytes and JSON; sessions do the work."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractAccessLogger

from streamer.config import Config
from streamer.engine import Engine
from streamer.errors import CLOSE_NORMAL, CLOSE_POLICY, StreamError
from streamer.formats import RENDERERS
from streamer.metrics import Metrics
from streamer.protocol import End, Error, Finalize, KeepAlive, Start, Stop, parse_client_message, to_dict, to_json
from streamer.scheduler import DecodeScheduler, use_two_malloc_arenas
from streamer.session import Session
from streamer.store import TranscriptStore

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # seconds a close handshake (or a send to a client that does not read) may take
ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)  # frames after which nothing comes


def parse_text(data: str, limit: int):
    """A text frame -> a client message; anything malformed is a per-frame StreamError, never `internal`."""
    if len(data) > limit:
        raise StreamError("frame_too_large", f"text frame of {len(data)} characters exceeds {limit}")
    try:
        return parse_client_message(data)
    except StreamError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. an integer past Python's 4300-digit limit
        raise StreamError("bad_message", f"text frames must be JSON: {str(exc)[:80]}") from None

def _message_type(data: str) -> str | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj.get("type") if isinstance(obj, dict) else None


class AccessLogger(AbstractAccessLogger):
    """The access log without query strings: a `?token=` must not end up in log files."""

    def log(self, request, response, time: float) -> None:
        self.logger.info('%s "%s %s" %s %.3fs', request.remote, request.method, request.path, response.status, time)


class _IdleTimer:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.reset()

    def reset(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "web"
PUBLIC_PREFIXES = ("/web/",)


class Daemon:
    """Shared state of one running server: engine, scheduler, live sessions, transcript store."""

    def __init__(self, config: Config, engine: Engine):
        self.config = config
        self.options = config.server
        self.engine = engine
        self.metrics = Metrics()
        self.store = TranscriptStore(self.options.data_dir)
        self.scheduler = DecodeScheduler(engine.backend, config.scheduler, self.metrics, config.streaming.step)
        self.sessions: dict[str, Session] = {}
        self.connections: set[web.WebSocketResponse] = set()
        self._sockets: dict[str, web.WebSocketResponse] = {}  # session id -> its connection
        self._background: set[asyncio.Task] = set()
        self._pending = 0  # connections waiting for their `start`
        self.accepting = True

    # -- access ----------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        token = self.options.token
        if not token:
            return True
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if not origin or "*" in self.options.allowed_origins or origin in self.options.allowed_origins:
            return True
        return urlsplit(origin).netloc == request.host

    @web.middleware
    async def access(self, request: web.Request, handler):
        if request.path != "/" and not request.path.startswith(PUBLIC_PREFIXES):
            if not self._authorized(request):
                self.metrics.errors.labels("unauthorized").inc()
                raise web.HTTPUnauthorized(text="missing or wrong bearer token\n", headers={"WWW-Authenticate": "Bearer"})
            if not self._origin_allowed(request):
                raise web.HTTPForbidden(text="origin not allowed\n")
        return await handler(request)

    # -- HTTP --------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_ROOT / "index.html")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok" if self.accepting else "stopping",
                "sessions": len(self.sessions),
                "max_sessions": self.options.max_sessions,
                "model": self.engine.backend.model_name,
                "device": self.engine.backend.device,
                "modes": ["asr"] + (["shallow", "uadf", "uadf-llm"] if self.engine.fusion else []),
                "default_mode": self.engine.default_mode,
                "queue_depth": self.scheduler.depth,
            }
        )

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        self.metrics.sessions.set(len(self.sessions))
        self.metrics.connections.set(len(self.connections))
        depths = [len(s.outbox) for s in self.sessions.values()]
        self.metrics.send_queue_depth.set(sum(depths))
        self.metrics.send_queue_max.set(max(depths, default=0))
        self.metrics.queue_depth.set(self.scheduler.depth)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type})

    async def transcript(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        if not session_id.replace("-", "").isalnum() or not self.store.exists(session_id):
            raise web.HTTPNotFound(text="unknown session\n")
        finals = self.store.read(session_id)
        fmt = request.query.get("format", "json")
        if fmt == "json":
            return web.json_response({"session_id": session_id, "finals": [to_dict(f) for f in finals]})
        if fmt not in RENDERERS:
            raise web.HTTPBadRequest(text=f"format must be json, {', '.join(RENDERERS)}\n")
        render, content_type = RENDERERS[fmt]
        return web.Response(text=render(finals), content_type=content_type)

    # -- websocket ---------------------------------------------------------------------------------
    async def listen(self, request: web.Request) -> web.WebSocketResponse:
        # aiohttp itself refuses frames past 4x the limit (close 1009); up to that we answer
        # frame_too_large and go on
        ws = web.WebSocketResponse(max_msg_size=self.options.max_frame_bytes * 4, heartbeat=20.0)
        await ws.prepare(request)
        self.connections.add(ws)
        session: Session | None = None
        writer: asyncio.Task | None = None
        idle = _IdleTimer(self.options.idle_timeout)
        try:
            if not self.accepting:
                raise StreamError("busy", "the daemon is shutting down", fatal=True)
            start = await self._wait_for_start(ws, idle)
            if start is None:
                return ws
            session = await self._open(ws, start)
            writer = asyncio.create_task(self._write(ws, session), name=f"send-{session.id}")
            await self._read(ws, session, idle)
        except StreamError as exc:
            await self._fail(request, ws, session, writer, exc)
        except Exception:
            log.exception("connection failed")
            await self._fail(request, ws, session, writer, StreamError("internal", "internal error"))
        finally:
            if session is not None:
                await self._end_session(session, writer)
            self.connections.discard(ws)
        return ws

    async def _receive(self, ws: web.WebSocketResponse, idle: "_IdleTimer"):
        """The next frame. Protocol pings do not count as activity: idle means no frame from the client."""
        try:
            msg = await asyncio.wait_for(ws.receive(), idle.remaining())
        except asyncio.TimeoutError:
            raise StreamError("idle_timeout", f"no message for {self.options.idle_timeout:g} s", fatal=True) from None
        idle.reset()
        return msg

    async def _send_direct(self, ws: web.WebSocketResponse, text: str) -> None:
        """A send outside the outbox (before the session's writer runs), bounded in time."""
        try:
            await asyncio.wait_for(ws.send_str(text), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            raise StreamError("slow_consumer", "the client does not read its messages", fatal=True) from None

    async def _wait_for_start(self, ws: web.WebSocketResponse, idle: "_IdleTimer") -> Start | None:
        """A valid `start` within server.start_timeout; frames before it get not_started and are dropped.
        Connections waiting for theirs are bounded by server.max_pending, so connections that never start
        (frames or not) cannot pile up."""
        if self._pending >= self.options.max_pending:
            raise StreamError("busy", f"{self._pending} connections are waiting to start; try again later", fatal=True)
        self._pending += 1
        try:
            async with asyncio.timeout(self.options.start_timeout):
                return await self._first_start(ws, idle)
        except TimeoutError:
            raise StreamError("start_timeout", f"no start message within {self.options.start_timeout:g} s", fatal=True) from None
        finally:
            self._pending -= 1

    async def _first_start(self, ws: web.WebSocketResponse, idle: "_IdleTimer") -> Start | None:
        """Frames until a valid `start` (returned) or the end of the connection (None)."""
        while True:
            msg = await self._receive(ws, idle)
            if msg.type in ENDED:
                return None
            if msg.type == WSMsgType.BINARY:
                await self._send_error(ws, StreamError("not_started", "send a start message before audio"))
                continue
            try:
                message = parse_text(msg.data, self.options.max_frame_bytes)
            except StreamError as exc:
                if exc.fatal:
                    raise
                await self._send_error(ws, exc)
                continue
            if isinstance(message, Start):
                return message
            await self._send_error(ws, StreamError("not_started", f"{message.type} before start"))

    async def _open(self, ws: web.WebSocketResponse, start: Start) -> Session:
        previous = []
        resume_at = None
        session_id = start.session_id
        if session_id:
            if not self.store.exists(session_id):
                raise StreamError("unknown_session", f"no session {session_id!r} to resume", fatal=True)
            old = self.sessions.get(session_id)
            if old is not None:  # the client reconnected before we noticed it left: the new connection wins
                await self._take_over(old)
            elif len(self.sessions) >= self.options.max_sessions:
                raise StreamError("busy", f"all {self.options.max_sessions} sessions are in use; try again later", fatal=True)
            previous = self.store.read(session_id)
            resume_at = self.store.stream_end(session_id)
        elif len(self.sessions) >= self.options.max_sessions:
            raise StreamError("busy", f"all {self.options.max_sessions} sessions are in use; try again later", fatal=True)
        session = Session(
            session_id or Session.new_id(), start, self.engine, self.scheduler, self.store, self.options, self.metrics, previous,
            resume_at,
        )
        self.sessions[session.id] = session
        self._sockets[session.id] = ws
        self.metrics.sessions_total.inc()
        self.metrics.sessions.set(len(self.sessions))
        await self._send_direct(ws, to_json(session.ready(resumed=bool(start.session_id))))
        for final in previous[start.resume_from :]:
            await self._send_direct(ws, to_json(final))
        log.info("session %s %s (%s)", session.id, "resumed" if start.session_id else "started", session.mode)
        return session

    async def _take_over(self, old: Session) -> None:
        """A resume of a session that is still live: finish the old one (its audio becomes finals on disk)
        and close its connection, so the new connection owns the session."""
        old_ws = self._sockets.get(old.id)
        await self._end_session(old, None)
        if old_ws is not None and not old_ws.closed:
            task = asyncio.create_task(self._close(old_ws, CLOSE_POLICY, b"session resumed on another connection"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _read(self, ws: web.WebSocketResponse, session: Session, idle: "_IdleTimer") -> None:
        while not session.closed:
            msg = await self._receive(ws, idle)
            if session.closed:  # taken over by a resume while we waited
                return
            if msg.type == WSMsgType.BINARY:
                self._guard(session, session.feed, msg.data)
            elif msg.type == WSMsgType.TEXT:
                message = self._guard(session, self._parse_in_session, msg.data)
                if isinstance(message, Stop):
                    await self._flush_reading(ws, session)
                    session.outbox.put(End(session_id=session.id, finals=session.finals, audio_seconds=session.audio_seconds))
                    return
                if isinstance(message, Finalize):
                    session.finalize()
                elif isinstance(message, Start):
                    session.send_error(StreamError("already_started", "this session has started already"))
                elif isinstance(message, KeepAlive):
                    pass
            else:  # close, error
                return
            if session.outbox.overflowed:
                raise StreamError("slow_consumer", "the client does not read its messages", fatal=True)

    @staticmethod
    async def _flush_reading(ws: web.WebSocketResponse, session: Session) -> None:
        """Flush after `stop` while still reading the socket: aiohttp answers pings only inside receive(), and
        a flush behind a busy decoder can outlast the client's ping timeout (20 s in websockets), which then
        drops the connection just before the last finals and `end`. Frames that still arrive are not taken."""

        async def discard() -> None:
            while (await ws.receive()).type not in ENDED:
                pass

        reader = asyncio.create_task(discard())
        try:
            await session.flush()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def _parse_in_session(self, data: str):
        """A text frame in a started session: a second start is `already_started`, whatever it holds
        (its validation errors, fatal before a session, must not end this one)."""
        try:
            return parse_text(data, self.options.max_frame_bytes)
        except StreamError as exc:
            if exc.code != "frame_too_large" and _message_type(data) == "start":
                raise StreamError("already_started", "this session has started already") from None
            raise StreamError(exc.code, exc.message, fatal=False) from None

    @staticmethod
    def _guard(session: Session, fn, *args):
        """Per-frame errors go back to the client; fatal ones end the session."""
        try:
            return fn(*args)
        except StreamError as exc:
            if exc.fatal:
                raise
            session.send_error(exc)
            return None

    async def _write(self, ws: web.WebSocketResponse, session: Session) -> None:
        while (message := await session.outbox.get()) is not None:
            await ws.send_str(to_json(message))
            if isinstance(message, End):
                await ws.close(code=CLOSE_NORMAL)
                return

    async def _send_error(self, ws: web.WebSocketResponse, exc: StreamError) -> None:
        self.metrics.errors.labels(exc.code).inc()
        if not ws.closed:
            await self._send_direct(ws, json.dumps({"type": "error", "code": exc.code, "message": exc.message}))

    async def _close(self, ws: web.WebSocketResponse, code: int, reason: bytes, transport=None, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close with a code; a peer that does not take part in the close handshake is cut off."""
        try:
            await asyncio.wait_for(ws.close(code=code, message=reason), timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            if transport is not None:
                transport.abort()

    async def _fail(
        self, request: web.Request, ws: web.WebSocketResponse, session: Session | None, writer: asyncio.Task | None, exc: StreamError
    ) -> None:
        """A fatal error: what was said is kept (flushed to finals), the client is told, then closed."""
        code = exc.close_code if exc.fatal else CLOSE_POLICY
        if session is not None and writer is not None and not writer.done():
            # through the outbox, after the finals it holds; bounded, since the client may not read
            if exc.code != "slow_consumer":
                await session.flush()
            self.metrics.errors.labels(exc.code).inc()
            session.outbox.put(Error(code=exc.code, message=exc.message), force=True)
            # a client that does not read will not drain it: cut it off without waiting long
            deadline = time.monotonic() + (1.0 if exc.code == "slow_consumer" else CLOSE_TIMEOUT)
            while len(session.outbox) and not writer.done() and not ws.closed and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        else:
            if session is not None:
                await session.flush()
            try:
                await self._send_error(ws, exc)
            except (StreamError, ConnectionError, RuntimeError):
                pass
        await self._close(ws, code, exc.code.encode(), request.transport, 1.0 if exc.code == "slow_consumer" else CLOSE_TIMEOUT)

    async def _end_session(self, session: Session, writer: asyncio.Task | None) -> None:
        """Connection gone (or taken over): pending audio still becomes finals on disk."""
        try:
            await session.flush()
        finally:
            if self.sessions.get(session.id) is session:
                del self.sessions[session.id]
                self._sockets.pop(session.id, None)
            self.metrics.sessions.set(len(self.sessions))
            if writer is not None and not writer.done():
                session.outbox.put(None, force=True)
                try:
                    await asyncio.wait_for(writer, CLOSE_TIMEOUT)
                except (asyncio.TimeoutError, asyncio.CancelledError, ConnectionError, RuntimeError):
                    writer.cancel()
            if writer is not None and writer.done() and not writer.cancelled():
                writer.exception()  # retrieved: a connection reset while sending is not an error of ours
            if not session.closed:
                await session.close()
                log.info("session %s ended: %d finals, %.1f s of audio", session.id, session.finals, session.audio_seconds)

    # -- life cycle --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.access], client_max_size=1024**2)
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/v1/listen", self.listen)
        app.router.add_get("/v1/sessions/{session_id}/transcript", self.transcript)
        if WEB_ROOT.is_dir():
            app.router.add_static("/web/", WEB_ROOT, show_index=False)
        return app

    async def shutdown(self) -> None:
        """Stop accepting; every session's pending audio becomes finals, sent, then a normal close."""
        self.accepting = False
        sessions = list(self.sessions.values())
        for session in sessions:
            session.stopping = True  # audio that still arrives is not taken (its finals could not be sent)
        await asyncio.gather(*(self._finish(s) for s in sessions), return_exceptions=True)
        await asyncio.gather(
            *(self._close(ws, CLOSE_NORMAL, b"server shutting down") for ws in list(self.connections)), return_exceptions=True
        )

    async def _finish(self, session: Session) -> None:
        await session.flush()
        session.outbox.put(End(session_id=session.id, finals=session.finals, audio_seconds=session.audio_seconds), force=True)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while len(session.outbox) and not session.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


def ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.server.tls_cert, config.server.tls_key or None)
    return context


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    use_two_malloc_arenas()
    engine = await asyncio.to_thread(Engine, config)
    daemon = Daemon(config, engine)
    daemon.scheduler.start()
    runner = web.AppRunner(daemon.app(), handle_signals=False, shutdown_timeout=5, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, ssl_context=ssl_context(config))
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else config.server.port
    scheme = "https" if config.server.tls_cert else "http"
    print(f"uadf-stream listening on {scheme}://{config.server.host}:{port} (websocket /v1/listen)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down")
    await site.stop()
    await daemon.shutdown()
    await runner.cleanup()
    await daemon.scheduler.stop()

"""The daemon's HTTP face: routes, websocket endpoints (one per wire API), health, metrics, transcripts, life cycle."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from pathlib import Path

from aiohttp import web

from streamer.access import AccessLogger, AccessPolicy, check_exposure
from streamer.config import Config, ServerOptions
from streamer.connection import Connection, Pending
from streamer.engine import Engine
from streamer.errors import CLOSE_NORMAL
from streamer.formats import RENDERERS
from streamer.metrics import Metrics
from streamer.protocol import to_dict, valid_session_id
from streamer.registry import SessionRegistry
from streamer.scheduler import DecodeScheduler, use_two_malloc_arenas
from streamer.redis_store import RedisStore
from streamer.store import FileStore, Store, StoreUnavailable, secret_matches
from streamer.transcriptions import Transcriptions
from streamer.wire import deepgram as dg
from streamer.wire import deepgram_adapter, realtime_adapter
from streamer.wire import openai_realtime as rt
from streamer.wire import openai_transcriptions as ot
from streamer.wire.v1 import V1Adapter

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "web"


def open_store(options: ServerOptions) -> Store:
    """`server.store`: "file" (transcripts in `data_dir`) or a Redis URL (shared by several daemons)."""
    if options.store == "file":
        return FileStore(options.data_dir, options.fsync)
    if options.store.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(options.store, options.lease_seconds)
    raise ValueError(f"server.store must be 'file' or a redis:// URL, got {options.store!r}")


class Daemon:
    """Shared state of one running server: engine, scheduler, sessions, transcript store, open connections."""

    def __init__(self, config: Config, engine: Engine):
        self.config = config
        self.options = config.server
        self.engine = engine
        self.metrics = Metrics()
        self.store = open_store(self.options)
        self.scheduler = DecodeScheduler(engine.transcribe, config.scheduler, self.metrics, config.streaming.step, config.asr.workers)
        self.registry = SessionRegistry(engine, self.scheduler, self.store, self.options, self.metrics)
        self.access = AccessPolicy(self.options, self.metrics)
        self.pending = Pending(self.options.max_pending)
        self.connections: set[Connection] = set()
        self.transcriptions = Transcriptions(self.registry, engine, self.options, self.metrics)
        self.draining = False  # SIGTERM: not ready, then the sessions are flushed and ended

    # -- HTTP --------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_ROOT / "index.html")

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: 200 while the process serves HTTP, whatever its load (a load balancer's health is /readyz)."""
        return web.json_response(
            {
                "status": "ok" if self.registry.accepting else "stopping",
                "sessions": len(self.registry),
                "max_sessions": self.options.max_sessions,
                "model": self.engine.backend.model_name,
                "device": self.engine.backend.device,
                "modes": [str(m) for m in self.engine.modes],
                "default_mode": str(self.engine.default_mode),
                "queue_depth": self.scheduler.depth,
                "ready": self.not_ready() is None,
            }
        )

    def not_ready(self) -> str | None:
        """Why this node should get no new connections now (None: it has room)."""
        if self.draining or not self.registry.accepting:
            return "draining"
        if len(self.registry) + self.registry.reserved >= self.options.max_sessions:
            return "full"
        return None

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness for a load balancer's health check: 503 when full or draining, so new connections go to
        nodes with room (live connections stay). The shared store is not checked: every node shares it, so
        while it is down new sessions are refused with `storage_unavailable` on any node."""
        reason = self.not_ready()
        return web.json_response({"ready": reason is None, "reason": reason}, status=200 if reason is None else 503)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        sessions = self.registry.sessions.values()
        self.metrics.sessions.set(len(self.registry))
        self.metrics.connections.set(len(self.connections))
        depths = [len(s.outbox) for s in sessions]
        self.metrics.send_queue_depth.set(sum(depths))
        self.metrics.send_queue_max.set(max(depths, default=0))
        self.metrics.queue_depth.set(self.scheduler.depth)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type})

    async def transcript(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        secret = request.headers.get("X-Resume-Token") or request.query.get("resume_token")
        try:
            if not (valid_session_id(session_id) and await self.store.exists(session_id) and secret_matches(secret, await self.store.secret(session_id))):
                raise web.HTTPNotFound(text="unknown session (or not its resume token)\n")
            finals = await self.store.read(session_id)
        except StoreUnavailable:
            raise web.HTTPServiceUnavailable(text="the transcript store is unavailable; try again later\n") from None
        fmt = request.query.get("format", "json")
        if fmt == "json":
            return web.json_response({"session_id": session_id, "finals": [to_dict(f) for f in finals]})
        if fmt not in RENDERERS:
            raise web.HTTPBadRequest(text=f"format must be json, {', '.join(RENDERERS)}\n")
        render, content_type = RENDERERS[fmt]
        return web.Response(text=render(finals), content_type=content_type)

    # -- websockets --------------------------------------------------------------------------------
    async def listen(self, request: web.Request) -> web.StreamResponse:
        """`/v1/listen`: protocol v1, or Deepgram live for a client that speaks it (told apart at the handshake)."""
        if dg.is_deepgram_handshake(request.query, request.headers):
            return await self.listen_deepgram(request)
        self.access.require_token(request)  # the path checks its own token (own_auth): v1 refuses in its shape
        return await self._serve_websocket(request, V1Adapter(self.options.max_frame_bytes))

    async def listen_deepgram(self, request: web.Request) -> web.StreamResponse:
        try:
            accepted = deepgram_adapter.handshake(
                request.query, request.headers, self.options.token, self.engine.backend.model_name, self.options.max_frame_bytes
            )
        except dg.HandshakeError as err:
            if err.status == 401:
                self.metrics.errors.labels("unauthorized").inc()
            body, status, headers = deepgram_adapter.refusal(err)
            return web.json_response(body, status=status, headers=headers)
        return await self._serve_websocket(request, accepted.adapter, accepted.subprotocol)

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        try:
            accepted = realtime_adapter.handshake(request.query, request.headers, self.options.token, self.options.max_frame_bytes)
        except ot.APIError as err:
            self.metrics.errors.labels("unauthorized").inc()
            return web.json_response(err.body(), status=err.status, headers=err.headers())
        return await self._serve_websocket(request, accepted.adapter, accepted.subprotocol, hello=accepted.adapter.created())

    async def _serve_websocket(
        self, request: web.Request, adapter, subprotocol: str | None = None, hello: str | None = None
    ) -> web.WebSocketResponse:
        """`subprotocol`: the one to select (browsers put keys there); `hello`: a frame sent on connect."""
        # aiohttp itself refuses frames past 4x the limit (close 1009); up to that we answer
        # frame_too_large and go on
        ws = web.WebSocketResponse(
            max_msg_size=self.options.max_frame_bytes * 4, heartbeat=20.0, protocols=(subprotocol,) if subprotocol else ()
        )
        await ws.prepare(request)
        if hello is not None:
            await ws.send_str(hello)
        connection = Connection(ws, adapter, self.registry, self.options, self.metrics, self.pending)
        self.connections.add(connection)
        try:
            await connection.run(request.transport)
        finally:
            self.connections.discard(connection)
        return ws

    # -- life cycle --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.access.middleware], client_max_size=1024**2)
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/v1/listen", self.listen)
        # the other APIs (docs/compat.md) check their keys themselves, to refuse in their own shapes
        own = {
            dg.PREFIXED_PATH: self.listen_deepgram,
            rt.PATH: self.realtime,
            ot.MODELS_PATH: self.transcriptions.models,
        }
        for path, handler in own.items():
            app.router.add_get(path, handler)
        app.router.add_post(ot.PATH, self.transcriptions.create)
        self.access.own_auth |= {"/v1/listen", *own, ot.PATH}
        self.access.own_auth.add("/readyz")  # open: a load balancer's check carries no secret, and it tells only ready or not
        app.router.add_get("/v1/sessions/{session_id}/transcript", self.transcript)
        if WEB_ROOT.is_dir():
            app.router.add_static("/web/", WEB_ROOT, show_index=False)
        return app

    async def shutdown(self) -> None:
        """Stop accepting; every session's pending audio becomes finals, sent, then a normal close."""
        self.draining = True
        await self.registry.shutdown()
        await asyncio.gather(*(c.close(CLOSE_NORMAL, b"server shutting down") for c in list(self.connections)), return_exceptions=True)


def ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.server.tls_cert:  # (a key without a certificate is refused by check_exposure)
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.server.tls_cert, config.server.tls_key or None)
    return context


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    check_exposure(config.server)
    use_two_malloc_arenas()
    engine = await asyncio.to_thread(Engine, config)
    daemon = Daemon(config, engine)
    daemon.scheduler.start()
    await daemon.store.start(daemon.registry.release)
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
    # not ready first, so that a load balancer sends new connections elsewhere (new ones here get `busy`);
    # live sessions go on meanwhile, then are flushed and ended, and their clients resume on other nodes
    daemon.draining = True
    daemon.registry.accepting = False
    if config.server.drain_delay > 0:
        await asyncio.sleep(config.server.drain_delay)
    await site.stop()
    await daemon.shutdown()
    await runner.cleanup()
    await daemon.store.stop()
    await daemon.scheduler.stop()

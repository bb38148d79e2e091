"""Who may talk to the daemon: the bearer token, browser origins, and an access log without secrets."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from streamer.config import ServerOptions
from streamer.metrics import Metrics

PUBLIC_PATHS = ("/",)
PUBLIC_PREFIXES = ("/web/",)  # the captions page and its assets


class AccessLogger(AbstractAccessLogger):
    """The access log without query strings: a `?token=` must not end up in log files."""

    def log(self, request, response, time: float) -> None:
        self.logger.info('%s "%s %s" %s %.3fs', request.remote, request.method, request.path, response.status, time)


class AccessPolicy:
    def __init__(self, options: ServerOptions, metrics: Metrics):
        self.options = options
        self.metrics = metrics
        # Paths whose handlers check the token themselves, to refuse in their API's shape (Deepgram, OpenAI);
        # the origin check still applies.
        self.own_auth: set[str] = set()

    def authorized(self, request: web.Request) -> bool:
        token = self.options.token
        if not token:
            return True
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if not origin or "*" in self.options.allowed_origins or origin in self.options.allowed_origins:
            return True
        return urlsplit(origin).netloc == request.host

    def require_token(self, request: web.Request) -> None:
        """Protocol v1's refusal: 401 in plain text."""
        if not self.authorized(request):
            self.metrics.errors.labels("unauthorized").inc()
            raise web.HTTPUnauthorized(text="missing or wrong bearer token\n", headers={"WWW-Authenticate": "Bearer"})

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if request.path not in PUBLIC_PATHS and not request.path.startswith(PUBLIC_PREFIXES):
            if request.path not in self.own_auth:
                self.require_token(request)
            if not self.origin_allowed(request):
                raise web.HTTPForbidden(text="origin not allowed\n")
        return await handler(request)

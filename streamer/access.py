"""Who may talk to the daemon: the bearer token, the Host it is addressed by, browser origins, and an
access log without secrets."""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from streamer.config import ConfigError, ServerOptions
from streamer.metrics import Metrics
from streamer.wire.auth import credentials, token_matches

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/",)
PUBLIC_PREFIXES = ("/web/",)  # the captions page and its assets
LOCAL_NAMES = ("localhost",)


class AccessLogger(AbstractAccessLogger):
    """The access log without query strings: a `?token=` or `?resume_token=` must not end up in log files."""

    def log(self, request, response, time: float) -> None:
        self.logger.info('%s "%s %s" %s %.3fs', request.remote, request.method, request.path, response.status, time)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_exposure(options: ServerOptions) -> None:
    """At start-up: refuse a TLS key without its certificate (that would serve plaintext), and warn when the
    daemon listens beyond loopback without a token."""
    if options.tls_key and not options.tls_cert:
        raise ConfigError("server.tls_key is set without server.tls_cert: refusing to serve plaintext")
    host = options.host.strip("[]")
    loopback = host in LOCAL_NAMES or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)
    if not loopback and not options.token:
        log.warning(
            "listening on %s, beyond loopback, without a token: anyone who reaches it can stream and read "
            "transcripts; set server.token (or UADF_TOKEN), see docs/deployment.md", options.host or "all interfaces"
        )


class AccessPolicy:
    def __init__(self, options: ServerOptions, metrics: Metrics):
        self.options = options
        self.metrics = metrics
        self.hosts = {h.lower() for h in (*options.allowed_hosts, options.host, *LOCAL_NAMES)}
        # Paths whose handlers check the token themselves, to refuse in their API's shape (Deepgram, OpenAI);
        # the origin check still applies.
        self.own_auth: set[str] = set()

    def authorized(self, request: web.Request) -> bool:
        given = credentials(request.headers, request.query).token
        return token_matches(given, self.options.token)

    def host_allowed(self, request: web.Request) -> bool:
        """DNS rebinding: a page on evil.test whose name resolves to this machine reaches the daemon with
        `Host: evil.test`. Answer only to IP addresses (a browser sends one only when that is the page's own
        address), localhost, the bound host and server.allowed_hosts."""
        try:
            name = urlsplit("//" + request.host).hostname
        except ValueError:
            return False
        if not name:
            return False
        return _is_ip(name) or name in self.hosts or name.endswith(".localhost") or "*" in self.hosts

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
        if not self.host_allowed(request):
            raise web.HTTPMisdirectedRequest(text="this daemon does not serve that host name (server.allowed_hosts)\n")
        if request.path not in PUBLIC_PATHS and not request.path.startswith(PUBLIC_PREFIXES):
            if request.path not in self.own_auth:
                self.require_token(request)
            if not self.origin_allowed(request):
                raise web.HTTPForbidden(text="origin not allowed\n")
        return await handler(request)

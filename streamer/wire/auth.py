"""Where each client puts its key: the credentials of one handshake or request, from any of the places the
official SDKs (and browsers, which cannot set headers on a websocket) put them."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

# Header schemes: Deepgram's SDK sends `Token KEY` (api_key) or `bearer JWT` (access_token); OpenAI's `Bearer KEY`.
SCHEMES = ("bearer", "token")
# Websocket subprotocols that carry a key where a browser cannot set headers:
# Deepgram: ["token", KEY] or ["bearer", JWT]; OpenAI Realtime: ["realtime", "openai-insecure-api-key.KEY"].
OPENAI_KEY_PROTOCOL = "openai-insecure-api-key."


SELECTABLE = ("token", "bearer", "realtime")  # what the server answers: a browser fails a handshake that selects none


@dataclass(frozen=True)
class Credentials:
    token: str | None
    subprotocol: str | None = None  # the offered subprotocol to select in the handshake answer (None: select none)


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    return [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]


def credentials(headers: Mapping[str, str], query: Mapping[str, str]) -> Credentials:
    """The key a request carries: `Authorization: Bearer|Token KEY` (scheme case-insensitive), a key in the
    websocket subprotocols, or `?token=` (protocol v1, browsers). The header wins when several are present."""
    protocols = offered_subprotocols(headers)
    selected = next((p for p in protocols if p.lower() in SELECTABLE), None)
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() in SCHEMES and value.strip():
        return Credentials(value.strip(), selected)
    for i, proto in enumerate(protocols):
        if proto.lower() in SCHEMES and i + 1 < len(protocols):
            return Credentials(protocols[i + 1], selected)
        if proto.startswith(OPENAI_KEY_PROTOCOL):
            return Credentials(proto[len(OPENAI_KEY_PROTOCOL):], selected)
    return Credentials(query.get("token") or None, selected)


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; any key is accepted when the daemon has none configured."""
    if not expected:
        return True
    # headers arrive as UTF-8 with undecodable bytes escaped: compare bytes as they came
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())

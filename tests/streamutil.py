"""Helpers for the reliability, fuzz and load tests: raw websocket exchanges, metrics, transcripts on disk."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import struct
import threading
import time
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import psutil
import websockets
from prometheus_client.parser import text_string_to_metric_families

from clients.stream import send_paced, to_pcm16
from conftest import manifest
from streamer.audio import load_audio

START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}
STOP = json.dumps({"type": "stop"})
PROTOCOL_DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
ERROR_ROW = re.compile(r"^\| `([a-z_]+)` \|.*\|(.*)\|$")


def documented_errors() -> dict[str, int | None]:
    """The error table of docs/protocol.md: code -> the close code that follows it (None: the session goes on)."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    table = text[text.index("### `error`") :].split("\n## ")[0]
    out: dict[str, int | None] = {}
    for line in table.splitlines():
        if m := ERROR_ROW.match(line):
            close = re.search(r"close (\d{4})", m.group(2))
            out[m.group(1)] = int(close.group(1)) if close else None
    return out


ERROR_CODES = set(documented_errors())


def start(**fields) -> str:
    """A start message; fields override (None removes a field)."""
    msg = {**START, **fields}
    return json.dumps({k: v for k, v in msg.items() if v is not None})


pcm16 = to_pcm16


def open_ws(url: str, token: str | None = None, ssl_context: ssl.SSLContext | None = None, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if ssl_context is not None:
        kw["ssl"] = ssl_context
    return websockets.connect(url, additional_headers=headers, max_size=2**24, open_timeout=30, **kw)


async def recv(ws, timeout: float = 60.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def drain(ws, timeout: float = 180.0) -> list[dict]:
    """Every message until the server closes the connection (then ws.close_code is set)."""
    out: list[dict] = []

    async def go():
        try:
            async for raw in ws:
                out.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass

    await asyncio.wait_for(go(), timeout)
    return out


def close_code(ws) -> int | None:
    """The close code the server sent (None when the connection just dropped)."""
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None


def resume_fields(ready: dict, resume_from: int = 0, **fields) -> dict:
    """The start fields that resume the session a `ready` opened (its id and resume secret)."""
    return {"session_id": ready["session_id"], "resume_token": ready.get("resume_token"), "resume_from": resume_from, **fields}


def secret(ready: dict) -> dict:
    """The header that proves a session's resume secret (to read its transcript)."""
    return {"X-Resume-Token": ready["resume_token"]}


@asynccontextmanager
async def session(
    url: str, token: str | None = None, ssl_context: ssl.SSLContext | None = None, ws_options: dict | None = None, **fields
) -> AsyncIterator[tuple[object, dict]]:
    """A connection with a started session: connect, send `start` (fields override, as in `start`),
    assert the answer is `ready`; yields the websocket and the ready message."""
    async with open_ws(url, token, ssl_context, **(ws_options or {})) as ws:
        await ws.send(start(**fields))
        ready = await recv(ws, 120)
        assert ready["type"] == "ready", ready
        yield ws, ready


async def expect_fatal(ws, code: str, close: int | None = 1008, timeout: float = 180.0) -> list[dict]:
    """Drain the connection; its last message must be error `code`, then the server's close `close`."""
    msgs = await drain(ws, timeout)
    assert msgs and msgs[-1]["type"] == "error" and msgs[-1]["code"] == code, msgs[-3:]
    assert close_code(ws) == close, (close_code(ws), msgs[-3:])
    return msgs


async def expect_end(ws, timeout: float = 180.0) -> list[dict]:
    """Drain the connection; it must end with `end` and a normal close."""
    msgs = await drain(ws, timeout)
    assert msgs and msgs[-1]["type"] == "end", msgs[-3:]
    assert close_code(ws) == 1000, close_code(ws)
    return msgs


def finals_in(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "final"]


async def send_audio(ws, audio: np.ndarray, speed: float, chunk: float = 0.1, stop: bool = True, **kw) -> None:
    """16 kHz float audio through the client core's paced sender."""
    await send_paced(ws, audio, 16000, speed, chunk, stop, **kw)


async def send_until_closed(ws, audio: np.ndarray, speed: float, chunk: float = 1.0) -> None:
    """Send audio (no stop) until the server ends the connection."""
    try:
        await send_audio(ws, audio, speed, chunk, stop=False)
    except websockets.ConnectionClosed:
        pass


async def wait_until_idle(d, timeout: float = 60.0, headers=None, ssl_context=None) -> None:
    """Until the daemon's /healthz counts no session (AssertionError after `timeout`)."""
    base = d.http_url.replace("http://", "https://") if ssl_context else d.http_url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if json.load(http_get(base + "/healthz", headers, ssl_context))["sessions"] == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("sessions did not end")


def http_get(url: str, headers: dict | None = None, ssl_context: ssl.SSLContext | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    return urllib.request.urlopen(req, timeout=30, context=ssl_context)


def metrics(daemon, headers: dict | None = None, ssl_context=None) -> dict[tuple, float]:
    """Scrape /metrics with the Prometheus parser: {(sample name, ((label, value), ...)): value}."""
    base = daemon.http_url.replace("http://", "https://") if ssl_context else daemon.http_url
    text = http_get(base + "/metrics", headers, ssl_context).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def speech(entry_id: str = "jfk", folder: str = "speech-dev") -> np.ndarray:
    """A clip of the shared speech data as 16 kHz mono float32."""
    return load_audio(next(e for e in manifest(folder) if e["id"] == entry_id)["path"])


def reference(entry_id: str, folder: str = "speech-dev") -> str:
    return next(e for e in manifest(folder) if e["id"] == entry_id)["text"]


def disk_finals(data_dir: Path, session_id: str) -> list[dict]:
    """The finals in a session's JSONL transcript, as written (torn lines skipped)."""
    out = []
    for line in (Path(data_dir) / f"{session_id}.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if obj.get("type") == "final":
            out.append(obj)
    return out


def same_final(a: dict, b: dict) -> bool:
    keys = ("segment", "text", "start", "end", "endpoint")
    return all(a.get(k) == b.get(k) for k in keys)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def pink_noise(seconds: float, level: float = 0.05, seed: int = 0) -> np.ndarray:
    """1/f noise (spectral shaping of white noise), normalised to `level` RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / 16000)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n)
    return (x / np.sqrt(np.mean(x**2)) * level).astype(np.float32)


def tones(seconds: float, seed: int = 0) -> np.ndarray:
    """Steady tones, chords, beeps and a sweep, 2-6 s each, at speech-like loudness."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0.0
    while total < seconds:
        d = float(rng.uniform(2, 6))
        t = np.arange(int(d * 16000)) / 16000
        kind = rng.integers(4)
        if kind == 0:
            x = np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
        elif kind == 1:
            x = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 1200, 3)) / 3
        elif kind == 2:  # beeps: 1 kHz, 0.2 s on, 0.3 s off
            x = np.sin(2 * np.pi * 1000 * t) * ((t % 0.5) < 0.2)
        else:  # a sweep from 100 Hz to 4 kHz
            x = np.sin(2 * np.pi * (100 * t + (3900 / (2 * d)) * t**2))
        parts.append((x * 0.2).astype(np.float32))
        total += d
    return np.concatenate(parts)[: int(seconds * 16000)]


class DropProxy:
    """A TCP proxy to a local port, on a thread of its own: `cut()` drops every connection through it as a
    failing network does (a reset, no close frame), so clients and the daemon see a real connection loss."""

    def __init__(self, port: int):
        self.target = port
        self.port = 0
        self.connections = 0  # accepted so far
        self._transports: set[asyncio.Transport] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "DropProxy":
        """Starts the proxy; then `http_url` and `ws_url` address the daemon through it."""
        self._thread.start()
        assert self._started.wait(10), "proxy did not start"
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = self.http_url.replace("http", "ws") + "/v1/listen"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def cut(self) -> None:
        """Reset every open connection through the proxy (thread-safe, returns at once)."""
        self._loop.call_soon_threadsafe(self._cut)

    def _cut(self) -> None:
        for transport in list(self._transports):
            sock = transport.get_extra_info("socket")
            if sock is not None:  # close with a reset, not a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        self._transports.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _accept(self, client_reader, client_writer) -> None:
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._transports |= {client_writer.transport, server_writer.transport}
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        server.close()

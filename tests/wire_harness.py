"""A small aiohttp app on a loopback port in a background thread, for driving the official SDKs (synchronous
clients) against the pure wire modules with scripted daemon events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from core.types import Word
from streamer.protocol import End, Final, Partial, Ready


@contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """Run `app` on 127.0.0.1 (a free port); yields 'HOST:PORT'."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()
    address: list[str] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        address.append(f"{host}:{port}")
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10), "test server did not start"
    try:
        yield address[0]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def words(text: str, start: float, step: float = 0.3) -> list[Word]:
    return [Word(w, start + i * step, start + i * step + 0.25, 0.9 - 0.1 * (i % 3)) for i, w in enumerate(text.split())]


def script(session_id: str = "sess1") -> list:
    """Daemon events of a short session: two utterances, the first final in two parts (asr mode)."""
    return [
        Ready(session_id=session_id, mode="asr", model="tiny.en", sample_rate=16000),
        Partial(segment=0, text="hello", start=0.2, end=0.6),
        Partial(segment=0, text="hello world how", start=0.2, end=1.3),
        Final(segment=0, text="Hello world,", start=0.2, end=0.75, words=words("Hello world,", 0.2)),
        Partial(segment=1, text="how are", start=0.8, end=1.6),
        Final(segment=1, text="how are you?", start=0.8, end=1.65, endpoint=True, words=words("how are you?", 0.8)),
        Partial(segment=2, text="fine", start=2.5, end=2.9),
        Final(segment=2, text="Fine, thanks.", start=2.5, end=3.05, endpoint=True, words=words("Fine, thanks.", 2.5)),
        End(session_id=session_id, finals=3, audio_seconds=3.5),
    ]

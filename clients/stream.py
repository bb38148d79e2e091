"""Websocket client core shared by the file and microphone clients and the benchmark."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import websockets

from core.types import Mode

DEFAULT_URL = "ws://127.0.0.1:8765/v1/listen"


@dataclass
class Received:
    """A server message and when it arrived: wall seconds since streaming began, and audio seconds sent by then."""

    message: dict
    wall: float
    audio_sent: float


def connect(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return websockets.connect(url, additional_headers=headers, max_size=2**24, open_timeout=30)


def start_message(sample_rate: int, channels: int, mode: Mode | str | None = None, session_id: str | None = None) -> str:
    msg = {"type": "start", "sample_rate": sample_rate, "encoding": "pcm_s16le", "channels": channels}
    if mode:
        msg["mode"] = str(Mode(mode))
    if session_id:
        msg["session_id"] = session_id
    return json.dumps(msg)


def to_pcm16(audio: np.ndarray) -> bytes:
    """Float samples -> s16le, the inverse of the daemon's /32768 (16-bit sources round-trip exactly)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()


async def send_paced(
    ws,
    audio: np.ndarray,
    sample_rate: int,
    speed: float = 1.0,
    chunk: float = 0.1,
    stop: bool = True,
    on_sent: Callable[[float], None] | None = None,
) -> None:
    """Send audio (float, [frames] or [frames, channels]) as PCM frames of `chunk` seconds at `speed` x real
    time (0: as fast as possible), then a `stop` unless told not to; `on_sent(seconds)` after each frame."""
    audio = audio.reshape(len(audio), -1)
    step = max(int(chunk * sample_rate), 1)
    t0 = time.monotonic()
    for i in range(0, len(audio), step):
        block = audio[i : i + step]
        if speed > 0:
            delay = t0 + (i / sample_rate) / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(to_pcm16(block))
        if on_sent:
            on_sent((i + len(block)) / sample_rate)
    if stop:
        await ws.send(json.dumps({"type": "stop"}))


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
) -> list[Received]:
    """Send audio (float, [frames] or [frames, channels]) at `speed` x real time, then stop; collect every message."""
    received: list[Received] = []
    async with connect(url, token) as ws:
        await ws.send(start_message(sample_rate, channels, mode))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"server refused the session: {ready}")
        t0 = time.monotonic()
        sent = [0.0]
        sender = asyncio.create_task(send_paced(ws, audio, sample_rate, speed, chunk, on_sent=lambda s: sent.__setitem__(0, s)))
        try:
            async for raw in ws:
                item = Received(json.loads(raw), time.monotonic() - t0, sent[0])
                received.append(item)
                if on_message:
                    on_message(item)
                if item.message.get("type") == "end":
                    break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return [Received(ready, 0.0, 0.0)] + received

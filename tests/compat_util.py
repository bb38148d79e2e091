"""Helpers of the compatibility tests (tests/test_compat_*.py): speech clips with a pause between them, a paced
sender, and a protocol v1 session to compare the other APIs with."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import numpy as np
from deepgram.environment import DeepgramClientEnvironment

from clients.stream import send_paced, to_pcm16
from conftest import COMPAT_TOKEN, manifest
from streamer.audio import SAMPLE_RATE, load_audio
from streamutil import open_ws

FRAME = 0.1  # seconds of audio a frame, as live clients send it


def clip(clip_id: str) -> tuple[np.ndarray, str]:
    """A speech-dev clip's audio (16 kHz float) and text."""
    entry = next(e for e in manifest("speech-dev") if e["id"] == clip_id)
    return load_audio(entry["path"]), entry["text"]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def speech(*ids: str, pause: float = 1.5) -> tuple[np.ndarray, list[str]]:
    """speech-dev clips joined by `pause` seconds of silence (an utterance end between them), and their texts."""
    clips = [clip(i) for i in ids]
    parts = [part for i, (audio, _) in enumerate(clips) for part in ([silence(pause)] if i else []) + [audio]]
    return np.concatenate(parts), [text for _, text in clips]


def paced(data: bytes, bytes_per_second: int, frame: float = FRAME, speed: float = 1.0) -> Iterator[bytes]:
    """`data` in frames, each yielded when a live source would have it (`speed` x real time)."""
    step = int(frame * bytes_per_second)
    t0 = time.monotonic()
    for i in range(0, len(data), step):
        delay = t0 + i / bytes_per_second / speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield data[i : i + step]


def pcm16(audio: np.ndarray) -> bytes:
    return to_pcm16(audio)


def in_thread(fn: Callable, *args) -> Callable[[], object]:
    """Run fn(*args) in a thread; returns a function that joins it and gives its result (or raises its error)."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> object:
        thread.join(300)
        if "error" in out:
            raise out["error"]
        return out["value"]

    return join


def v1_session(daemon, audio: np.ndarray, finalize: bool = True) -> list[dict]:
    """Protocol v1 with the bearer token: start, the audio in real time, `finalize` (as a Deepgram client's
    Finalize), stop; every message up to `end`."""

    async def run() -> list[dict]:
        async with open_ws(daemon.ws_url, COMPAT_TOKEN) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "channels": 1}))
            await send_paced(ws, audio, SAMPLE_RATE, speed=1.0, chunk=FRAME, stop=False)
            if finalize:
                await ws.send(json.dumps({"type": "finalize"}))
            await ws.send(json.dumps({"type": "stop"}))
            return [json.loads(m) async for m in ws]

    return asyncio.run(run())


def v1_text(messages: list[dict]) -> str:
    return " ".join(m["text"] for m in messages if m["type"] == "final" and m["text"])


def get_json(daemon, path: str) -> dict:
    request = urllib.request.Request(daemon.http_url + path, headers={"Authorization": f"Bearer {COMPAT_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def environment(daemon, prefix: str = "/deepgram") -> DeepgramClientEnvironment:
    """deepgram-sdk's base URLs; it appends /v1/listen itself (so `/deepgram` is the unambiguous route)."""
    return DeepgramClientEnvironment(
        base=f"{daemon.http_url}{prefix}", production=f"ws://{daemon.host}:{daemon.port}{prefix}", agent="", agent_rest=""
    )

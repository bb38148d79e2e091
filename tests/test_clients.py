"""The file and microphone clients against the real daemon (the microphone is a fake audio device)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import threading
import time
import types

import numpy as np
import soundfile as sf

from conftest import ROOT, manifest, wer


def test_file_client_streams_and_writes_jsonl(daemon, tmp_path):
    entry = next(e for e in manifest("speech-dev") if e["id"] == "jfk")
    out = tmp_path / "messages.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "clients.file", entry["path"], "--url", daemon.ws_url, "--speed", "4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    assert messages[-1]["type"] == "end"
    assert all("wall" in m for m in messages)
    text = " ".join(m["text"] for m in messages if m["type"] == "final")
    assert wer([entry["text"]], [text]) < 0.15
    assert run.stdout.strip().splitlines()[-1] == text


class FakeInputStream:
    """sounddevice.InputStream stand-in: plays a file into the callback at 4x real time."""

    audio: np.ndarray
    done = threading.Event()

    def __init__(self, samplerate, channels, dtype, device, blocksize, callback):
        self.blocksize, self.callback = blocksize, callback

    def __enter__(self):
        def play():
            for i in range(0, len(self.audio), self.blocksize):
                self.callback(self.audio[i : i + self.blocksize, None], self.blocksize, None, None)
                time.sleep(self.blocksize / 16000 / 4)
            FakeInputStream.done.set()

        threading.Thread(target=play, daemon=True).start()
        return self

    def __exit__(self, *exc):
        return False


def test_mic_client_shows_partials_and_finals(daemon, monkeypatch):
    from clients import mic

    entry = next(e for e in manifest("speech-dev") if e["id"] == "jfk")
    audio, _ = sf.read(entry["path"], dtype="float32")
    FakeInputStream.audio = audio
    fake = types.SimpleNamespace(InputStream=FakeInputStream, query_devices=lambda *a: {"default_samplerate": 16000})
    monkeypatch.setattr(mic, "_sounddevice", lambda: fake)
    args = argparse.Namespace(url=daemon.ws_url, device=None, rate=None, mode=None, token=None, keyterm=[])
    screen = io.StringIO()

    async def go():
        stop = asyncio.Event()
        waiter = asyncio.get_running_loop().run_in_executor(None, FakeInputStream.done.wait, 120)
        waiter.add_done_callback(lambda _: stop.set())
        await mic.run(args, stop, screen)

    asyncio.run(go())
    shown = screen.getvalue()
    assert "\033[2m" in shown  # a dimmed partial line was drawn
    finals = shown.replace("\r\033[2K", "\n").split("\n")
    text = " ".join(line for line in finals if line and not line.startswith("\033[2m"))
    assert wer([entry["text"]], [text]) < 0.2, text

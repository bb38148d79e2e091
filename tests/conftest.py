"""Shared fixtures: the real daemon on a free port, the speech data, offline references."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def manifest(name: str) -> list[dict]:
    folder = DATA / name
    if not (folder / "manifest.jsonl").exists():
        pytest.skip(f"speech data {folder} is not present")
    entries = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for e in entries:
        e["path"] = str(folder / e["audio"])
    return entries


@dataclass
class Daemon:
    process: subprocess.Popen
    host: str
    port: int
    data_dir: Path
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/listen"

    def get(self, path: str, headers: dict | None = None):
        req = urllib.request.Request(self.http_url + path, headers=headers or {})
        return urllib.request.urlopen(req, timeout=30)


def start_daemon(tmp: Path, *extra: str, env: dict | None = None, timeout: float = 300) -> Daemon:
    """Start `python -m streamer serve` on a free port and wait until it answers /healthz."""
    data_dir = tmp / "sessions"
    log = tmp / "daemon.log"
    cmd = [
        sys.executable, "-m", "streamer", "serve", "--host", "127.0.0.1", "--port", "0",
        "--data-dir", str(data_dir), "--llm", "", *extra,
    ]
    out = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=out, text=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    port = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}: {log.read_text()[-3000:]}")
            continue
        m = re.search(r"listening on https?://[\d.]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        raise RuntimeError("daemon did not start in time")
    daemon = Daemon(proc, "127.0.0.1", port, data_dir, log)
    return daemon


def stop_daemon(daemon: Daemon) -> int:
    if daemon.process.poll() is None:
        daemon.process.terminate()
        try:
            daemon.process.wait(60)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
    return daemon.process.wait()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """The real daemon (asr mode, embedded tiny.en) shared by the server tests."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"), "--max-sessions", "4", "--set", "server.max_rate=0")
    yield d
    stop_daemon(d)


@pytest.fixture(scope="session")
def engine():
    """The in-process pipeline's models (no LLM)."""
    from streamer.config import load_config
    from streamer.engine import Engine

    return Engine(load_config(overrides=["fusion.llm="]))


@pytest.fixture(scope="session")
def offline_model(engine):
    """faster-whisper's own offline transcription on the same loaded model: the accuracy reference."""
    return engine.backend.whisper_model


def offline_text(model, path: str) -> str:
    segments, _ = model.transcribe(path, language="en", beam_size=1, temperature=0, condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return jiwer.wer([norm(r) for r in refs], [norm(h) for h in hyps])

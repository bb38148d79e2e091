"""Shared fixtures: the real daemon on a free port, the speech data, offline references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamer.daemon_process import start_daemon, stop_daemon

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

"""Shared fixtures: the real daemon on a free port, the speech data, offline references."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.daemon_process import start_daemon, stop_daemon
from tools.data import DATA, corpus_wer, load_manifest, manifest_path

ROOT = Path(__file__).resolve().parents[1]


def _missing(path: Path) -> None:
    """Speech data is part of the test environment: under CI (`CI` set) its absence fails the run."""
    message = f"speech data {path} is not present"
    if os.environ.get("CI"):
        pytest.fail(message + " (required under CI)")
    pytest.skip(message)


def required(path: Path) -> Path:
    """A file of the shared speech data; missing, it fails the test under CI and skips it elsewhere."""
    if not path.exists():
        _missing(path)
    return path


def manifest(name: str) -> list[dict]:
    """A shared data set's entries (with absolute `path`)."""
    try:
        return load_manifest(name)
    except FileNotFoundError:
        _missing(DATA / name)


def manifest_file(name: str) -> str:
    return str(required(manifest_path(name)))


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """The real daemon (asr mode, embedded tiny.en) shared by the server tests."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"), "--max-sessions", "4", "--set", "server.max_rate=0")
    yield d
    stop_daemon(d)


@pytest.fixture(scope="session")
def llm_daemon(tmp_path_factory):
    """The real daemon with the fusion LLM of the default config (Gemma 3 270M), sessions in uadf mode."""
    d = start_daemon(tmp_path_factory.mktemp("llm-daemon"), "--mode", "uadf", "--set", "server.max_rate=0", llm="gemma3-270m")
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


wer = corpus_wer


COMPAT_TOKEN = "compat-key"


@pytest.fixture(scope="session")
def compat_daemon(tmp_path_factory):
    """The real daemon for the Deepgram and OpenAI compatibility tests (tests/test_compat_*.py): a token, three
    sessions, the default rate limit (uploads must pass it), small upload limits so that breaking them is cheap."""
    d = start_daemon(
        tmp_path_factory.mktemp("compat"), "--token", COMPAT_TOKEN, "--max-sessions", "3",
        "--set", "server.max_upload_bytes=1000000", "--set", "server.max_upload_seconds=20",
    )
    yield d
    stop_daemon(d)

"""Typed configuration: one dataclass per concern, read from config.toml, overridable per key."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from core.types import FusionOptions
from streamer.commit import POLICIES
from streamer.keyterm_prompt import MAX_TERMS, MIN_SIMILARITY
from streamer.protocol import MAX_SPEAKERS

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


@dataclass
class AsrOptions:
    model: str = "embedded"
    device: str = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 0  # per replica; 0: all cores, shared out among the workers
    workers: int = 2  # model replicas decoding batches at once (see config.toml)
    language: str = "en"
    prompt_tokens: int = 48  # previous text in Whisper's prompt, in tokens: one length for every long-running stream batches them
    keyterm_spans_only: bool = True  # windows decoded without the keyterms; a committing window respells look-alikes Whisper shown them would write as keyterms


class FusedWindows(StrEnum):
    """Which windows a fusion mode decodes fused; the others are plain ASR."""

    ENDPOINT = "endpoint"  # the window that closes an utterance (the default: see README, Fusion)
    COMMITTING = "committing"  # also every running window that commits words (calibration observes these)


@dataclass
class StreamingOptions:
    """`[streaming]`: when a stream is decoded and what becomes final (see config.toml for each key)."""

    step: float = 0.5  # seconds of new audio between running decodes
    min_window: float = 0.3
    max_window: float = 12.0  # the buffer is trimmed at a committed word past this
    endpoint_silence: float = 0.5
    commit: str = "hybrid"  # a name in streamer.commit.POLICIES; one policy in every mode
    commit_margin: float = 0.8
    commit_confidence: float = 0.5  # words Whisper gives less probability than this: agreement leaves them, the lookahead waits commit_unsure_delay
    commit_delay: float = 1.0  # lookahead: a word is final once this much audio after it was decoded
    commit_unsure_delay: float = 2.25  # ... a word less sure than commit_confidence once this much (at least commit_delay)
    commit_after: float = 2.5  # no commits from running windows before the utterance has this many seconds of audio
    force_committed: bool = False  # committed words still in a window are forced as its decoder prefix, not re-decoded
    fused_windows: FusedWindows = FusedWindows.ENDPOINT
    max_lag: float = 0.5  # a decoder behind by more than this many seconds of decision points decides running windows at the newest only (endpoints at every point)
    prompt_words: int = 40
    keyterm_similarity: float = MIN_SIMILARITY  # a keyterm enters a window's prompt when words heard spell it this close (rapidfuzz ratio)
    keyterm_terms: int = MAX_TERMS  # ... at most this many a window besides those heard exactly (0: no bound)
    vad_threshold: float = 0.5
    vad_neg_threshold: float = 0.35
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    unsure_word_probability: float = 0.5
    min_word_probability: float = 0.1
    compression_ratio_threshold: float = 2.4

    def __post_init__(self) -> None:
        if self.commit not in POLICIES:
            raise ValueError(f"streaming.commit must be one of {sorted(POLICIES)}, got {self.commit!r}")
        if self.fused_windows not in set(FusedWindows):
            raise ValueError(f"streaming.fused_windows must be one of {[w.value for w in FusedWindows]}, got {self.fused_windows!r}")
        self.fused_windows = FusedWindows(self.fused_windows)
        if not 0 <= self.keyterm_similarity <= 100 or self.keyterm_terms < 0:
            raise ValueError("streaming.keyterm_similarity must be 0-100 and streaming.keyterm_terms >= 0")


@dataclass
class SchedulerOptions:
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_partial_interval: float = 8.0
    max_commit_interval: float = 1.0


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 8
    max_frame_bytes: int = 262144
    max_session_seconds: float = 14400.0
    idle_timeout: float = 60.0
    start_timeout: float = 10.0
    max_pending: int = 32
    max_rate: float = 4.0
    max_frames_per_second: float = 100.0
    max_finalizes_per_second: float = 2.0
    send_queue: int = 256
    max_upload_bytes: int = 25 * 1024 * 1024  # POST /v1/audio/transcriptions: OpenAI's own limit
    max_upload_seconds: float = 1800.0
    data_dir: str = "data/sessions"
    fsync: bool = True
    store: str = "file"  # "file" (data_dir) or a redis:// URL: transcripts shared by several daemons (docs/deployment.md)
    lease_seconds: float = 5.0  # with a shared store: how long a node's claim on a live session lasts unrenewed
    drain_delay: float = 0.0  # SIGTERM: seconds not ready (/readyz 503) before sessions are flushed and ended
    token: str = ""
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    tls_cert: str = ""
    tls_key: str = ""


@dataclass
class SpeakerOptions:
    """`[speakers]`: speaker labels on finals (streamer/speaker_labels.py); a session's `start` may override each."""

    diarize: bool = False  # label speakers in sessions that do not say (protocol v1 `diarize`, Deepgram `diarize`)
    max_speakers: int = 8  # at most this many speakers a session (1 to MAX_SPEAKERS, 32)
    threshold: float = 0.675  # cosine similarity at which speech joins a known speaker (0-1; higher: more speakers)

    def __post_init__(self) -> None:
        if not 1 <= self.max_speakers <= MAX_SPEAKERS:
            raise ValueError(f"speakers.max_speakers must be from 1 to {MAX_SPEAKERS}, got {self.max_speakers}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"speakers.threshold must be between 0 and 1, got {self.threshold}")


@dataclass
class Config:
    asr: AsrOptions = field(default_factory=AsrOptions)
    streaming: StreamingOptions = field(default_factory=StreamingOptions)
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)
    server: ServerOptions = field(default_factory=ServerOptions)
    fusion: FusionOptions = field(default_factory=FusionOptions)
    speakers: SpeakerOptions = field(default_factory=SpeakerOptions)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _coerce(value: Any, current: Any) -> Any:
    """Convert a CLI string to the type of the field's current value."""
    if not isinstance(value, str) or isinstance(current, str):
        return value
    if current is None:  # an optional setting (fusion.gate): read the value as TOML, else keep the text
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"expected a boolean, got {value!r}")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, list):
        return [v for v in value.split(",") if v]
    return value


def apply(config: Config, section: str, key: str, value: Any) -> None:
    """Set config.section.key, checking that both exist."""
    options = getattr(config, section, None)
    if options is None or not dataclasses.is_dataclass(options):
        raise ConfigError(f"unknown config section [{section}]")
    if not hasattr(options, key):
        raise ConfigError(f"unknown config key {section}.{key}")
    try:
        setattr(options, key, _coerce(value, getattr(options, key)))
    except ValueError as exc:
        raise ConfigError(f"{section}.{key}: {exc}") from exc


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Read the TOML file (default: the repository's config.toml), then `section.key=value` overrides."""
    config = Config()
    path = Path(path) if path else DEFAULT_CONFIG
    if path.exists():
        with open(path, "rb") as f:
            data = tomllib.load(f)
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"top-level key {section!r} must be a table")
            for key, value in table.items():
                apply(config, section, key, value)
    elif path != DEFAULT_CONFIG:
        raise ConfigError(f"config file not found: {path}")
    for item in overrides:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override must look like section.key=value, got {item!r}")
        apply(config, section, key, value.strip())
    if not config.server.token:
        config.server.token = os.environ.get("UADF_TOKEN", "")
    for options in (config.streaming, config.fusion, config.speakers):  # re-check what setattr bypassed
        try:
            options.__post_init__()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return config

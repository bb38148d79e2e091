"""OpenAI Realtime transcription sessions (`/v1/realtime?intent=transcription`): client events -> session
configuration and audio, the daemon's events -> Realtime server events. Pure: no sockets.

GA events (`session.update` with `session.type = "transcription"`) and the beta ones (`transcription_session.update`,
sent by clients with the `OpenAI-Beta: realtime=v1` header) are both understood; shapes as the official SDK
(openai 3.57) parses them. The mapping is in docs/compat.md.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any

from core.types import Mode
from streamer.audio import MAX_RATE, MIN_RATE
from streamer.protocol import End, Error, Final, Partial, Ready, ServerMessage
from streamer.wire.transcode import RawFormat

PATH = "/v1/realtime"
RATE = 24000  # OpenAI's PCM rate; other rates from 8 to 48 kHz are accepted too
MIN_COMMIT_SECONDS = 0.1  # OpenAI refuses to commit less than 100 ms of audio
GA_FORMATS = {"audio/pcm": "pcm_s16le", "audio/pcmu": "pcm_mulaw", "audio/pcma": "pcm_alaw"}
BETA_FORMATS = {"pcm16": "pcm_s16le", "g711_ulaw": "pcm_mulaw", "g711_alaw": "pcm_alaw"}
SERVER_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
# Client events of conversation sessions: understood, refused in a transcription session.
CONVERSATION_EVENTS = {
    "response.create", "response.cancel", "conversation.item.create", "conversation.item.retrieve",
    "conversation.item.truncate", "conversation.item.delete", "output_audio_buffer.clear",
}


class RealtimeError(Exception):
    """A client event the session refuses: answered with an `error` event; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param, self.event_id = code, message, param, event_id


@dataclass(frozen=True)
class SessionConfig:
    """The effective transcription session (what `session.created` / `session.updated` show)."""

    raw: RawFormat = RawFormat("pcm_s16le", RATE, 1)
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(SERVER_VAD))  # None: manual commits
    model: str | None = None  # transcription.model as asked
    language: str | None = None
    prompt: str = ""  # context for the decoder (the meeting-context issue)
    keyterms: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    @property
    def mode(self) -> str | None:
        """A daemon mode named as the transcription model chooses it; other names get the default."""
        return Mode(self.model) if self.model in Mode.names() else None

    @property
    def silence_ms(self) -> int | None:
        """The endpoint silence the client asked for (server_vad `silence_duration_ms`)."""
        return None if self.turn_detection is None else self.turn_detection.get("silence_duration_ms")


# -- client events ------------------------------------------------------------------------------------------
@dataclass
class SessionUpdate:
    session: dict[str, Any]
    beta: bool  # `transcription_session.update`: the beta session shape
    event_id: str | None = None


@dataclass
class Append:
    audio: bytes
    event_id: str | None = None


@dataclass
class Commit:
    event_id: str | None = None


@dataclass
class Clear:
    event_id: str | None = None


ClientEvent = SessionUpdate | Append | Commit | Clear


def parse_client_event(text: str) -> ClientEvent:
    """One text frame -> a client event. Raises RealtimeError with OpenAI's codes."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise RealtimeError("invalid_json", "The event is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise RealtimeError("invalid_json", "The event must be a JSON object.")
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise RealtimeError("missing_required_parameter", "Missing required parameter: 'type'.", "type", event_id)
    if kind in ("session.update", "transcription_session.update"):
        session = obj.get("session")
        if not isinstance(session, dict):
            raise RealtimeError("missing_required_parameter", "Missing required parameter: 'session'.", "session", event_id)
        return SessionUpdate(session, beta=kind == "transcription_session.update", event_id=event_id)
    if kind == "input_audio_buffer.append":
        audio = obj.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio", event_id)
        try:
            return Append(base64.b64decode(audio, validate=True), event_id)
        except (binascii.Error, ValueError):
            raise RealtimeError("invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio", event_id) from None
    if kind == "input_audio_buffer.commit":
        return Commit(event_id)
    if kind == "input_audio_buffer.clear":
        return Clear(event_id)
    if kind in CONVERSATION_EVENTS:
        raise RealtimeError("unsupported_event", f"{kind} is not available in a transcription session.", "type", event_id)
    raise RealtimeError("invalid_value", f"Invalid value: '{kind[:60]}'. Unknown event type.", "type", event_id)


def _object(value: Any, param: str, event_id: str | None) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise RealtimeError("invalid_type", f"Invalid type for '{param}': expected an object or null.", param, event_id)
    return value


def _turn_detection(value: Any, param: str, event_id: str | None) -> dict[str, Any] | None:
    value = _object(value, param, event_id)
    if value is None:
        return None
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise RealtimeError("invalid_value", f"Invalid value for '{param}.type': {str(kind)[:30]!r}.", f"{param}.type", event_id)
    silence = value.get("silence_duration_ms", SERVER_VAD["silence_duration_ms"])
    if isinstance(silence, bool) or not isinstance(silence, int) or not 0 <= silence <= 60_000:
        raise RealtimeError("invalid_value", f"'{param}.silence_duration_ms' must be an integer from 0 to 60000.", f"{param}.silence_duration_ms", event_id)
    # semantic_vad's end-of-turn model is served by the VAD endpoint: the effective config says server_vad
    return {**SERVER_VAD, **{k: v for k, v in value.items() if k in SERVER_VAD}, "type": "server_vad", "silence_duration_ms": silence}


def _transcription(config: SessionConfig, value: Any, param: str, event_id: str | None) -> SessionConfig:
    value = _object(value, param, event_id)
    if value is None:
        return config
    language = value.get("language", config.language)
    if language not in (None, "") and (not isinstance(language, str) or not (language.lower() == "en" or language.lower().startswith("en-"))):
        raise RealtimeError("unsupported_language", f"Language {str(language)[:20]!r} is not served: only English ('en').", f"{param}.language", event_id)
    prompt = value.get("prompt", config.prompt)
    keywords = value.get("keywords", config.keyterms)
    if not isinstance(prompt, str) or not isinstance(keywords, (list, tuple)) or not all(isinstance(k, str) for k in keywords):
        raise RealtimeError("invalid_type", f"'{param}.prompt' must be a string and '{param}.keywords' a list of strings.", param, event_id)
    model = value.get("model", config.model)
    return replace(config, model=model if isinstance(model, str) else None, language=language or None, prompt=prompt, keyterms=tuple(keywords))


def _format(config: SessionConfig, value: Any, formats: dict[str, str], param: str, event_id: str | None) -> RawFormat:
    if isinstance(value, str):  # beta: "pcm16" | "g711_ulaw" | "g711_alaw"
        value = {"type": value}
    value = _object(value, param, event_id) or {}
    kind = value.get("type", next(k for k, v in formats.items() if v == config.raw.encoding))
    if kind not in formats:
        raise RealtimeError("invalid_value", f"Invalid value for '{param}': {str(kind)[:30]!r}; expected one of {list(formats)}.", param, event_id)
    encoding = formats[kind]
    rate = value.get("rate", RATE) if encoding == "pcm_s16le" else 8000  # G.711 is 8 kHz
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise RealtimeError("invalid_value", f"'{param}.rate' must be an integer from {MIN_RATE} to {MAX_RATE}.", f"{param}.rate", event_id)
    return RawFormat(encoding, rate, 1)


def apply_update(config: SessionConfig, update: SessionUpdate, audio_started: bool) -> SessionConfig:
    """The session after a session.update (GA) or transcription_session.update (beta); fields left out keep
    their value. The audio format is fixed once audio has been appended (the daemon session started)."""
    s, eid = update.session, update.event_id
    if update.beta:
        source, formats, base = s, BETA_FORMATS, "session"
        fmt, fmt_param = s.get("input_audio_format"), "session.input_audio_format"
        transcription, transcription_param = s.get("input_audio_transcription"), "session.input_audio_transcription"
    else:
        kind = s.get("type")
        if kind is None:
            raise RealtimeError("missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type", eid)
        if kind != "transcription":
            raise RealtimeError("invalid_value", "Only transcription sessions are served: set session.type to 'transcription'.", "session.type", eid)
        audio = _object(s.get("audio"), "session.audio", eid) or {}
        source, formats, base = _object(audio.get("input"), "session.audio.input", eid) or {}, GA_FORMATS, "session.audio.input"
        fmt, fmt_param = source.get("format"), "session.audio.input.format"
        transcription, transcription_param = source.get("transcription"), "session.audio.input.transcription"
    new = config
    if fmt is not None:
        raw = _format(config, fmt, formats, fmt_param, eid)
        if audio_started and raw != config.raw:
            raise RealtimeError("invalid_value", "The audio format cannot change once audio has been appended.", fmt_param, eid)
        new = replace(new, raw=raw)
    new = _transcription(new, transcription, transcription_param, eid)
    if "turn_detection" in source:
        new = replace(new, turn_detection=_turn_detection(source["turn_detection"], f"{base}.turn_detection", eid))
    include = s.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
            raise RealtimeError("invalid_type", "'session.include' must be a list of strings.", "session.include", eid)
        new = replace(new, include=tuple(include))
    return new


def session_object(config: SessionConfig, session_id: str, beta: bool) -> dict[str, Any]:
    """The session as `session.created` / `session.updated` (GA) or `transcription_session.updated` (beta) show it."""
    transcription = {"model": config.model, "language": config.language, "prompt": config.prompt}
    if config.keyterms:
        transcription["keywords"] = list(config.keyterms)
    if beta:
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "input_audio_format": next(k for k, v in BETA_FORMATS.items() if v == config.raw.encoding),
            "input_audio_transcription": transcription,
            "turn_detection": config.turn_detection,
            "input_audio_noise_reduction": None,
            "include": list(config.include) or None,
        }
    fmt: dict[str, Any] = {"type": next(k for k, v in GA_FORMATS.items() if v == config.raw.encoding)}
    if config.raw.encoding == "pcm_s16le":
        fmt["rate"] = config.raw.sample_rate
    return {
        "type": "transcription",
        "id": session_id,
        "object": "realtime.transcription_session",
        "audio": {"input": {"format": fmt, "transcription": transcription, "noise_reduction": None, "turn_detection": config.turn_detection}},
        "include": list(config.include) or None,
    }


# -- server events ------------------------------------------------------------------------------------------
_PENDING = object()  # a commit without an event_id
@dataclass
class _Item:
    id: str
    start: float
    finals: list[Final] = field(default_factory=list)

    @property
    def transcript(self) -> str:
        return " ".join(f.text for f in self.finals if f.text)


class Renderer:
    """One session's daemon events and buffer operations -> Realtime server events (JSON-ready dicts).

    With turn detection (server_vad), an utterance is an item: its first text -> `speech_started`; its endpoint
    -> `speech_stopped`, `committed`, one `delta` per final, `completed`. The daemon's partials are revisable and
    Realtime deltas only append, so partials are not sent; deltas follow `committed` as OpenAI orders them.
    Without turn detection, finals collect until the client's commit (`commit`), which closes the item.
    """

    def __init__(self, config: SessionConfig, session_id: str):
        self.config = config
        self.session_id = session_id
        self._events = itertools.count(1)
        self._items = itertools.count(1)
        self._item: _Item | None = None
        self._previous: str | None = None
        self._uncommitted = 0.0  # seconds appended since the last commit (auto or manual) or clear
        self._cleared_at = 0.0  # stream time of the last clear: daemon output before it belongs to dropped audio
        self._commit: str | object | None = None  # a client commit waiting for the daemon's finalize

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": f"event_{self.session_id[:8]}_{next(self._events)}", **fields}

    def created(self, beta: bool) -> dict[str, Any]:
        return self.event("transcription_session.created" if beta else "session.created", session=session_object(self.config, self.session_id, beta))

    def updated(self, beta: bool) -> dict[str, Any]:
        return self.event("transcription_session.updated" if beta else "session.updated", session=session_object(self.config, self.session_id, beta))

    def error(self, err: RealtimeError) -> dict[str, Any]:
        return self.event("error", error={"type": "invalid_request_error", "code": err.code, "message": err.message, "param": err.param, "event_id": err.event_id})

    def appended(self, seconds: float) -> None:
        """Audio of this many seconds went into the session (after decoding the append)."""
        self._uncommitted += seconds

    def render(self, message: ServerMessage) -> list[dict[str, Any]]:
        if isinstance(message, Partial):
            return self._open(message.start) if message.text and message.end > self._cleared_at else []
        if isinstance(message, Final):
            return self._final(message)
        if isinstance(message, Error):
            kind = "server_error" if message.code == "internal" else "invalid_request_error"
            return [self.event("error", error={"type": kind, "code": message.code, "message": message.message, "param": None, "event_id": None})]
        if isinstance(message, (Ready, End)):
            return []  # session.created went out on connect; the close ends the session
        raise TypeError(f"no Realtime rendering for {type(message).__name__}")

    def commit_requested(self, event_id: str | None) -> None:
        """The client sent `input_audio_buffer.commit`; the adapter now has the daemon finalize the pending
        audio. The endpoint final that this brings closes the item as a commit (no `speech_stopped`)."""
        self._commit = _PENDING if event_id is None else event_id

    def commit_done(self, stream_time: float) -> list[dict[str, Any]]:
        """After the finalize's finals were rendered: closes the item if no endpoint did (no speech, or no turn
        detection). Raises RealtimeError(input_audio_buffer_commit_empty) for under 100 ms of audio."""
        pending, self._commit = self._commit, None
        if pending is None:  # an endpoint final closed the item already
            return []
        if self._item is None and self._uncommitted < MIN_COMMIT_SECONDS:
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {self._uncommitted * 1000:.2f}ms of audio.",
                event_id=None if pending is _PENDING else pending,
            )
        item = self._item or _Item(self._new_item_id(), max(stream_time - self._uncommitted, 0.0))
        return self._close(item, stream_time, vad=False)

    def clear(self, stream_time: float) -> list[dict[str, Any]]:
        """The client's `input_audio_buffer.clear`: the open item and the audio so far are dropped."""
        self._item = None
        self._uncommitted = 0.0
        self._cleared_at = stream_time
        return [self.event("input_audio_buffer.cleared")]

    # -- internals --------------------------------------------------------------------------------------
    def _new_item_id(self) -> str:
        return f"item_{self.session_id[:8]}_{next(self._items)}"

    def _open(self, start: float) -> list[dict[str, Any]]:
        if self._item is not None:
            return []
        self._item = _Item(self._new_item_id(), start)
        if self.config.turn_detection is None:
            return []
        return [self.event("input_audio_buffer.speech_started", audio_start_ms=int(start * 1000), item_id=self._item.id)]

    def _final(self, final: Final) -> list[dict[str, Any]]:
        if final.end <= self._cleared_at:
            return []
        out = self._open(final.start) if final.text else []
        if self._item is not None and final.text:
            self._item.finals.append(final)
        if final.endpoint and self._item is not None:
            if self._commit is not None:
                self._commit = None
                out += self._close(self._item, final.end, vad=False)
            elif self.config.turn_detection is not None:
                out += self._close(self._item, final.end, vad=True)
        return out

    def _close(self, item: _Item, end: float, vad: bool) -> list[dict[str, Any]]:
        out = [self.event("input_audio_buffer.speech_stopped", audio_end_ms=int(end * 1000), item_id=item.id)] if vad else []
        out.append(self.event("input_audio_buffer.committed", previous_item_id=self._previous, item_id=item.id))
        text = ""
        for f in item.finals:
            delta = (" " if text else "") + f.text
            text += delta
            out.append(self.event("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0, delta=delta))
        out.append(
            self.event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item.id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": round(max(end - item.start, 0.0), 3)},
            )
        )
        self._previous = item.id
        self._item = None
        self._uncommitted = 0.0
        return out

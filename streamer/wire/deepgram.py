"""Deepgram live streaming (`/v1/listen`, Deepgram's listen v1): its query parameters -> session options, the
daemon's events -> Deepgram's messages, Deepgram's client messages -> the daemon's controls. Pure: no sockets.

The message shapes are those the official SDK (deepgram-sdk 7.17) parses; the mapping is in docs/compat.md.
"""

from __future__ import annotations

import hashlib
import json
import string
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from core.types import Mode
from streamer.audio import MAX_RATE, MIN_RATE
from streamer.protocol import End, Error, Final, Finalize, KeepAlive, Partial, Ready, ServerMessage, Stop
from streamer.wire.auth import SCHEMES, offered_subprotocols
from streamer.wire.transcode import RawFormat

PATH = "/v1/listen"  # Deepgram's own path, shared with protocol v1 (see `is_deepgram_handshake`)
PREFIXED_PATH = "/deepgram/v1/listen"  # unambiguous: the SDK's base URL `ws://HOST:PORT/deepgram`

ENCODINGS = {"linear16": "pcm_s16le", "linear32": "pcm_s32le", "mulaw": "pcm_mulaw", "alaw": "pcm_alaw"}
CHANNEL_INDEX = [0, 1]  # [channel, channels]: one transcript of the mixed-down audio
# Accepted and without effect on the transcript: (parameter, why) for the warning.
IGNORED = {
    "detect_entities": "entities are not detected",
    "diarize_model": "the daemon's own diarizer labels speakers (diarize=true)",
    "dictation": "spoken punctuation is not converted",
    "filler_words": "filler words follow the Whisper model",
    "language_hint": "only English is served",
    "mip_opt_out": "nothing leaves this server",
    "no_delay": "results come as soon as they are decoded",
    "numerals": "numbers are written as the Whisper model writes them",
    "profanity_filter": "profanity is not filtered",
    "replace": "find-and-replace is not applied",
    "search": "search hits are not reported",
    "tag": "usage tags are not recorded",
    "version": "the server's model is used",
    "detect_language": "only English is served",
    "alternatives": "one alternative is sent",
}
# Features whose silent absence would mislead the client: refused at the handshake.
REFUSED = {
    "callback": "results are sent on this websocket only",
    "callback_method": "results are sent on this websocket only",
    "redact": "redaction is not supported",
}


class HandshakeError(Exception):
    """Refuses the websocket upgrade: HTTP `status` with Deepgram's REST error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self, request_id: str) -> dict[str, str]:
        code = "INVALID_AUTH" if self.status == 401 else "Bad Request"
        return {"err_code": code, "err_msg": self.message, "request_id": request_id}

    def headers(self, request_id: str) -> dict[str, str]:
        return {"dg-error": self.message, "dg-request-id": request_id}


UNAUTHORIZED = HandshakeError(401, "Invalid credentials.")


@dataclass
class Options:
    """A Deepgram stream's settings, from its query string."""

    raw: RawFormat
    mode: str | None = None  # a daemon mode named as `model`, else the daemon's default
    model: str | None = None  # as the client asked
    interim_results: bool = False
    endpointing_ms: int | None = 10  # Deepgram's default; None: `endpointing=false` (no speech_final)
    utterance_end_ms: int | None = None  # None: no UtteranceEnd messages
    vad_events: bool = False
    punctuate: bool = False
    smart_format: bool = False
    keyterms: list[str] = field(default_factory=list)
    diarize: bool | None = None  # `speaker` on words; None: not asked (the daemon's [speakers] setting)
    extra: dict[str, str] = field(default_factory=dict)  # echoed in every Results' metadata
    warnings: list[str] = field(default_factory=list)

    @property
    def formatted(self) -> bool:
        return self.punctuate or self.smart_format


def is_deepgram_handshake(query: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    """On the shared `/v1/listen`: whether the upgrade comes from a Deepgram client rather than protocol v1.

    Deepgram clients put their options in the query (the SDK always sends `model`), authenticate with
    `Authorization: Token ...` or the `token`/`bearer` subprotocol; a protocol v1 client sends at most `?token=`
    and `Authorization: Bearer`. A Deepgram client with neither (no query, Bearer key) is served as v1.
    """
    if any(key != "token" for key in query):
        return True
    if headers.get("Authorization", "").strip().lower().startswith("token "):
        return True
    return any(p.lower() in SCHEMES for p in offered_subprotocols(headers))


def _bool(name: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise HandshakeError(400, f"{name} must be true or false, got {value[:40]!r}")


def _int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise HandshakeError(400, f"{name} must be an integer, got {value[:40]!r}") from None
    if not low <= number <= high:
        raise HandshakeError(400, f"{name} must be from {low} to {high}, got {number}")
    return number


def _keyword(value: str) -> str:
    """A legacy `keywords` entry `term:intensifier` -> the term; the intensifier has no meaning here."""
    term, _, boost = value.rpartition(":")
    try:
        float(boost)
    except ValueError:
        return value
    return term or value


def parse_query(items: Iterable[tuple[str, str]]) -> Options:
    """The query string (repeated keys kept, as aiohttp's `request.query.items()`) -> Options.
    Raises HandshakeError(400) for a value the server cannot honour."""
    pairs = [(k, v) for k, v in items if k != "token"]
    single: dict[str, str] = {}
    warnings: list[str] = []
    keyterms: list[str] = []
    extra: dict[str, str] = {}
    for key, value in pairs:
        if key in REFUSED and not (key == "redact" and value.lower() == "false"):
            raise HandshakeError(400, f"{key} is not supported: {REFUSED[key]}")
        if key == "keyterm":
            keyterms.append(value)
        elif key == "keywords":
            keyterms.append(_keyword(value))
        elif key == "extra":
            name, sep, val = value.partition(":")
            if not sep:
                raise HandshakeError(400, f"extra must be key:value, got {value[:40]!r}")
            extra[name] = val
        elif key in IGNORED:
            warnings.append(f"{key} ignored: {IGNORED[key]}")
        else:
            single[key] = value

    encoding = single.pop("encoding", None)
    if encoding is None:
        raise HandshakeError(400, f"encoding is required: this server takes raw audio ({', '.join(ENCODINGS)}), not containers")
    if encoding not in ENCODINGS:
        raise HandshakeError(400, f"encoding {encoding[:40]!r} is not supported; use one of {', '.join(ENCODINGS)}")
    if "sample_rate" not in single:
        raise HandshakeError(400, "sample_rate is required with encoding")
    rate = _int("sample_rate", single.pop("sample_rate"), MIN_RATE, MAX_RATE)
    channels = _int("channels", single.pop("channels", "1"), 1, 2)
    if channels > 1 and _bool("multichannel", single.get("multichannel", "false")):
        raise HandshakeError(400, "multichannel is not supported: channels are mixed into one transcript")
    single.pop("multichannel", None)

    language = single.pop("language", "en")
    if language.lower() != "en" and not language.lower().startswith("en-"):
        raise HandshakeError(400, f"language {language[:40]!r} is not served: only English (en, en-US, ...)")

    model = single.pop("model", None)
    mode = Mode(model) if model in Mode.names() else None
    if model is not None and mode is None:
        warnings.append(f"model {model[:40]!r} is served by this server's model; name a mode ({', '.join(Mode.names())}) to choose one")

    endpointing: int | None = 10
    if "endpointing" in single:
        value = single.pop("endpointing")
        if value.lower() in ("true", "false"):
            endpointing = 10 if value.lower() == "true" else None
        else:
            endpointing = _int("endpointing", value, 0, 60_000)
    utterance_end = _int("utterance_end_ms", single.pop("utterance_end_ms"), 0, 60_000) if "utterance_end_ms" in single else None

    options = Options(
        raw=RawFormat(ENCODINGS[encoding], rate, channels),
        mode=mode,
        model=model,
        interim_results=_bool("interim_results", single.pop("interim_results", "false")),
        endpointing_ms=endpointing,
        utterance_end_ms=utterance_end,
        vad_events=_bool("vad_events", single.pop("vad_events", "false")),
        punctuate=_bool("punctuate", single.pop("punctuate", "false")),
        smart_format=_bool("smart_format", single.pop("smart_format", "false")),
        keyterms=keyterms,
        diarize=_bool("diarize", single.pop("diarize")) if "diarize" in single else None,
        extra=extra,
    )
    warnings += [f"{key} is not a Deepgram live parameter; ignored" for key in single]
    options.warnings = warnings
    return options


# -- client messages ----------------------------------------------------------------------------------------
@dataclass
class Configure:
    """A mid-stream `Configure`: keyterms (None: keep) and formatting features to switch."""

    keyterms: list[str] | None
    features: dict[str, bool]


class SchemaError(Exception):
    """A client text frame Deepgram would not parse: answered with an `Error` message, the stream goes on."""

    def __init__(self, description: str, original: str):
        super().__init__(description)
        self.message = {"type": "Error", "variant": "SchemaError", "description": description, "message": original[:1000]}


ClientMessage = Finalize | KeepAlive | Stop | Configure


def parse_client_message(text: str) -> ClientMessage:
    """One text frame -> the daemon's control (Finalize, KeepAlive, Stop for CloseStream) or a Configure."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise SchemaError("text frames must be JSON", text) from None
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "KeepAlive":
        return KeepAlive()
    if kind == "Finalize":  # `channel` selects a channel to flush; there is one transcript
        return Finalize()
    if kind == "CloseStream":
        return Stop()
    if kind == "Configure":
        keyterms, features = obj.get("keyterms"), obj.get("features") or {}
        if keyterms is not None and not (isinstance(keyterms, list) and all(isinstance(k, str) for k in keyterms)):
            raise SchemaError("Configure.keyterms must be a list of strings", text)
        if not (isinstance(features, dict) and all(isinstance(v, bool) for v in features.values())):
            raise SchemaError("Configure.features must map feature names to booleans", text)
        return Configure(keyterms, features)
    raise SchemaError("message type must be KeepAlive, Finalize, CloseStream or Configure", text)


def is_close_frame(data: bytes) -> bool:
    """An empty binary frame: Deepgram's deprecated way to send CloseStream."""
    return len(data) == 0


# -- server messages ----------------------------------------------------------------------------------------
_STRIP = string.punctuation.replace("'", "") + "“”‘’…–—¿¡"


def plain_word(word: str) -> str:
    """Deepgram's `word`: lower case without the punctuation around it (kept in `punctuated_word`)."""
    return word.strip().strip(_STRIP).lower()


def close_for(error: Error, close_code: int) -> tuple[int, str]:
    """A fatal daemon error -> Deepgram's close frame (code, reason). Deepgram closes an idle stream
    with 1011 NET-0001; other reasons carry the daemon's code (the reason is at most 123 bytes)."""
    if error.code == "idle_timeout":
        return 1011, "NET-0001"
    return close_code, f"{error.code}: {error.message}".encode()[:123].decode(errors="ignore")


class Renderer:
    """One stream's daemon events -> Deepgram messages (JSON-ready dicts), in order.

    partial -> interim Results (with `interim_results`); final -> Results `is_final`, `speech_final` when it
    closes an utterance at a pause (`from_finalize` instead when a Finalize caused it); the first text of an
    utterance -> SpeechStarted (with `vad_events`); the utterance's end -> UtteranceEnd (with
    `utterance_end_ms`); end -> Metadata. ready -> nothing: Deepgram sends nothing on open.
    """

    def __init__(self, options: Options, request_id: str, model_name: str, created: datetime | None = None):
        self.options = options
        self.request_id = request_id
        self.model_name = model_name
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"uadf-stream/{model_name}"))
        self.diarizer_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, "uadf-stream/resemblyzer-ge2e-online"))
        self._diarized = False  # a word with a speaker was sent: Results name the diarizer (metadata.diarize_info)
        self.created = created or datetime.now(timezone.utc)
        self._audio = hashlib.sha256()
        self._finalize_pending = False
        self._in_speech = False
        self._last_word_end: float | None = None
        self._last_final_end = 0.0

    def observe_audio(self, data: bytes) -> None:
        """Each binary frame as received, for Metadata's sha256."""
        self._audio.update(data)

    def finalize_requested(self) -> None:
        """The client sent Finalize: the utterance end it causes is `from_finalize`, not `speech_final`."""
        self._finalize_pending = True

    def finalize_done(self) -> list[dict[str, Any]]:
        """After a Finalize's decode: nothing if its endpoint was rendered, else an empty `from_finalize` final."""
        if not self._finalize_pending:
            return []
        self._finalize_pending = False
        at = self._last_final_end
        return [self._results(at, at, "", [], True, False, True)]

    def configure(self, message: Configure) -> dict[str, Any]:
        """Apply a Configure's formatting features (its keyterms go to the session) and answer it."""
        for name in ("punctuate", "smart_format"):
            if name in message.features:
                setattr(self.options, name, message.features[name])
        return {"type": "ConfigureSuccess", "request_id": self.request_id}

    def configure_failure(self, description: str) -> dict[str, Any]:
        """A Configure refused (keyterms past the daemon's limits): the stream goes on with what it had."""
        return {"type": "ConfigureFailure", "request_id": self.request_id, "code": "INVALID_KEYTERMS", "description": description}

    def render(self, message: ServerMessage) -> list[dict[str, Any]]:
        if isinstance(message, Partial):
            out = self._speech_started(message.start, message.text)
            if self.options.interim_results:
                out.append(self._results(message.start, message.end, message.text, [], is_final=False))
            return out
        if isinstance(message, Final):
            return self._final(message)
        if isinstance(message, End):
            return [self.metadata(message.audio_seconds)]
        if isinstance(message, Error):
            return [{"type": "Error", "variant": message.code, "description": message.message}]
        if isinstance(message, Ready):
            return []
        raise TypeError(f"no Deepgram rendering for {type(message).__name__}")

    def metadata(self, duration: float) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self._audio.hexdigest(),
            "created": self.created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.created.microsecond // 1000:03d}Z",
            "duration": round(duration, 3),
            "channels": self.options.raw.channels,
            "models": [self.model_uuid],
            "model_info": {self.model_uuid: self._model_info()},
            "warnings": self.options.warnings,
        }

    # -- internals --------------------------------------------------------------------------------------
    def _final(self, final: Final) -> list[dict[str, Any]]:
        out = self._speech_started(final.start, final.text)
        words = [
            {
                "word": plain_word(w.word),
                "start": round(w.start, 3),
                "end": round(w.end, 3),
                "confidence": round(w.probability, 4),
                **({"punctuated_word": w.word.strip()} if self.options.formatted else {}),
                **({"speaker": w.speaker} if w.speaker is not None else {}),
            }
            for w in final.words
        ]
        self._diarized = self._diarized or final.speaker is not None
        if words:
            self._last_word_end = words[-1]["end"]
        self._last_final_end = final.end
        from_finalize = final.endpoint and self._finalize_pending
        speech_final = final.endpoint and not from_finalize and self.options.endpointing_ms is not None
        out.append(self._results(final.start, final.end, final.text, words, True, speech_final, from_finalize))
        if final.endpoint:
            if self.options.utterance_end_ms is not None and self._in_speech and self._last_word_end is not None:
                out.append({"type": "UtteranceEnd", "channel": CHANNEL_INDEX, "last_word_end": self._last_word_end})
            self._in_speech = False
            self._finalize_pending = False
            self._last_word_end = None
        return out

    def _speech_started(self, start: float, text: str) -> list[dict[str, Any]]:
        if self._in_speech or not text:
            return []
        self._in_speech = True
        return [{"type": "SpeechStarted", "channel": [0], "timestamp": round(start, 3)}] if self.options.vad_events else []

    def _transcript(self, text: str, words: list[dict[str, Any]]) -> str:
        if self.options.formatted:
            return text
        return " ".join(w["word"] for w in words) if words else " ".join(filter(None, map(plain_word, text.split())))

    def _results(
        self,
        start: float,
        end: float,
        text: str,
        words: list[dict[str, Any]],
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        confidence = sum(w["confidence"] for w in words) / len(words) if words else 0.0
        metadata: dict[str, Any] = {"request_id": self.request_id, "model_info": self._model_info(), "model_uuid": self.model_uuid}
        if self._diarized:
            metadata["diarize_info"] = {"model_uuid": self.diarizer_uuid, "arch": "ge2e-online"}
        if self.options.extra:
            metadata["extra"] = self.options.extra
        return {
            "type": "Results",
            "channel_index": CHANNEL_INDEX,
            "duration": round(max(end - start, 0.0), 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": self._transcript(text, words), "confidence": round(confidence, 4), "words": words}]},
            "metadata": metadata,
        }

    def _model_info(self) -> dict[str, str]:
        return {"name": self.model_name, "version": "uadf-stream", "arch": "whisper"}

"""Protocol v1: every message on the wire, with its validation. Used by the server and the clients."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from core.types import Mode, Word
from streamer.audio import AudioFormat
from streamer.errors import StreamError

PROTOCOL_VERSION = 1
SESSION_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
MAX_SPEAKERS = 32  # the most speakers a session may ask to tell apart (`max_speakers`)


def valid_session_id(value: object) -> bool:
    return isinstance(value, str) and SESSION_ID.fullmatch(value) is not None


# -- client -> server -----------------------------------------------------------------------------
@dataclass
class Start:
    type: ClassVar[str] = "start"
    format: AudioFormat
    mode: Mode | None = None
    session_id: str | None = None
    resume_from: int = 0
    language: str | None = None
    resume_token: str | None = field(default=None, repr=False)  # the session's resume secret (from its `ready`)
    keyterms: list[str] = field(default_factory=list)  # the meeting's words to favour (names, products, jargon)
    context: str | None = None  # the meeting's notes (agenda, glossary), for the fusion LLM
    endpoint_silence: float | None = None  # seconds of silence that end an utterance (None: streaming.endpoint_silence)
    # Speaker labels (None: the daemon's [speakers] settings)
    diarize: bool | None = None
    max_speakers: int | None = None
    speaker_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "start",
            "sample_rate": self.format.sample_rate,
            "encoding": self.format.encoding,
            "channels": self.format.channels,
        }
        for key in ("mode", "session_id", "resume_token", "language"):
            if getattr(self, key) is not None:
                out[key] = str(getattr(self, key))
        if self.resume_from:
            out["resume_from"] = self.resume_from
        if self.keyterms:
            out["keyterms"] = list(self.keyterms)
        if self.context:
            out["context"] = self.context
        for key in ("diarize", "max_speakers", "speaker_threshold"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class Context:
    """Mid-stream: replaces the session's keyterms and notes (both; a field left out is emptied)."""

    type: ClassVar[str] = "context"
    keyterms: list[str] = field(default_factory=list)
    context: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "context", "keyterms": list(self.keyterms), "context": self.context}


@dataclass
class Finalize:
    """Commit everything pending now, as at a pause (e.g. push-to-talk released)."""

    type: ClassVar[str] = "finalize"


@dataclass
class KeepAlive:
    type: ClassVar[str] = "keepalive"  # resets the idle timer, nothing else


@dataclass
class Stop:
    """End of audio: flush everything into finals, send `end`, close normally."""

    type: ClassVar[str] = "stop"


@dataclass
class Audio:
    """A frame of the client's audio (binary in protocol v1; other APIs may carry it in JSON)."""

    type: ClassVar[str] = "audio"
    data: bytes


ClientMessage = Start | Context | Finalize | KeepAlive | Stop | Audio
_SIMPLE = {"finalize": Finalize, "keepalive": KeepAlive, "stop": Stop}


def _field(obj: dict, key: str, kind: type | tuple, required: bool = False, code: str = "bad_message") -> Any:
    if key not in obj:
        if required:
            raise StreamError(code, f"start needs {key!r}")
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise StreamError(code, f"{key!r} has the wrong type: {type(value).__name__}")
    return value


# What a client may tell about its meeting (Deepgram's `keyterm` allows 100 terms): bounded, so that Whisper's
# prompt, the keyterm trie and the LLM's prefix stay small.
MAX_KEYTERMS = 100
MAX_KEYTERM_CHARS = 50  # a word or a short phrase
MAX_CONTEXT_WORDS = 2000
MAX_CONTEXT_CHARS = 20000


def parse_meeting(obj: dict) -> tuple[list[str], str]:
    """(keyterms, context) of a `start` or `context` message, validated: `bad_keyterms` or `bad_context`."""
    keyterms = obj.get("keyterms")
    keyterms = [] if keyterms is None else keyterms  # null: none
    if not isinstance(keyterms, list):
        raise StreamError("bad_keyterms", f"'keyterms' must be a list of strings, got {type(keyterms).__name__}")
    if len(keyterms) > MAX_KEYTERMS:
        raise StreamError("bad_keyterms", f"at most {MAX_KEYTERMS} keyterms, got {len(keyterms)}")
    terms = []
    for k, term in enumerate(keyterms):
        if not isinstance(term, str) or not term.strip():
            raise StreamError("bad_keyterms", f"keyterm {k} must be a non-empty string")
        term = " ".join(term.split())
        if len(term) > MAX_KEYTERM_CHARS:
            raise StreamError("bad_keyterms", f"keyterm {k} has {len(term)} characters; at most {MAX_KEYTERM_CHARS}")
        terms.append(term)
    context = obj.get("context")
    context = "" if context is None else context
    if not isinstance(context, str):
        raise StreamError("bad_context", f"'context' must be a string, got {type(context).__name__}")
    words = len(context.split())
    if words > MAX_CONTEXT_WORDS or len(context) > MAX_CONTEXT_CHARS:
        raise StreamError(
            "bad_context", f"'context' has {words} words, {len(context)} characters; at most {MAX_CONTEXT_WORDS} words, "
            f"{MAX_CONTEXT_CHARS} characters"
        )
    return list(dict.fromkeys(terms)), context.strip()


def parse_client_message(text: str) -> ClientMessage:
    """Parse one text frame; raise StreamError with a stable code when it is not a valid v1 message."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise StreamError("bad_message", f"text frames must be JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise StreamError("bad_message", "text frames must be JSON objects")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise StreamError("bad_message", "message needs a string 'type'")
    if kind in _SIMPLE:
        return _SIMPLE[kind]()
    if kind == "context":
        keyterms, context = parse_meeting(obj)
        return Context(keyterms=keyterms, context=context)
    if kind != "start":
        raise StreamError("unknown_type", f"unknown message type {kind[:40]!r}")
    rate = _field(obj, "sample_rate", int, True, "bad_sample_rate")
    encoding = _field(obj, "encoding", str, True, "bad_encoding")
    channels = _field(obj, "channels", int, True, "bad_channels")
    fmt = AudioFormat(sample_rate=rate, encoding=encoding, channels=channels)
    fmt.validate()
    mode = _field(obj, "mode", str, code="bad_mode")
    if mode is not None and mode not in Mode.names():
        raise StreamError("bad_mode", f"mode must be one of {Mode.names()}, got {mode[:40]!r}")
    session_id = _field(obj, "session_id", str)
    if session_id is not None and not valid_session_id(session_id):
        raise StreamError("bad_message", "session_id must be the 32 lowercase hex digits of a `ready`")
    resume_token = _field(obj, "resume_token", str)
    resume_from = _field(obj, "resume_from", int) or 0
    if resume_from < 0:
        raise StreamError("bad_message", "resume_from must be >= 0")
    language = _field(obj, "language", str)
    if language not in (None, "", "en"):
        raise StreamError("bad_message", f"language {language[:20]!r} is not served (only 'en')")
    keyterms, context = parse_meeting(obj)
    diarize, max_speakers, threshold = _speaker_fields(obj)
    return Start(
        format=fmt, mode=Mode(mode) if mode else None, session_id=session_id, resume_from=resume_from, language=language,
        resume_token=resume_token, keyterms=keyterms, context=context or None, diarize=diarize, max_speakers=max_speakers,
        speaker_threshold=threshold,
    )


def _speaker_fields(obj: dict) -> tuple[bool | None, int | None, float | None]:
    """`diarize`, `max_speakers`, `speaker_threshold` of a start; StreamError(bad_speakers) when one is off."""
    diarize = obj.get("diarize")
    if diarize is not None and not isinstance(diarize, bool):
        raise StreamError("bad_speakers", "'diarize' must be true or false")
    max_speakers = _field(obj, "max_speakers", int, code="bad_speakers")
    if max_speakers is not None and not 1 <= max_speakers <= MAX_SPEAKERS:
        raise StreamError("bad_speakers", f"max_speakers must be from 1 to {MAX_SPEAKERS}")
    threshold = _field(obj, "speaker_threshold", (int, float), code="bad_speakers")
    if threshold is not None and not 0.0 < threshold < 1.0:  # a cosine similarity; NaN fails too
        raise StreamError("bad_speakers", "speaker_threshold must be a number between 0 and 1")
    return diarize, max_speakers, None if threshold is None else float(threshold)


# -- server -> client -----------------------------------------------------------------------------
@dataclass
class Partial:
    """The current guess at the words after the last final; replaced by the next partial."""

    type: ClassVar[str] = "partial"
    segment: int
    text: str
    start: float
    end: float


@dataclass
class Final:
    """Words that will never change; segments are numbered from 0 without gaps."""

    type: ClassVar[str] = "final"
    segment: int
    text: str
    start: float
    end: float
    endpoint: bool = False
    # With speaker labels (else left out on the wire): the first word's speaker, and whether its words
    # change speaker inside (each word has its own `speaker`)
    speaker: int | None = None
    speaker_change: bool = False
    words: list[Word] = field(default_factory=list)  # stripped of Whisper's leading space
    # The same words with Whisper's own times (`words` are fitted to the speech, streamer/word_times.py): what the
    # speaker labeller judges runs on. Not sent, not stored, not compared.
    aligned: list[Word] = field(default_factory=list, compare=False, repr=False)


@dataclass
class Ready:
    """The answer to `start`: the session's id and resume secret (keep both to resume) and what serves it."""

    type: ClassVar[str] = "ready"
    session_id: str
    mode: Mode
    model: str
    sample_rate: int  # of the client's audio, as in its start
    resumed: bool = False
    stream_time: float = 0.0  # where the session's clock continues (a resume)
    protocol: int = PROTOCOL_VERSION
    resume_token: str = field(default="", repr=False)  # required with session_id to resume or read the transcript


@dataclass
class End:
    """The answer to `stop`, after the last final."""

    type: ClassVar[str] = "end"
    session_id: str
    finals: int
    audio_seconds: float


@dataclass
class Error:
    """A stable `code` and a readable message; fatal codes are followed by a close."""

    type: ClassVar[str] = "error"
    code: str
    message: str


ServerMessage = Partial | Final | Ready | End | Error


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 3) if math.isfinite(obj) else None
    if isinstance(obj, list):
        return [_round(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


def to_dict(message: ServerMessage) -> dict[str, Any]:
    out = {"type": message.type, **_round(asdict(message))}
    if isinstance(message, Final):  # speaker fields only where speakers are labelled: otherwise as before them
        del out["aligned"]
        if out["speaker"] is None:
            del out["speaker"]
        if not out["speaker_change"]:
            del out["speaker_change"]
        for word in out["words"]:
            if word["speaker"] is None:
                del word["speaker"]
    return out


def to_json(message: ServerMessage) -> str:
    return json.dumps(to_dict(message), ensure_ascii=False)


def final_from_dict(obj: dict[str, Any]) -> Final:
    """Rebuild a Final from its wire/JSONL form (transcript store, clients)."""
    return Final(
        segment=obj["segment"],
        text=obj["text"],
        start=obj["start"],
        end=obj["end"],
        endpoint=obj.get("endpoint", False),
        speaker=obj.get("speaker"),
        speaker_change=obj.get("speaker_change", False),
        words=[Word(**w) for w in obj.get("words", [])],
    )

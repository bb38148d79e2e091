"""OpenAI's transcription API (`POST /v1/audio/transcriptions`, `GET /v1/models`): form fields -> a request,
the finals of one streamed-through upload -> each `response_format`, server-sent events for `stream=true`, and
OpenAI's error shape. Pure: no sockets. Shapes as the official SDK (openai 3.57) parses them; see docs/compat.md.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.types import Mode
from streamer.formats import Cue, cues, to_srt, to_vtt
from streamer.protocol import Final

PATH = "/v1/audio/transcriptions"
MODELS_PATH = "/v1/models"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
GRANULARITIES = ("segment", "word")
CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json", "diarized_json": "application/json",
                 "text": "text/plain", "srt": "text/plain", "vtt": "text/plain"}  # OpenAI answers srt and vtt as text/plain too
DIARIZE_MODEL = "gpt-4o-transcribe-diarize"  # OpenAI's diarizing model: asking for it turns speaker labels on
# Accepted and without effect: field -> why (the warning).
IGNORED = {
    "chunking_strategy": "audio is cut at the daemon's own VAD endpoints",
    "known_speaker_names": "known speakers are not matched: speakers are named A, B, ... in order of appearance",
    "known_speaker_references": "known speakers are not matched: speakers are named A, B, ... in order of appearance",
    "languages": "only English is served",
}


class APIError(Exception):
    """An error answered in OpenAI's shape; the SDK raises the matching class (401: AuthenticationError,
    400: BadRequestError, 413: APIStatusError, 429: RateLimitError, after its retries)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """`x-should-retry: false` where a retry cannot help (the SDK retries 408/409/429/5xx by default);
        `retry-after` where it can (the SDK waits that long)."""
        if self.retry_after is not None:
            return {"retry-after": str(max(1, math.ceil(self.retry_after)))}
        return {"x-should-retry": "false"}


def unauthorized(given: str | None) -> APIError:
    if not given:
        return APIError(401, "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.", code="invalid_api_key")
    hint = given[:3] + "..." + given[-4:] if len(given) > 10 else "***"
    return APIError(401, f"Incorrect API key provided: {hint}.", code="invalid_api_key")


def busy(retry_after: float) -> APIError:
    """The daemon's session limit: 429 with Retry-After, which the SDK honours in its retries."""
    return APIError(
        429, "the server is transcribing as many streams as it can; try again shortly", code="rate_limit_exceeded", retry_after=retry_after
    )


@dataclass
class TranscriptionRequest:
    """The form fields of one request (the `file` part is decoded separately, see streamer.media)."""

    model: str
    mode: str | None = None  # a daemon mode named as `model`, else the daemon's default
    language: str | None = None
    prompt: str | None = None  # context for the decoder (the meeting-context issue)
    response_format: str = "json"
    granularities: tuple[str, ...] = ("segment",)
    stream: bool = False
    logprobs: bool = False  # include[]=logprobs: word probabilities as logprobs
    keyterms: list[str] = field(default_factory=list)  # keywords[]
    diarize: bool = False  # model gpt-4o-transcribe-diarize or response_format diarized_json: speaker labels
    warnings: list[str] = field(default_factory=list)


def _list_field(name: str) -> str:
    return name[:-2] if name.endswith("[]") else name


def parse_fields(fields: Iterable[tuple[str, str]]) -> TranscriptionRequest:
    """The multipart form's text fields, in order (lists as the SDK sends them: `timestamp_granularities[]`,
    `include[]`, `keywords[]`; `chunking_strategy[type]` for an object) -> a request. Raises APIError(400)."""
    single: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    warnings: list[str] = []
    for raw_name, value in fields:
        name = raw_name.split("[", 1)[0] if "[" in raw_name and not raw_name.endswith("[]") else raw_name
        if name in IGNORED or _list_field(name) in IGNORED:
            message = f"{_list_field(name)} ignored: {IGNORED[_list_field(name)]}"
            if message not in warnings:
                warnings.append(message)
        elif raw_name.endswith("[]") or name in ("timestamp_granularities", "include", "keywords"):
            lists.setdefault(_list_field(name), []).append(value)
        else:
            single[name] = value

    model = single.pop("model", "")
    if not model:
        raise APIError(400, "you must provide a model parameter", param="model")
    mode = Mode(model) if model in Mode.names() else None

    language = single.pop("language", None)
    if language is not None and language.lower() != "en" and not language.lower().startswith("en-"):
        raise APIError(400, f"language {language[:20]!r} is not served: only English ('en')", param="language", code="unsupported_language")

    response_format = single.pop("response_format", "json")
    if response_format not in RESPONSE_FORMATS:
        raise APIError(400, f"response_format must be one of {list(RESPONSE_FORMATS)}, got {response_format[:30]!r}", param="response_format")

    granularities = tuple(lists.pop("timestamp_granularities", []) or ["segment"])
    if bad := [g for g in granularities if g not in GRANULARITIES]:
        raise APIError(400, f"timestamp_granularities[] must be segment or word, got {bad[0][:20]!r}", param="timestamp_granularities")
    if "word" in granularities and response_format != "verbose_json":
        raise APIError(400, "timestamp_granularities[] needs response_format verbose_json", param="timestamp_granularities")

    stream = single.pop("stream", "false").lower()
    if stream not in ("true", "false"):
        raise APIError(400, f"stream must be true or false, got {stream[:20]!r}", param="stream")
    if stream == "true" and response_format not in ("json", "text"):
        raise APIError(400, "stream=true is served with response_format json or text", param="stream")

    if "temperature" in single:
        try:
            temperature = float(single.pop("temperature"))
        except ValueError:
            raise APIError(400, "temperature must be a number", param="temperature") from None
        if not 0.0 <= temperature <= 1.0:
            raise APIError(400, "temperature must be from 0 to 1", param="temperature")
        if temperature > 0:
            warnings.append("temperature ignored: decoding is greedy")

    include = lists.pop("include", [])
    prompt = single.pop("prompt", None) or None
    keyterms = lists.pop("keywords", [])
    warnings += [f"include[] {item[:30]!r} ignored" for item in include if item != "logprobs"]
    warnings += [f"{name} is not a transcription parameter; ignored" for name in (*single, *lists)]
    return TranscriptionRequest(
        model=model,
        mode=mode,
        language=language,
        prompt=prompt,
        response_format=response_format,
        granularities=granularities,
        stream=stream == "true",
        logprobs="logprobs" in include,
        keyterms=keyterms,
        diarize=model == DIARIZE_MODEL or response_format == "diarized_json",
        warnings=warnings,
    )


# -- responses ----------------------------------------------------------------------------------------------
def transcript(finals: list[Final]) -> str:
    """The transcript: the finals' texts joined with single spaces (as protocol v1 defines it)."""
    return " ".join(f.text for f in finals if f.text)


def _usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration)}


def _logprobs(finals: list[Final]) -> list[dict[str, Any]]:
    """Word probabilities as OpenAI logprobs entries (one a word: the daemon scores words, not tokens)."""
    return [
        {"token": w.word.strip(), "logprob": round(math.log(max(w.probability, 1e-12)), 6), "bytes": list(w.word.strip().encode())}
        for f in finals
        for w in f.words
    ]


def speaker_letter(label: int | None) -> str:
    """OpenAI's speaker names: A, B, ..., Z, AA, AB, ... in order of appearance ("unknown" for an unlabelled word)."""
    if label is None:
        return "unknown"
    name = ""
    label += 1
    while label:
        label, rest = divmod(label - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def _speaker(label: int | None) -> dict[str, str]:
    """`speaker` for verbose_json where speakers are labelled (an extra field: OpenAI's Whisper shape has none)."""
    return {} if label is None else {"speaker": speaker_letter(label)}


def _segment(index: int, cue: Cue) -> dict[str, Any]:
    data = cue.text.encode()
    words = cue.words
    return {
        "id": index,
        "seek": int(round(cue.start * 100)),  # Whisper counts seek in 10 ms frames
        "start": round(cue.start, 3),
        "end": round(cue.end, 3),
        "text": " " + cue.text,  # Whisper's segments start with the space that separates them
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": round(sum(math.log(max(w.probability, 1e-12)) for w in words) / len(words), 6) if words else 0.0,
        "compression_ratio": round(len(data) / len(zlib.compress(data)), 6) if data else 0.0,
        "no_speech_prob": 0.0,
        **_speaker(cue.speaker),
    }


def _diarized_segment(index: int, cue: Cue) -> dict[str, Any]:
    """A segment of `diarized_json` (OpenAI's `TranscriptionDiarizedSegment`): one speaker's part of an utterance."""
    return {"type": "transcript.text.segment", "id": f"seg_{index}", "start": round(cue.start, 3), "end": round(cue.end, 3),
            "text": cue.text, "speaker": speaker_letter(cue.speaker)}


def _word(word: str) -> str:
    """OpenAI's word timestamps carry the word without the punctuation around it."""
    return word.strip().strip(".,!?;:\"()[]…“”")


def render(request: TranscriptionRequest, finals: list[Final], duration: float) -> tuple[str, str]:
    """The whole response body and its content type, for a non-streamed request."""
    text = transcript(finals)
    fmt = request.response_format
    if fmt == "text":
        return text + "\n", CONTENT_TYPES[fmt]
    if fmt == "srt":
        return to_srt(finals), CONTENT_TYPES[fmt]
    if fmt == "vtt":
        return to_vtt(finals), CONTENT_TYPES[fmt]
    if fmt == "json":
        body: dict[str, Any] = {"text": text, "usage": _usage(duration)}
        if request.logprobs:
            body["logprobs"] = _logprobs(finals)
        return json.dumps(body, ensure_ascii=False), CONTENT_TYPES[fmt]
    if fmt == "diarized_json":
        body = {"task": "transcribe", "duration": round(duration, 3), "text": text,
                "segments": [_diarized_segment(i, c) for i, c in enumerate(cues(finals))], "usage": _usage(duration)}
        return json.dumps(body, ensure_ascii=False), CONTENT_TYPES[fmt]
    body = {"task": "transcribe", "language": "english", "duration": round(duration, 3), "text": text}
    if "segment" in request.granularities:
        body["segments"] = [_segment(i, c) for i, c in enumerate(cues(finals))]
    if "word" in request.granularities:
        body["words"] = [{"word": _word(w.word), "start": round(w.start, 3), "end": round(w.end, 3), **_speaker(w.speaker)}
                         for f in finals for w in f.words if _word(w.word)]
    body["usage"] = _usage(duration)
    return json.dumps(body, ensure_ascii=False), CONTENT_TYPES[fmt]


class EventStream:
    """`stream=true`: server-sent events, one `transcript.text.delta` per final as it comes (finals are never
    revised, so deltas only append), then `transcript.text.done` with the whole text."""

    content_type = "text/event-stream"

    def __init__(self, request: TranscriptionRequest):
        self.request = request
        self._finals: list[Final] = []

    def delta(self, final: Final) -> bytes:
        """The event for one final; b"" for a final without text (an endpoint marker)."""
        if not final.text:
            return b""
        event: dict[str, Any] = {"type": "transcript.text.delta", "delta": (" " if transcript(self._finals) else "") + final.text}
        self._finals.append(final)
        if self.request.logprobs:
            event["logprobs"] = _logprobs([final])
        return _sse(event)

    def done(self) -> bytes:
        event: dict[str, Any] = {"type": "transcript.text.done", "text": transcript(self._finals)}
        if self.request.logprobs:
            event["logprobs"] = _logprobs(self._finals)
        return _sse(event)

    @staticmethod
    def error(error: APIError) -> bytes:
        """A failure after the 200 went out: the SDK raises APIError on an event carrying `error`."""
        return _sse(error.body())


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def models(model_name: str, modes: Iterable[str], created: int) -> dict[str, Any]:
    """`GET /v1/models`: the loaded ASR model, and each session mode (usable as `model` to choose it)."""
    ids = [model_name, *modes]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "uadf-stream"} for i in ids]}

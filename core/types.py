"""Records shared by the daemon, the fusion decoders, the clients and the tools, defined once.

Plain dataclasses, free of heavy imports, so that the clients and the protocol can use them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Sequence

import numpy as np

SAMPLE_RATE = 16000  # Hz of the audio inside the daemon (Whisper's rate)


class Mode(StrEnum):
    """How a session's windows are decoded: plain Whisper, or Whisper fused with an LLM (see fusion/)."""

    ASR = "asr"
    SHALLOW = "shallow"  # log-linear fusion with a fixed LLM weight at every step
    UADF = "uadf"  # uncertainty-aware dynamic fusion, the ASR leading
    UADF_LLM = "uadf-llm"  # the LLM leading over the ASR's N-best (experimental)

    @property
    def fused(self) -> bool:
        """Whether this mode needs an LLM."""
        return self is not Mode.ASR

    @classmethod
    def names(cls) -> list[str]:
        return [m.value for m in cls]


@dataclass
class Word:
    """A recognised word with stream-time bounds. Inside the pipeline `word` keeps Whisper's leading
    space ("181", ".8" are one written word); on the wire it is stripped."""

    word: str
    start: float
    end: float
    probability: float
    fused: bool = False
    speaker: int | None = None  # who said it (0, 1, ... in order of appearance) when the session labels speakers


@dataclass(frozen=True)
class MeetingContext:
    """What a session knows about its meeting beforehand: keyterms (participants' names, products, jargon)
    and free-text notes (agenda, glossary). Whisper gets the keyterms in its prompt; the fusion LLM gets
    both as a session prefix."""

    keyterms: tuple[str, ...] = ()
    notes: str = ""

    def __bool__(self) -> bool:
        return bool(self.keyterms or self.notes.strip())


@dataclass
class SpanVerdicts:
    """A stream's keyterm respellings already scored: (span's words, keyterm, stream time the span starts, how
    much more likely Whisper found the keyterm). The next windows re-decode the same words until they are final;
    a span found again (same words and keyterm, within `NEAR` s) is not scored again (first 45 clips of
    speech-dev-hard at N = 100: 484 candidates were 132 spans)."""

    NEAR = 0.3
    entries: list[tuple[str, str, float, float]] = field(default_factory=list)

    def get(self, span: str, term: str, start: float) -> float | None:
        return next((g for s, t, at, g in self.entries if s == span and t == term and abs(at - start) <= self.NEAR), None)

    def put(self, span: str, term: str, start: float, gain: float) -> None:
        self.entries.append((span, term, start, gain))

    def forget_before(self, time: float) -> None:
        """Spans starting before `time` are final: no window will score them again."""
        self.entries = [e for e in self.entries if e[2] >= time]


@dataclass
class WindowRequest:
    """Audio to transcribe, where it starts and ends in the stream, and what to condition on."""

    audio: np.ndarray
    offset: float  # stream time of audio[0]
    end: float  # stream time the window ends at (what the processor asked for)
    prompt: str = ""  # committed text before the window, for Whisper's prompt
    keyterms: tuple[str, ...] = ()  # the session's keyterms spelled close to the words heard before: Whisper's prompt (keyterm_spans_only off)
    # the session's keyterms that a window's words may spell (with the committed words before it): a committing window
    # respells look-alikes of those, so the first window of a stream (a file sent at once: the only one) has them too
    keyterms_for: Callable[[Sequence[str]], tuple[str, ...]] | None = None
    mode: Mode = Mode.ASR
    context: Any = None  # the decoder's per-stream state (fusion: the LLM context), from TokenDecoder.new_context
    prefix: str = ""  # the window's words that are final already: a fusion decoder forces them, not re-decides them
    final: bool = False  # an endpoint window: what it decodes becomes final
    commits: bool = False  # the window may commit words (endpoint windows and the commit policy's windows)
    settled: float = 0.0  # stream time its words final already end at (keyterm respelling looks only after it)
    verdicts: SpanVerdicts | None = None  # the stream's keyterm respellings scored so far (with keyterms)


@dataclass
class DecodeResult:
    """One window's text tokens (no specials), which of them fusion chose, and the ASR's confidence."""

    tokens: list[int]
    fused: list[bool]
    avg_logprob: float
    no_speech_prob: float
    llm_calls: int = 0
    fallback: bool = False  # the mode's decoder raised: decoded by plain ASR instead


@dataclass
class Hypothesis:
    """A window's transcript with stream-time word timings."""

    words: list[Word]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    llm_calls: int = 0
    tokens: int = 0
    fused_tokens: int = 0
    fallback: bool = False  # decoded by plain ASR because the mode's decoder raised


@dataclass
class FusionOptions:
    """The `[fusion]` table of config.toml: how the ASR and an LLM are combined.

    gate: entropy threshold in nats on the calibrated ASR distribution; None takes the calibration
    file's value. top_k / min_candidate_prob bound the ASR candidates the LLM may choose among.
    shallow_weight: the fixed LLM weight of `shallow` mode (log-linear). context_tokens bounds the
    LLM context (committed transcript) so its KV cache stays small. span_tokens: how far the ASR
    may run a candidate until its words rejoin the ASR's path (else the candidate is not compared).
    """

    mode: Mode = Mode.ASR  # default session mode when an LLM is loaded
    llm: str = ""  # none: asr only; "smollm2", "gemma3-270m", a GGUF file, folder or local hub id
    calibration: str | None = None
    gate: float | None = None
    top_k: int = 4
    min_candidate_prob: float = 0.02
    shallow_weight: float = 0.3
    context_tokens: int = 200
    span_tokens: int = 10
    min_context_words: int = 3  # the LLM's guess at an utterance's first words is only its prior
    cache_dir: str = "~/.cache/uadf-stream/llm"
    device: str = "auto"
    quantize: bool = True  # int8 dynamic quantization of the LLM's linear layers on CPU (~3.5x faster)
    threads: int = 1  # torch threads for the LLM; 1 is fastest on a shared small CPU

    def __post_init__(self) -> None:
        try:
            self.mode = Mode(self.mode)
        except ValueError:
            raise ValueError(f"fusion.mode must be one of {Mode.names()}, got {self.mode!r}") from None
        if self.top_k < 1:
            raise ValueError("fusion.top_k must be >= 1")

"""The two plug points of the decoding path, as protocols.

`AsrBackend`: a loaded acoustic model that transcribes a batch of windows (encode, decode with the token
decoder of each window's mode, align words). `TokenDecoder`: turns an encoded window into text tokens:
plain greedy decoding (streamer/greedy.py) or an LLM-fused decoder (fusion/). The daemon knows decoders
only through this protocol; a decoder knows the backend only through `AsrBackend`.

A second ASR backend is a new module implementing `AsrBackend`; a new decoder is a module implementing
`TokenDecoder`, offered to the daemon by a factory registered under the entry-point group
`uadf_stream.decoders` (see pyproject.toml and docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from core.types import DecodeResult, FusionOptions, Hypothesis, MeetingContext, Mode, WindowRequest

DECODER_PLUGINS = "uadf_stream.decoders"  # entry-point group of decoder factories


@dataclass
class DecodeTask:
    """One window for a token decoder: Whisper's prompt tokens, the tokens to force first, the length
    bound (prompt included, as CTranslate2 counts it) and the stream's decoder state."""

    prompt: list[int]
    max_length: int
    prefix: list[int] = field(default_factory=list)
    context: DecoderContext | None = None


class DecoderContext(Protocol):
    """A decoder's per-stream state (fusion: the committed transcript in the LLM's KV cache)."""

    def commit(self, text: str) -> None:
        """Text that became final in the stream."""

    def set_meeting(self, meeting: MeetingContext) -> None:
        """The session's keyterms and notes (at the start, or replaced mid-stream)."""


class TokenDecoder(Protocol):
    def new_context(self, meeting: MeetingContext = MeetingContext()) -> DecoderContext | None:
        """Per-stream state handed back in every DecodeTask of that stream (None when stateless)."""

    def decode(self, encoder_output: np.ndarray, tasks: Sequence[DecodeTask]) -> list[DecodeResult]:
        """Decode a batch: encoder_output[i] belongs to tasks[i]."""


class AsrBackend(Protocol):
    model_name: str
    device: str
    model: Any  # the step model decoders drive (CTranslate2 Whisper: generate with logits, forced prefixes)
    tokenizer: Any  # faster-whisper Tokenizer of that model
    silence: np.ndarray  # encoder output of 30 s of silence, [1, frames, d_model]

    def encode(self, audios: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Encoder output [B, frames, d_model] and the frames holding audio, per window."""

    def prompt_tokens(self, text: str, keyterms: Sequence[str] = ()) -> list[int]:
        """The decoder prompt: keyterms and previous text (bounded) and the start-of-transcript sequence."""

    def transcribe(self, requests: Sequence[WindowRequest], decoder_for: Callable[[Mode], TokenDecoder]) -> list[Hypothesis]:
        """Encode, decode each window with its mode's decoder, align words to stream time."""


DecoderFactory = Callable[[AsrBackend, FusionOptions], dict[Mode, TokenDecoder]]
"""What a decoder plugin registers: the decoders it offers, keyed by the modes they serve."""

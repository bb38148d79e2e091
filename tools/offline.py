"""Whole-file decoding through FusionDecoder, for calibration and offline evaluation.

Windows of up to 30 s are encoded by the streaming backend (its cheap short-window encoding) and
decoded in order, each committed to the LLM context and passed to Whisper as previous text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer

from core.types import SAMPLE_RATE, Mode
from fusion.decoder import FusionDecoder
from streamer.whisper_backend import MAX_SECONDS, WhisperBackend

WINDOW = int(MAX_SECONDS * SAMPLE_RATE)


@dataclass
class OfflineResult:
    """Text of one file, the words fusion changed, and decode statistics."""

    text: str
    words: list[tuple[str, bool]] = field(default_factory=list)  # (word, fused)
    tokens: int = 0
    changed: int = 0
    llm_calls: int = 0
    seconds: float = 0.0


class OfflineTranscriber:
    """Encodes windows once (cached by key) with the streaming backend and decodes them in any mode."""

    def __init__(self, backend: WhisperBackend, decoder: FusionDecoder) -> None:
        self.backend = backend
        self.decoder = decoder
        self.tokenizer: Tokenizer = decoder.tokenizer
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def encoder_output(self, audio: np.ndarray, key: tuple[str, int] | None = None) -> ctranslate2.StorageView:
        enc = self._cache.get(key) if key is not None else None
        if enc is None:
            enc = self.backend.encode([audio])[0]
            if key is not None:
                self._cache[key] = enc
        return ctranslate2.StorageView.from_array(enc)

    def transcribe(self, audio: np.ndarray, mode: Mode, key: str | None = None) -> OfflineResult:
        tok = self.tokenizer
        context = self.decoder.new_context()
        previous: list[int] = []
        out = OfflineResult(text="")
        start = time.perf_counter()
        for offset in range(0, max(len(audio), 1), WINDOW):
            window = audio[offset : offset + WINDOW]
            enc = self.encoder_output(window, (key, offset) if key is not None else None)
            prompt = self.backend.prompt_tokens(previous)
            res = self.decoder.decode(enc, prompt, context, mode, max_length=448)
            text = tok.decode(res.tokens)
            context.commit(text)
            previous += res.tokens
            out.text = f"{out.text} {text.strip()}".strip()
            out.words += self._words(res.tokens, res.fused)
            out.tokens += len(res.tokens)
            out.changed += sum(res.fused)
            out.llm_calls += res.llm_calls
        out.seconds = time.perf_counter() - start
        return out

    def _words(self, tokens: list[int], fused: list[bool]) -> list[tuple[str, bool]]:
        """Group tokens into words (a token starting with a space opens one)."""
        words: list[tuple[list[int], bool]] = []
        for t, f in zip(tokens, fused):
            if not words or self.decoder.pieces.starts_word(t):
                words.append(([t], f))
            else:
                words[-1] = (words[-1][0] + [t], words[-1][1] or f)
        return [(self.tokenizer.decode(ts).strip(), f) for ts, f in words]

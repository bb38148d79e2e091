"""Whole-file decoding through FusionDecoder, for calibration and offline evaluation.

Windows of up to 30 s are encoded the cheap way the streaming backend does (audio + 0.5 s of
zeros, pasted over the encoding of 30 s of silence) and decoded in order, each committed to the
LLM context and passed to Whisper as previous text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from fusion.decoder import FusionDecoder

SAMPLE_RATE = 16000
WINDOW = 30 * SAMPLE_RATE


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
    """Encodes windows once (cached by key) and decodes them in any mode."""

    def __init__(self, model: WhisperModel, decoder: FusionDecoder) -> None:
        self.model = model
        self.decoder = decoder
        self.tokenizer: Tokenizer = decoder.tokenizer
        self.silence = self._encode(np.zeros(WINDOW, dtype=np.float32))
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def _encode(self, audio: np.ndarray) -> np.ndarray:
        feats = self.model.feature_extractor(np.pad(audio, (0, 8000)), padding=0)
        feats = feats[:, : feats.shape[1] // 2 * 2][:, :3000]
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None]))
        return np.array(self.model.model.encode(view, to_cpu=True))

    def encoder_output(self, audio: np.ndarray, key: tuple[str, int] | None = None) -> ctranslate2.StorageView:
        enc = self._cache.get(key) if key is not None else None
        if enc is None:
            enc = self._encode(audio)
            if key is not None:
                self._cache[key] = enc
        full = self.silence.copy()
        full[:, : enc.shape[1]] = enc[:, :1500]
        return ctranslate2.StorageView.from_array(full)

    def transcribe(self, audio: np.ndarray, mode: str, key: str | None = None) -> OfflineResult:
        tok = self.tokenizer
        context = self.decoder.new_context()
        previous: list[int] = []
        out = OfflineResult(text="")
        start = time.perf_counter()
        for offset in range(0, max(len(audio), 1), WINDOW):
            window = audio[offset : offset + WINDOW]
            enc = self.encoder_output(window, (key, offset) if key is not None else None)
            prompt = [tok.sot_prev] + previous[-223:] + list(tok.sot_sequence) + [tok.no_timestamps]
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

"""ASR candidates at one decoding step, turned into comparable text for the LLM.

Whisper's GPT-2 BPE pieces are not the LLM's tokens, so a candidate token is compared as text:
the partial word it belongs to, completed to the next word boundary by the ASR itself (greedy,
batched over candidates), then re-tokenized by the LLM.
"""

from __future__ import annotations

from functools import lru_cache

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer


class WordPieces:
    """Word-boundary knowledge about Whisper tokens (a token starting with a space opens a word)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eot = tokenizer.eot
        self._starts_word = lru_cache(maxsize=None)(self._compute_starts_word)
        self._is_lexical = lru_cache(maxsize=None)(self._compute_is_lexical)

    def _compute_starts_word(self, token: int) -> bool:
        return token >= self.eot or self.tokenizer.decode([token]).startswith(" ")

    def starts_word(self, token: int) -> bool:
        return self._starts_word(token)

    def is_lexical(self, token: int) -> bool:
        """Holds a letter or digit: punctuation is left to the ASR (an LLM-chosen '.' ends the
        utterance early, and punctuation never changes the normalized words)."""
        return self._is_lexical(token)

    def _compute_is_lexical(self, token: int) -> bool:
        return token < self.eot and any(ch.isalnum() for ch in self.tokenizer.decode([token]))

    def word_start(self, tokens: list[int], i: int) -> int:
        """Start of the word holding position i - 1: the text before it is a context shared by
        every candidate at step i, whether the candidate continues that word or opens a new one."""
        j = i - 1
        while j > 0 and not self.starts_word(tokens[j]):
            j -= 1
        return max(j, 0)

    def completion(self, tokens: list[int], limit: int) -> list[int]:
        """The leading tokens of `tokens` that still belong to the current word."""
        out: list[int] = []
        for t in tokens[:limit]:
            if self.starts_word(t):
                break
            out.append(t)
        return out


def select_candidates(log_probs: np.ndarray, eot: int, top_k: int, min_prob: float) -> list[int]:
    """The ASR's top-k tokens (eot included) with probability >= min_prob, best first."""
    k = min(top_k, log_probs.shape[0])
    top = np.argpartition(-log_probs, k - 1)[:k]
    top = top[np.argsort(-log_probs[top])]
    return [int(t) for t in top if np.exp(log_probs[t]) >= min_prob]


def audio_frames(encoder: np.ndarray, silence: np.ndarray | None) -> int:
    """Encoder frames that hold audio: the backend pastes a short window's encoding over the
    encoding of 30 s of silence, so everything after the last row that differs is silence.
    Cross-attending only to those frames makes the short completion decodes ~3x cheaper."""
    if silence is None or silence.shape != encoder.shape[1:]:
        return encoder.shape[1]
    differs = np.flatnonzero(np.any(encoder[0] != silence, axis=-1))
    return int(differs[-1]) + 1 if differs.size else encoder.shape[1]


def complete_with_asr(
    whisper: ctranslate2.models.Whisper,
    encoder: np.ndarray,
    prompt: list[int],
    prefix: list[int],
    candidates: list[int],
    pieces: WordPieces,
    limit: int,
) -> list[list[int]]:
    """Greedy ASR continuation of prefix + [candidate], cut at the next word boundary (one batch).

    `encoder` may be cut to its audio frames: the completion only has to name the word."""
    batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(encoder, len(candidates), 0)))
    prompts = [prompt + prefix + [c] for c in candidates]
    # CTranslate2's max_length counts the prompt (and runs short of it in practice): be generous,
    # the completion is cut at the word boundary anyway. Sequences include the forced prefix.
    results = whisper.generate(
        batch, prompts, beam_size=1, max_length=len(prompt) + 2 * (len(prefix) + 1 + limit) + 8, suppress_blank=False
    )
    start = len(prefix) + 1
    return [pieces.completion(r.sequences_ids[0][start:], limit) for r in results]

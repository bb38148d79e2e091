"""ASR candidates at one decoding step, turned into comparable text for the LLM.

Whisper's GPT-2 BPE pieces are not the LLM's tokens, so a candidate token is compared as text.
Candidates must also cover the same audio: " my" against " li" is really "my abilities" against
"liabilities", and an LLM scoring one word each would prefer the short common one. So each
candidate is continued by the ASR itself (greedy, batched over candidates) until its words rejoin
the ASR's own path, and the spans up to and including the rejoining word are compared.
"""

from __future__ import annotations

from functools import lru_cache

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer

from fusion.uncertainty import log_softmax


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

    def words(self, tokens: list[int]) -> tuple[list[str], list[int]]:
        """The words of a token sequence and the token index where each starts."""
        bounds = [k for k, t in enumerate(tokens) if k == 0 or self.starts_word(t)]
        ends = bounds[1:] + [len(tokens)]
        return [self.tokenizer.decode(tokens[a:b]) for a, b in zip(bounds, ends)], bounds

    def word_start(self, tokens: list[int], i: int) -> int:
        """Start of the word holding position i - 1: the text before it is a context shared by
        every candidate at step i, whether the candidate continues that word or opens a new one."""
        j = i - 1
        while j > 0 and not self.starts_word(tokens[j]):
            j -= 1
        return max(j, 0)


def text_logits(step: ctranslate2.StorageView | np.ndarray, eot: int) -> np.ndarray:
    """One step's logits over text tokens + eot; timestamps and other specials are never candidates."""
    return np.array(step, dtype=np.float32).reshape(-1)[: eot + 1]


def select_candidates(log_probs: np.ndarray, eot: int, top_k: int, min_prob: float) -> list[int]:
    """The ASR's top-k tokens (eot included) with probability >= min_prob, best first."""
    k = min(top_k, log_probs.shape[0])
    top = np.argpartition(-log_probs, k - 1)[:k]
    top = top[np.argsort(-log_probs[top])]
    return [int(t) for t in top if np.exp(log_probs[t]) >= min_prob]


def audio_frames(encoder: np.ndarray, silence: np.ndarray | None) -> int:
    """Encoder frames that hold audio: the backend pastes a short window's encoding over the
    encoding of 30 s of silence, so everything after the last row that differs is silence.
    Cross-attending only to those frames makes the short continuation decodes ~3x cheaper."""
    if silence is None or silence.shape != encoder.shape[1:]:
        return encoder.shape[1]
    differs = np.flatnonzero(np.any(encoder[0] != silence, axis=-1))
    return int(differs[-1]) + 1 if differs.size else encoder.shape[1]


def continue_with_asr(
    whisper: ctranslate2.models.Whisper,
    encoder: np.ndarray,
    prompt: list[int],
    prefix: list[int],
    candidates: list[tuple[int, ...]],
    limit: int,
    tau: float,
    eot: int,
) -> list[tuple[list[int], list[float], bool]]:
    """Greedy ASR continuation (at most `limit` tokens) of prefix + candidate (a token sequence forced
    whole), one batch: the continuation's tokens, the calibrated log-probs of the candidate's tokens after
    its first (teacher-forced) and of the continuation's (then the end's, when the decoder ended within
    the limit), and whether it ended. `encoder` may be cut to its audio frames."""
    batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(encoder, len(candidates), 0)))
    prompts = [prompt + prefix + list(c) for c in candidates]
    longest = max(len(c) for c in candidates)
    # CTranslate2's max_length counts the prompt (and runs short of it in practice): be generous,
    # the continuation is cut to `limit` here. Sequences include the forced prefix; forced prefixes
    # of different lengths batch together, and their positions come back teacher-forced.
    results = whisper.generate(
        batch,
        prompts,
        beam_size=1,
        max_length=len(prompt) + 2 * (len(prefix) + longest + limit) + 8,
        suppress_blank=False,
        return_logits_vocab=True,
    )
    out = []
    for c, r in zip(candidates, results):
        start = len(prefix) + len(c)
        cont = r.sequences_ids[0][start:]
        ended = len(cont) < limit
        scored = list(c[1:]) + cont[:limit] + ([eot] if ended else [])
        steps = r.logits[0][len(prefix) + 1 : len(prefix) + 1 + len(scored)]
        lps = [float(log_softmax(np.array(v, dtype=np.float32).reshape(-1), tau)[t]) for v, t in zip(steps, scored)]
        out.append((cont[:limit], lps, ended))
    return out


END = "\x00end"  # the word after a sequence that ended


def norm_word(word: str) -> str:
    """A word as compared between spans and with keyterms: lower case, letters and digits only."""
    return "".join(ch for ch in word.lower() if ch.isalnum()) or word.strip()


def same_words(a: list[str], b: list[str]) -> bool:
    """Equal after dropping case and punctuation: the choice would not change the transcript."""
    return [norm_word(w) for w in a] == [norm_word(w) for w in b]


def rejoin(a: list[str], a_ended: bool, b: list[str], b_ended: bool) -> tuple[int, int] | None:
    """Where two word sequences agree again after differing (on the next two words, or on the end
    of both), as the index of the first agreeing word in each: (2, 3) for "in liabilities
    understated" against "in my abilities understated". None when they do not rejoin in view.
    An index equal to the sequence's length means its end."""
    a_keys = [norm_word(w) for w in a] + ([END] if a_ended else [])
    b_keys = [norm_word(w) for w in b] + ([END] if b_ended else [])
    best = None
    for x in range(1, len(a_keys)):
        for y in range(1, len(b_keys)):
            agree = a_keys[x : x + 2] == b_keys[y : y + 2] and (a_keys[x] == END or x + 1 < len(a_keys))
            if agree and (best is None or x + y < sum(best)):
                best = (x, y)
    return best

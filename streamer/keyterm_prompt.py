"""Which of a session's keyterms a window may spell: those spelled close to words the stream has.

They are the terms a window's look-alikes may be respelled as (streamer/keyterm_respell.py), or, with
`asr.keyterm_spans_only = false`, the terms in Whisper's prompt. Measured in the prompt:

Every keyterm in every window's prompt cost 26-31% more decode time at 100 terms (docs/biasing.md): a window
every 0.5 s re-reads up to 160 prompt tokens, most of them terms nobody said. A keyterm only helps Whisper
spell what it already hears, so a window's prompt holds the keyterms that look like words of the stream's
latest hypothesis or its recent committed text (Whisper's "Whitmore" brings in "Whittemore"), most similar
first. Terms heard exactly always go in (dropping one would let the next window spell it as before); of the
others at most `max_terms`: a long list holds many words a letter or two from common ones ("fur", "dee"), and
with 500 terms every window's prompt filled with them (U-WER +54% on speech-dev-noisy).
The keyterm trie and the LLM still get every term.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from rapidfuzz import fuzz, process

MIN_SIMILARITY = 60.0  # rapidfuzz ratio (0-100) of a keyterm to a span of words
MAX_TERMS = 5  # at most this many terms a window besides those heard exactly (0: no bound)
_LETTERS = re.compile(r"[^a-z0-9' ]+")


def normalise(text: str) -> str:
    """Lower case, letters, digits and apostrophes: how keyterms and words heard are compared."""
    return " ".join(_LETTERS.sub(" ", text.lower()).split())


def span_forms(heard: Sequence[str], lengths: range) -> list[tuple[int, int, str]]:
    """The spans of `lengths` normalised words, spaced and with their letters run together (spoken "a fore said" for
    "aforesaid"): (first word, after the last, form)."""
    return [
        (i, i + k, form)
        for k in lengths
        for i in range(len(heard) - k + 1)
        for form in (" ".join(heard[i : i + k]), "".join(heard[i : i + k]))
    ]


class KeytermSelector:
    """A session's keyterms ranked by how closely words heard spell them; the ones at or above
    `min_similarity`, most similar first (ties in list order): every term heard exactly, at most `max_terms` others."""

    def __init__(
        self, keyterms: Sequence[str], min_similarity: float = MIN_SIMILARITY, max_terms: int = MAX_TERMS
    ) -> None:
        self.keyterms = tuple(keyterms)
        self.min_similarity = min_similarity
        self.max_terms = max_terms
        normed = [normalise(t) for t in self.keyterms]
        # terms by word count: a term of n words is compared with spans of n-1 to n+1 words ("Kal Dee"), and
        # with the span's letters run together (spoken "a fore said" for "aforesaid")
        self._by_words: dict[int, tuple[list[int], list[str]]] = {}
        for i, n in enumerate(normed):
            if n:
                rows, texts = self._by_words.setdefault(len(n.split()), ([], []))
                rows.append(i)
                texts.append(n)

    def select(self, words: Sequence[str]) -> tuple[str, ...]:
        """The keyterms that words heard may spell, most similar first."""
        heard = normalise(" ".join(words)).split()
        if not heard or not self._by_words:
            return ()
        best = np.zeros(len(self.keyterms))
        exact = np.zeros(len(self.keyterms), dtype=bool)
        spoken = f" {' '.join(heard)} "
        for n, (rows, texts) in self._by_words.items():
            spans = {form for _, _, form in span_forms(heard, range(max(n - 1, 1), n + 2))}  # "Kal Dee"
            if spans:
                scores = process.cdist(texts, list(spans), scorer=fuzz.ratio, dtype=np.float32)
                best[rows] = scores.max(axis=1)
                exact[rows] = [f" {text} " in spoken for text in texts]
        near = sorted(np.flatnonzero((best >= self.min_similarity) & ~exact), key=lambda i: (-best[i], i))
        return tuple(self.keyterms[i] for i in [*np.flatnonzero(exact), *near[: self.max_terms or None]])

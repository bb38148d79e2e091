"""Which of a session's keyterms go into Whisper's prompt: those spelled close to words the stream has.

Every keyterm in every window's prompt cost 26-31% more decode time at 100 terms (docs/biasing.md): a window
every 0.5 s re-reads up to 160 prompt tokens, most of them terms nobody said. A keyterm only helps Whisper
spell what it already hears, so a window's prompt holds the keyterms that look like words of the stream's
latest hypothesis or its recent committed text (Whisper's "Whitmore" brings in "Whittemore"), most similar
first. The keyterm trie and the LLM still get every term.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from rapidfuzz import fuzz, process

MIN_SIMILARITY = 60.0  # rapidfuzz ratio (0-100) of a keyterm to a span of words
_LETTERS = re.compile(r"[^a-z0-9' ]+")


def _norm(text: str) -> str:
    return " ".join(_LETTERS.sub(" ", text.lower()).split())


class KeytermSelector:
    """A session's keyterms ranked by how closely words heard spell them; the ones at or above
    `min_similarity`, most similar first (ties in list order)."""

    def __init__(self, keyterms: Sequence[str], min_similarity: float = MIN_SIMILARITY) -> None:
        self.keyterms = tuple(keyterms)
        self.min_similarity = min_similarity
        normed = [_norm(t) for t in self.keyterms]
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
        heard = _norm(" ".join(words)).split()
        if not heard or not self._by_words:
            return ()
        best = np.zeros(len(self.keyterms))
        for n, (rows, texts) in self._by_words.items():
            spans = {
                form
                for k in range(max(n - 1, 1), n + 2)
                for i in range(len(heard) - k + 1)
                for form in (" ".join(heard[i : i + k]), "".join(heard[i : i + k]))
            }
            if spans:
                scores = process.cdist(texts, list(spans), scorer=fuzz.ratio, dtype=np.float32)
                best[rows] = scores.max(axis=1)
        chosen = np.flatnonzero(best >= self.min_similarity)
        return tuple(self.keyterms[i] for i in sorted(chosen, key=lambda i: (-best[i], i)))

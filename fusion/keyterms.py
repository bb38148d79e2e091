"""Keyterm candidates: continuations of the ASR path that spell one of the meeting's keyterms.

Whisper's own top-k at a step can never spell a name it does not know ("Schulfer" for "Schoeffer"),
so at a step the decoder may also propose every keyterm whose Whisper tokens continue what is already
decoded of the current word: a prefix tree over the keyterms' word-start token sequences (leading space,
in the casings a transcript writes them: as given, lower case, capitalised, title case). A candidate is
the rest of such a sequence, forced as a whole; the decoder then scores it like any other span (the ASR
teacher-forced, the LLM with the meeting prefix) and the UADF rule decides.

Only keyterms whose first forced token the ASR itself gives some probability at the step are proposed
(`min_prob`, calibrated): a keyterm the audio does not support at all is never worth a decode.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np
from faster_whisper.tokenizer import Tokenizer

from fusion.candidates import WordPieces, norm_word

AHEAD = 3  # a forced first token that the ASR path emits within this many tokens is a skip, not a spelling
KEYTERM_CANDIDATES = 3  # keyterm candidates compared at one step (most probable first token first)
KEYTERM_STEPS = 6  # steps per decoded window that compare keyterm candidates (memoised steps are free)


def spellings(term: str) -> list[str]:
    """The casings a transcript may write a keyterm in: as given, lower, capitalised, title case."""
    term = " ".join(term.split())
    forms = [term, term.lower(), term[:1].upper() + term[1:], " ".join(w[:1].upper() + w[1:] for w in term.split())]
    return list(dict.fromkeys(f for f in forms if f))


@dataclass(frozen=True)
class KeytermCandidate:
    """Tokens to force at a step (the rest of a keyterm's spelling), the keyterm, and the calibrated ASR
    probability of the first forced token (what proposed it)."""

    tokens: tuple[int, ...]
    term: str
    first_prob: float


class KeytermTrie:
    """The keyterms' word-start Whisper token sequences: for every proper prefix, the spellings that go on
    past it, grouped by their next token."""

    def __init__(self, keyterms: tuple[str, ...], tokenizer: Tokenizer) -> None:
        self.terms = tuple(dict.fromkeys(t.strip() for t in keyterms if t.strip()))
        self._norm = {term: [norm_word(w) for w in term.split()] for term in self.terms}
        self._by_first: dict[str, list[list[str]]] = defaultdict(list)
        for target in {tuple(n) for n in self._norm.values()}:
            self._by_first[target[0]].append(list(target))
        self._next: dict[tuple[int, ...], dict[int, list[tuple[tuple[int, ...], str]]]] = defaultdict(lambda: defaultdict(list))
        for term in self.terms:
            for form in spellings(term):
                seq = tuple(tokenizer.encode(" " + form))
                for k in range(len(seq)):
                    self._next[seq[:k]][seq[k]].append((seq, term))
        self._next = {prefix: dict(nxt) for prefix, nxt in self._next.items()}
        self._tokens = {prefix: np.array(list(nxt)) for prefix, nxt in self._next.items()}

    def __bool__(self) -> bool:
        return bool(self.terms)

    def following(self, decoded: tuple[int, ...], log_probs: np.ndarray, min_prob: float) -> list[tuple[int, float]]:
        """The next tokens of the spellings that start with `decoded`, with their probability under
        `log_probs`, where it is at least `min_prob`."""
        tokens = self._tokens.get(decoded)
        if tokens is None:
            return []
        probs = np.exp(log_probs[tokens])
        return [(int(t), float(p)) for t, p in zip(tokens[probs >= min_prob], probs[probs >= min_prob])]

    def spellings_after(self, decoded: tuple[int, ...], token: int) -> list[tuple[tuple[int, ...], str]]:
        """(spelling, keyterm) of every spelling that goes on from `decoded` with `token`."""
        return self._next[decoded][token]

    def count(self, text: str) -> int:
        """Keyterm occurrences in a text (whole words, whatever the case and punctuation)."""
        words = [norm_word(w) for w in text.split()]
        return sum(words[k : k + len(target)] == target for k, w in enumerate(words) for target in self._by_first.get(w, ()))

    def spelled(self, term: str, words: list[str]) -> bool:
        """Do `words` (from the keyterm's start on) already spell it, whatever the case and punctuation?"""
        target = self._norm[term]
        return [norm_word(w) for w in words[: len(target)]] == target


def propose(
    trie: KeytermTrie,
    pieces: WordPieces,
    tokens: list[int],
    i: int,
    chosen: int,
    log_probs: np.ndarray,
    min_prob: float,
    limit: int,
    floor: int = 0,
) -> list[KeytermCandidate]:
    """Keyterm candidates at step i of the ASR path `tokens` (`chosen` = tokens[i] or the end; `log_probs`:
    step i's calibrated distribution), at most `limit`: the most probable first token first, and among
    equals the keyterm spelled most like the words it would replace.

    A keyterm may start a new word at i (when the ASR starts one there) or continue the word in progress
    (its tokens from the word's start on are the keyterm's first tokens): either way the candidate is
    tokens[:i] + the rest of the keyterm's tokens. Words before `floor` (final already) are not reopened."""
    if chosen >= pieces.eot or not pieces.is_lexical(chosen):
        return []
    starts = [i] if pieces.starts_word(chosen) else []
    w = pieces.word_start(tokens, i)
    if floor <= w < i and pieces.starts_word(tokens[w]):
        starts.append(w)
    ahead = set(tokens[i + 1 : i + 1 + AHEAD])
    found: dict[tuple[int, ...], tuple[float, float, KeytermCandidate]] = {}
    for start in starts:
        decoded = tuple(tokens[start:i])
        nexts = [(t, p) for t, p in trie.following(decoded, log_probs, min_prob) if t != chosen and t not in ahead]
        if not nexts:
            continue
        words = pieces.words(tokens[start:])[0]
        heard = " ".join(norm_word(x) for x in words[:3])
        for first, p in nexts:
            for seq, term in trie.spellings_after(decoded, first):
                forced = seq[len(decoded):]
                if forced in found or trie.spelled(term, words):
                    continue
                target = " ".join(norm_word(x) for x in term.split())
                like = SequenceMatcher(None, target, heard[: len(target) + 2]).ratio()
                found[forced] = (p, like, KeytermCandidate(forced, term, p))
    ranked = sorted(found.values(), key=lambda f: (-f[0], -f[1]))
    return [f[2] for f in ranked[:limit]]

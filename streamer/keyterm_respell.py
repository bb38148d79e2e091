"""Which spans of a window may be respelled as a keyterm: its look-alikes of the keyterms.

A list of terms in Whisper's prompt makes it spell the terms, and also makes it write on in the list's style
elsewhere in the window: lower case, no full stops, words dropped or run on ("lower lowercase letters", "he
says, no"; U-WER +17% on the first 45 clips of speech-dev-hard at N = 100, docs/biasing.md). So windows are
decoded without the terms, and in a window whose words may become final each span spelled close to one of the
window's keyterms (the selector's similarity, streamer/keyterm_prompt.py) is a candidate respelling; the backend
asks Whisper, shown the keyterms, which it would write there (WhisperBackend._respell). Decoding such windows a
second time with the keyterms and keeping the differing spans that spell one (the way before) cost +49-58% decode
time in `uadf`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz, process

from streamer.keyterm_prompt import normalise, span_forms

SPANS = 2  # spans tried a keyterm, the closest first: "total" and "total to" for "totaled", "common" and "a common" for "uncommon"


@dataclass(frozen=True)
class Respelling:
    """Words [start, stop) of a window written as `text` (a keyterm, with the span's capital and punctuation)."""

    start: int
    stop: int
    text: str
    similarity: float  # rapidfuzz ratio of the span to the keyterm


def look_alikes(words: Sequence[str], keyterms: Sequence[str], min_similarity: float) -> list[Respelling]:
    """For each keyterm not spelled in `words`, the SPANS spans spelled closest to it (spaced or run together: one
    to one more word than the term has) when at least `min_similarity` (rapidfuzz ratio): their respellings."""
    heard = [normalise(w) for w in words]
    spoken = f" {' '.join(heard)} "
    out: list[Respelling] = []
    for term in keyterms:
        target = normalise(term)
        if not target or f" {target} " in spoken:
            continue
        spans = span_forms(heard, range(1, len(target.split()) + 2))  # "nepluultra" for "ne plus ultra"
        if not spans:
            continue
        forms = [form for *_, form in spans]
        scores = process.cdist([target, target.replace(" ", "")], forms, scorer=fuzz.ratio, dtype=np.float32).max(axis=0)
        taken: set[tuple[int, int]] = set()
        # each span is there twice (spaced, run together): its 2 * SPANS best forms hold its SPANS best spans; of equals the shortest
        for best in np.argsort(-scores, kind="stable")[: 2 * SPANS]:
            start, stop, _ = spans[best]
            if scores[best] >= min_similarity and len(taken) < SPANS and (start, stop) not in taken:
                taken.add((start, stop))
                out.append(Respelling(start, stop, _dressed(term.strip(), words[start], words[stop - 1]), float(scores[best])))
    return out


def _dressed(term: str, first: str, last: str) -> str:
    """The term with the leading punctuation and capital of the span's first word and the trailing punctuation of
    its last ("Joyans," -> "Joynes,")."""
    first, last = first.strip(), last.strip()
    lead = first[: next((i for i, ch in enumerate(first) if ch.isalnum()), len(first))]
    trail = last[next((i for i in range(len(last), 0, -1) if last[i - 1].isalnum()), len(last)) :]
    if first[len(lead) : len(lead) + 1].isupper() and term[:1].islower():
        term = term[:1].upper() + term[1:]
    return lead + term + trail

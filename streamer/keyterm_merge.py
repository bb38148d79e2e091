"""Keep a keyterm-prompted decode's words only where they spell a keyterm.

A list of terms in Whisper's prompt makes it spell the terms, and also makes it write on in the list's style
elsewhere in the window: lower case, no full stops, words dropped or run on ("lower lowercase letters", "he
says, no"; U-WER +17% on the first 45 clips of speech-dev-hard at N = 100, docs/biasing.md). So a window whose
words may become final is decoded both ways: the decode without the terms is its text, and a span where the
two differ is taken from the prompted decode only when it spells a keyterm that the plain span does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher

from streamer.keyterm_prompt import normalise


def keyterm_spans(plain: list[dict], prompted: list[dict], keyterms: Sequence[str]) -> list[dict]:
    """`plain` with each differing span replaced by `prompted`'s where that span spells a keyterm that plain's does
    not (word dicts as faster-whisper's alignment gives them, each with a "word")."""
    terms = [f" {t} " for t in map(normalise, keyterms) if t]
    a = [normalise(w["word"]) for w in plain]
    b = [normalise(w["word"]) for w in prompted]
    out: list[dict] = []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            # spelled exactly: the term's words in a row, as KeytermSelector's "heard exactly"
            pa, pb = (f" {normalise(' '.join(span))} " for span in (a[i1:i2], b[j1:j2]))
            if any(t in pb and t not in pa for t in terms):
                out += prompted[j1:j2]
                continue
        out += plain[i1:i2]
    return out

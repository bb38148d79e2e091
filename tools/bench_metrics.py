"""Benchmark measurements: per-word latencies of a streamed transcript against reference word times, WER.

Reference word times come from offline faster-whisper on the whole file (`word_timestamps=True`).
Streamed words are matched to reference words by an edit-distance alignment of lightly normalised
words; a matched (or substituted) word's end time in the stream is the reference word's end.
Latencies are wall seconds since streaming began minus stream seconds / speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz.distance import Levenshtein

UTTERANCE_GAP = 0.8  # seconds between reference words that start a new utterance
SHIFT = 2  # a partial word may sit this many places off its final position and still count as shown


@dataclass
class RefWord:
    word: str
    start: float
    end: float


@dataclass
class StreamWord:
    """A word of the final transcript: when it was first shown (partial or final) and when it became final."""

    word: str
    first_seen: float
    final_wall: float


@dataclass
class FileLatency:
    """Per-word and per-utterance latencies of one streamed file (seconds), and rewrite counts."""

    partial: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    onset: list[float] = field(default_factory=list)
    finalization: list[float] = field(default_factory=list)
    updates: int = 0
    rewrites: int = 0
    matched_words: int = 0
    stream_words: int = 0


def token(word: str) -> str:
    """Alignment key of a word: lower case, letters, digits and inner apostrophes."""
    return re.sub(r"[^\w']+", "", word.lower()).strip("'")


def tokens(text: str) -> list[str]:
    return [t for t in (token(w) for w in text.split()) if t]


def align(hyp: list[str], ref: list[str]) -> dict[int, int]:
    """Map hyp word index -> ref word index for equal and substituted words: a minimum-edit (Levenshtein)
    alignment. (difflib's longest-block matching paired a stream's first half with the second copy of a
    reference that says the same text twice, as speech-long/dev-concat does: words "79 s late".)"""
    mapping: dict[int, int] = {}
    for op in Levenshtein.opcodes(hyp, ref):
        if op.tag in ("equal", "replace"):
            for k in range(min(op.src_end - op.src_start, op.dest_end - op.dest_start)):
                mapping[op.src_start + k] = op.dest_start + k
    return mapping


def utterances(ref: list[RefWord], gap: float = UTTERANCE_GAP) -> list[tuple[int, int]]:
    """[start, end) index ranges of reference words split at pauses of at least `gap` seconds."""
    spans: list[tuple[int, int]] = []
    begin = 0
    for i in range(1, len(ref) + 1):
        if i == len(ref) or ref[i].start - ref[i - 1].end >= gap:
            if i > begin:
                spans.append((begin, i))
            begin = i
    return spans


def _is_prefix(a: list[str], b: list[str]) -> bool:
    return len(a) <= len(b) and b[: len(a)] == a


def stream_words(messages: list[tuple[dict, float]]) -> tuple[list[StreamWord], int, int]:
    """From (message, wall) pairs in arrival order: the final transcript's words with first-seen and
    final times, the number of transcript updates (non-empty partials and finals) and rewrites (updates
    after which the shown text is not an extension of what was shown before: a word changed or retracted)."""
    finals = [(m, wall) for m, wall in messages if m.get("type") == "final"]
    words: list[StreamWord] = []
    for m, wall in finals:
        texts = [w["word"] for w in m.get("words") or []] or m.get("text", "").split()
        words += [StreamWord(t, wall, wall) for t in (token(w) for w in texts) if t]
    final_tokens = [w.word for w in words]
    committed: list[str] = []
    shown: list[str] = []
    updates = rewrites = 0
    for m, wall in messages:
        kind = m.get("type")
        if kind == "partial":
            partial = tokens(m.get("text", ""))
            if not partial:
                continue
            updates += 1
            new = committed + partial
            if not _is_prefix(shown, new):
                rewrites += 1
            shown = new
            base = len(committed)
            window = final_tokens[base : base + len(partial) + 5]
            for i, j in align(partial, window).items():
                if partial[i] == window[j] and abs(i - j) <= SHIFT:
                    w = words[base + j]
                    w.first_seen = min(w.first_seen, wall)
        elif kind == "final":
            new_words = tokens(" ".join(w["word"] for w in m.get("words") or []) or m.get("text", ""))
            if not new_words:
                continue
            updates += 1
            committed = committed + new_words
            if not (_is_prefix(committed, shown) or _is_prefix(shown, committed)):
                rewrites += 1
                shown = committed
            elif len(committed) > len(shown):
                shown = committed
    return words, updates, rewrites


def speech_onset(ref: list[RefWord], begin: int, speech: list[tuple[float, float]]) -> float:
    """Onset of the utterance starting at ref[begin]: the start of the VAD speech region holding the word's
    end, when later than the word's aligned start (Whisper often starts the first word in the silence)."""
    onset = ref[begin].start
    starts = [s for s, _ in speech if s <= ref[begin].end]
    return max(onset, starts[-1]) if starts else onset


def file_latency(
    messages: list[tuple[dict, float]], ref: list[RefWord], speed: float = 1.0, speech: list[tuple[float, float]] | None = None
) -> FileLatency:
    """Latencies of one streamed file against the reference word times (and VAD speech regions, seconds)."""
    words, updates, rewrites = stream_words(messages)
    mapping = align([w.word for w in words], [token(r.word) for r in ref])
    out = FileLatency(updates=updates, rewrites=rewrites, matched_words=len(mapping), stream_words=len(words))
    by_ref: dict[int, StreamWord] = {}
    for i, j in mapping.items():
        end = ref[j].end / speed
        out.partial.append(words[i].first_seen - end)
        out.final.append(words[i].final_wall - end)
        by_ref[j] = words[i]
    for begin, end in utterances(ref):
        shown = [by_ref[j] for j in range(begin, end) if j in by_ref]
        if shown:
            out.onset.append(min(w.first_seen for w in shown) - speech_onset(ref, begin, speech or []) / speed)
            out.finalization.append(max(w.final_wall for w in shown) - ref[end - 1].end / speed)
    return out


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summary(values: list[float]) -> dict[str, float | int | None]:
    """n, median, p90, p95, max and mean of a latency list (None when empty)."""
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p95": percentile(values, 95),
        "max": float(np.max(values)) if values else None,
        "mean": float(np.mean(values)) if values else None,
    }

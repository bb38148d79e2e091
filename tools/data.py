"""Speech data for the tools and the tests, defined once: manifests, and WER after Whisper's normaliser.

A manifest is a JSONL file, one utterance a line: `id`, `audio` (relative to the manifest), `text` (the
reference as its source gives it), `seconds`, optional `condition` and more (../shared/data/README.md).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import jiwer

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UADF_DATA", ROOT.parent / "shared" / "data"))


def manifest_path(name_or_path: str | os.PathLike) -> Path:
    """A manifest file from its path, its folder, or the name of a folder under DATA ("speech-dev")."""
    path = Path(name_or_path)
    if not path.exists() and not path.is_absolute():
        path = DATA / path
    return path / "manifest.jsonl" if path.is_dir() or not path.suffix else path


def load_manifest(name_or_path: str | os.PathLike, limit: int = 0, condition: str | None = None) -> list[dict]:
    """The entries of a manifest, each with `path` (absolute audio path) and `set` (its folder's name).
    Raises FileNotFoundError when it is missing."""
    path = manifest_path(name_or_path)
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if condition:
        entries = [e for e in entries if e.get("condition") == condition]
    for entry in entries:
        if "audio" in entry:
            entry["path"] = str(path.parent / entry["audio"])
        entry.setdefault("set", path.parent.name)
    return entries[: limit or None]


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Whisper's English normaliser: the form both sides of every WER here are compared in."""
    return _normalizer()(text)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) after normalisation."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref.split():
        return len(hyp.split()), 0
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Errors over reference words, summed over utterances (NaN when there are no reference words)."""
    counts = [word_errors(r, h) for r, h in zip(references, hypotheses)]
    words = sum(n for _, n in counts)
    return sum(e for e, n in counts if n) / words if words else float("nan")

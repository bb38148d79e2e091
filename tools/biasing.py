"""Dev biasing manifests: each utterance gets a keyterm list of its rare words plus N seeded distractors.

The protocol is the one of Le et al., "Contextualized Streaming End-to-End Speech Recognition with Trie-Based
Deep Biasing and Shallow Fusion" (Interspeech 2021; its LibriSpeech lists are facebookresearch/fbai-speech
`is21_deep_bias`), used since by most contextual-biasing papers (TCPGen, Whisper biasing, ...):

- a *rare word* is a reference word outside the 5,000 most common words. The paper counted LibriSpeech's
  training transcripts; these sets have no training text, so the common words are wordfreq's English
  `top_n_list` (a general-English frequency list), compared after Whisper's English normaliser;
- an utterance's list is its rare words plus N *distractors*, words that are not in its reference, drawn with
  a seeded generator; the paper drew them from all rare words, here from wordfreq's ranks 5,000-50,000
  (plain lower-case words of three letters or more), for N = 0, 100, 500.

Keyterms keep the reference's spelling and case, since they go into a prompt; they carry no possessive 's (the
normaliser makes "Joynes's" "joynes is"). A list is shuffled (seeded), so position says nothing, and the N = 100
distractors are the first 100 of the N = 500 ones. The generator is seeded by the recording (`source_path` and
reference), so one utterance has the same list in every set and condition (clean, pink noise, bus, reverb).

Output: `eval/biasing/<set>/n<N>.jsonl`, the shared manifest's entries with `audio` relative to the output
file (the shared data lies in `../shared/data` beside the repository, as tests/conftest.py expects) and
added `keyterms` (the list), `rare_words` (the reference's keyterms, in order of appearance) and
`distractors` (N). The folder name is the set name, so `uadf-stream eval` reports each set under its name.

    python -m tools.biasing                 # rebuild every set and N, print the counts
    python -m tools.biasing --check         # fail if the committed manifests differ from a rebuild
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.data import DATA, ROOT, load_manifest
from tools.data import normalize as normalize_text

OUT = ROOT / "eval" / "biasing"
SETS = ("speech-dev", "speech-dev-noisy", "speech-dev-hard", "speech-meeting")  # read, noisy, noisy/reverb, conversational
DISTRACTOR_COUNTS = (0, 100, 500)
COMMON_WORDS = 5000
DISTRACTOR_RANKS = (5000, 50000)
SEED = 20261127

# A word of the raw reference: letters, with inner apostrophes ("O'Neill"); hyphens and digits split words.
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)
_DISTRACTOR = re.compile(r"[a-z]{3,}")


def normalize(text: str) -> list[str]:
    """The scoring tokens of `text` (Whisper's English normaliser, as `uadf-stream eval` scores)."""
    return normalize_text(text).split()


@dataclass(frozen=True)
class Vocabulary:
    """Common words (normalised tokens) and the distractor pool in frequency order."""

    common: frozenset[str]
    pool: tuple[str, ...]

    @classmethod
    def from_wordfreq(cls) -> Vocabulary:
        from wordfreq import top_n_list

        ranked = top_n_list("en", DISTRACTOR_RANKS[1])
        common = frozenset(t for w in ranked[:COMMON_WORDS] for t in normalize(w))
        pool = tuple(
            w for w in ranked[DISTRACTOR_RANKS[0] :]
            if _DISTRACTOR.fullmatch(w) and normalize(w) == [w] and w not in common
        )
        return cls(common, pool)


@functools.cache
def vocabulary() -> Vocabulary:
    """The vocabulary, built once a process (wordfreq's lists take a second)."""
    return Vocabulary.from_wordfreq()


def rare_words(text: str, vocab: Vocabulary) -> list[str]:
    """The reference's words whose normalised form is one token outside the common words, as spelled in `text`.

    First spelling per normalised form, in order of appearance. Words the normaliser rewrites into several
    tokens or digits ("nineteen", "O'Brien" -> "0 brien") are not keyterms.
    """
    tokens = set(normalize(text))
    seen: set[str] = set()
    out = []
    for match in _WORD.finditer(text):
        spelled = _POSSESSIVE.sub("", match.group())
        norm = normalize(spelled)
        if len(norm) != 1 or not norm[0].isalpha():
            continue
        token = norm[0]
        if token in tokens and token not in vocab.common and token not in seen:
            seen.add(token)
            out.append(spelled)
    return out


def keyterm_lists(entry: dict, rare: list[str], vocab: Vocabulary, counts=DISTRACTOR_COUNTS,
                  seed: int = SEED) -> dict[int, list[str]]:
    """{N: keyterm list} for one entry: its rare words + the first N of one seeded distractor order, shuffled."""
    key = f'{entry.get("source_path", entry["id"])}|{entry["text"]}'
    in_reference = set(normalize(entry["text"]))
    pool = [w for w in vocab.pool if w not in in_reference]
    random.Random(f"{seed}:{key}").shuffle(pool)
    lists = {}
    for n in counts:
        terms = rare + pool[:n]
        random.Random(f"{seed}:{key}:{n}").shuffle(terms)
        lists[n] = terms
    return lists


def build_set(name: str, vocab: Vocabulary, data: Path = DATA, out: Path = OUT, counts=DISTRACTOR_COUNTS,
              seed: int = SEED) -> dict[int, list[dict]]:
    """{N: manifest entries} for one shared set, audio paths relative to `out/<name>/`."""
    src = data / name
    dest = out / name
    manifests: dict[int, list[dict]] = {n: [] for n in counts}
    for entry in load_manifest(src):
        audio = os.path.relpath(entry.pop("path"), dest)
        del entry["set"]
        rare = rare_words(entry["text"], vocab)
        lists = keyterm_lists(entry, rare, vocab, counts, seed)
        for n in counts:
            manifests[n].append(
                {**entry, "audio": audio, "keyterms": lists[n], "rare_words": rare, "distractors": n}
            )
    return manifests


def manifest_text(entries: list[dict]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)


@dataclass
class SetCounts:
    """How much biasing material one set has (reference tokens after normalisation)."""

    utterances: int
    with_rare: int
    ref_words: int
    rare_occurrences: int
    unique_rare: int


def set_counts(entries: list[dict]) -> SetCounts:
    rare_tokens: set[str] = set()
    occurrences = words = with_rare = 0
    for e in entries:
        tokens = normalize(e["text"])
        rare = {normalize(w)[0] for w in e["rare_words"]}
        rare_tokens |= rare
        words += len(tokens)
        occurrences += sum(t in rare for t in tokens)
        with_rare += bool(rare)
    return SetCounts(len(entries), with_rare, words, occurrences, len(rare_tokens))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.biasing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the shared sets")
    parser.add_argument("--out", type=Path, default=OUT, help="where <set>/n<N>.jsonl are written")
    parser.add_argument("--set", dest="sets", action="append", help="a shared set (repeatable; default: the dev sets)")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    vocab = vocabulary()
    stale = []
    print(f"{'set':18s} {'utts':>5s} {'w/ rare':>7s} {'words':>6s} {'rare occ':>8s} {'unique':>6s}")
    for name in args.sets or SETS:
        manifests = build_set(name, vocab, args.data, args.out)
        for n, entries in manifests.items():
            path = args.out / name / f"n{n}.jsonl"
            text = manifest_text(entries)
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        c = set_counts(manifests[DISTRACTOR_COUNTS[0]])
        print(f"{name:18s} {c.utterances:5d} {c.with_rare:7d} {c.ref_words:6d} {c.rare_occurrences:8d} {c.unique_rare:6d}")
    if stale:
        print("differs from a rebuild:", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

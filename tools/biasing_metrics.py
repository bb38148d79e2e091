"""Contextual-biasing metrics: WER split into B-WER and U-WER, keyterm recall and keyterm false insertions.

Definitions follow Le et al., "Contextualized Streaming End-to-End Speech Recognition with Trie-Based Deep
Biasing and Shallow Fusion" (Interspeech 2021) and its scorer (facebookresearch/fbai-speech,
`is21_deep_bias/score.py`), the split that later biasing papers report on the same lists (Sun et al.'s TCPGen,
ASRU 2021, and "Can Contextual Biasing Remain Effective with Whisper and GPT-2?", Interspeech 2023). One
alignment of the normalised reference and hypothesis gives every count:

- **B-WER** = (S + D on biased reference words + I of biased words) / biased reference words. A reference word
  is *biased* when it is (part of) an occurrence of a keyterm; an inserted hypothesis word counts here when it is
  a word of a keyterm that occurs in the reference (the scorer's per-utterance "rare words in the reference").
- **U-WER**: the same on every other reference word; every other insertion counts here, so B and U errors add up
  to the WER's. A distractor that replaces an ordinary word is a U-WER substitution; it also shows in:
- **keyterm recall**: reference keyterm occurrences whose words are all aligned as correct, in one run;
- **keyterm false insertions**: keyterm occurrences in the hypothesis (any list entry, distractors included)
  that are not aligned to that keyterm in the reference; `keyterm_precision` is their complement.

Both sides go through Whisper's English normaliser (as `uadf-stream eval` scores), keyterms too, so a keyterm
is a sequence of normalised tokens; the alignment is jiwer's. With one-word keyterms (the dev biasing sets)
B-WER is exactly the scorer's.

    python -m tools.biasing_metrics --report out.json --manifest eval/biasing/speech-dev/n100.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jiwer

from tools.biasing import normalize
from tools.data import load_manifest


@dataclass
class BiasCounts:
    """Error counts of one utterance or, summed with `+`, of a set."""

    ref_words: int = 0
    b_ref_words: int = 0
    b_sub: int = 0
    b_del: int = 0
    b_ins: int = 0
    u_sub: int = 0
    u_del: int = 0
    u_ins: int = 0
    keyterm_occurrences: int = 0
    keyterms_recognised: int = 0
    hyp_keyterm_occurrences: int = 0
    keyterm_false_insertions: int = 0
    missed: list[str] = field(default_factory=list)  # reference keyterm occurrences not recognised
    inserted: list[str] = field(default_factory=list)  # hypothesis keyterm occurrences not in the reference there

    def __add__(self, other: BiasCounts) -> BiasCounts:
        return BiasCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)})

    @property
    def u_ref_words(self) -> int:
        return self.ref_words - self.b_ref_words

    @property
    def b_errors(self) -> int:
        return self.b_sub + self.b_del + self.b_ins

    @property
    def u_errors(self) -> int:
        return self.u_sub + self.u_del + self.u_ins

    @property
    def wer(self) -> float:
        return _rate(self.b_errors + self.u_errors, self.ref_words)

    @property
    def b_wer(self) -> float:
        return _rate(self.b_errors, self.b_ref_words)

    @property
    def u_wer(self) -> float:
        return _rate(self.u_errors, self.u_ref_words)

    @property
    def keyterm_recall(self) -> float:
        return _rate(self.keyterms_recognised, self.keyterm_occurrences)

    @property
    def keyterm_precision(self) -> float:
        h = self.hyp_keyterm_occurrences
        return _rate(h - self.keyterm_false_insertions, h)

    def summary(self) -> dict:
        """Totals and rates (None where undefined), without the word lists."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("missed", "inserted")}
        for name in ("u_ref_words", "wer", "b_wer", "u_wer", "keyterm_recall", "keyterm_precision"):
            value = getattr(self, name)
            out[name] = None if value != value else value
        return out


def _rate(count: int, total: int) -> float:
    """count / total; NaN when there is nothing to divide by (no keyterm in the set, say)."""
    return count / total if total else float("nan")


def _phrases(keyterms: Iterable[str]) -> list[tuple[str, ...]]:
    return sorted({tuple(t) for t in map(normalize, keyterms) if t})


def _occurrences(tokens: Sequence[str], phrases: Iterable[tuple[str, ...]]) -> list[tuple[int, int]]:
    """(start, end) of every place where a phrase occurs in `tokens`."""
    return [
        (i, i + len(p)) for p in phrases for i in range(len(tokens) - len(p) + 1) if tuple(tokens[i : i + len(p)]) == p
    ]


def score(reference: str, hypothesis: str, keyterms: Iterable[str]) -> BiasCounts:
    """The biasing counts of one utterance (raw texts; both are normalised here)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    phrases = _phrases(keyterms)
    ref_occ = _occurrences(ref, phrases)
    biased = {i for start, end in ref_occ for i in range(start, end)}
    present = {t for p in phrases if _occurrences(ref, [p]) for t in p}
    ref_to_hyp: dict[int, int] = {}  # correct words: reference index -> hypothesis index
    c = BiasCounts(ref_words=len(ref), b_ref_words=len(biased))
    for chunk in jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]:
        refs = range(chunk.ref_start_idx, chunk.ref_end_idx)
        if chunk.type == "equal":
            ref_to_hyp.update(zip(refs, range(chunk.hyp_start_idx, chunk.hyp_end_idx)))
        elif chunk.type == "substitute":
            b = sum(i in biased for i in refs)
            c.b_sub += b
            c.u_sub += len(refs) - b
        elif chunk.type == "delete":
            b = sum(i in biased for i in refs)
            c.b_del += b
            c.u_del += len(refs) - b
        else:  # insert
            for j in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                if hyp[j] in present:
                    c.b_ins += 1
                else:
                    c.u_ins += 1
    hyp_to_ref = {j: i for i, j in ref_to_hyp.items()}
    for start, end in ref_occ:
        c.keyterm_occurrences += 1
        if _aligned_run(ref_to_hyp, start, end):
            c.keyterms_recognised += 1
        else:
            c.missed.append(" ".join(ref[start:end]))
    for start, end in _occurrences(hyp, phrases):
        c.hyp_keyterm_occurrences += 1
        if not _aligned_run(hyp_to_ref, start, end):
            c.keyterm_false_insertions += 1
            c.inserted.append(" ".join(hyp[start:end]))
    return c


def _aligned_run(mapping: dict[int, int], start: int, end: int) -> bool:
    """Whether positions start..end-1 are all correct words aligned to one contiguous run on the other side."""
    if any(i not in mapping for i in range(start, end)):
        return False
    return all(mapping[i + 1] == mapping[i] + 1 for i in range(start, end - 1))


def score_report(rows: Iterable[dict], manifests: Sequence[str | Path]) -> dict[str, list[tuple[dict, BiasCounts]]]:
    """Score `uadf-stream eval` rows against biasing manifests: {set: [(row, counts)]}.

    A row is matched by its `set` (the manifest's folder name, as eval names it) and `id`; its `reference`
    must be the manifest entry's `text`, so a report is never scored against another set's lists.
    """
    entries = {}
    for manifest in manifests:
        name = Path(manifest).parent.name
        for e in load_manifest(manifest):
            if (name, e["id"]) in entries:
                raise ValueError(f"{name}/{e['id']} is in two manifests")
            entries[(name, e["id"])] = e
    out: dict[str, list[tuple[dict, BiasCounts]]] = defaultdict(list)
    for row in rows:
        entry = entries.get((row["set"], row["id"]))
        if entry is None:
            raise KeyError(f"{row['set']}/{row['id']} is in the report but in no manifest given")
        if entry["text"] != row["reference"]:
            raise ValueError(f"{row['set']}/{row['id']}: the report's reference differs from the manifest's text")
        out[row["set"]].append((row, score(entry["text"], row["text"], entry.get("keyterms", []))))
    return dict(out)


def set_totals(scored: dict[str, list[tuple[dict, BiasCounts]]]) -> dict[str, BiasCounts]:
    """Corpus counts per set and over all (`all`)."""
    totals = {name: sum((c for _, c in items), BiasCounts()) for name, items in scored.items()}
    totals["all"] = sum(totals.values(), BiasCounts())
    return totals


def format_table(totals: dict[str, BiasCounts]) -> str:
    lines = [
        f"{'set':18s} {'words':>6s} {'WER%':>6s} {'B-words':>7s} {'B-WER%':>7s} {'U-WER%':>7s} "
        f"{'recall%':>7s} {'false ins':>9s}"
    ]
    for name, c in totals.items():
        lines.append(
            f"{name:18s} {c.ref_words:6d} {100 * c.wer:6.2f} {c.b_ref_words:7d} {100 * c.b_wer:7.2f} "
            f"{100 * c.u_wer:7.2f} {100 * c.keyterm_recall:7.1f} {c.keyterm_false_insertions:9d}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.biasing_metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", required=True, help="the JSON report of `uadf-stream eval --json`")
    parser.add_argument("--manifest", action="append", required=True, help="biasing manifest (repeatable)")
    parser.add_argument("--json", dest="json_out", help="write totals and per-utterance counts here")
    args = parser.parse_args(argv)
    scored = score_report(json.loads(Path(args.report).read_text())["rows"], args.manifest)
    totals = set_totals(scored)
    print(format_table(totals))
    if args.json_out:
        doc = {
            "report": args.report,
            "manifests": args.manifest,
            "sets": {k: c.summary() for k, c in totals.items()},
            "rows": [
                {"set": name, "id": row["id"], **c.summary(), "missed": c.missed, "inserted": c.inserted}
                for name, items in scored.items() for row, c in items
            ],
        }
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

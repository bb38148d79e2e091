"""Fusion decisions as data: label them against references, calibrate span scores, fit the gate.

Calibration observes the decoder at every step it would consult the LLM (keeping the ASR's token)
and keeps each `Comparison`. A decision is labelled when exactly one of its candidates' spans is
found, as normalized words, in the utterance's reference. The span temperatures are then fitted
like the token ones (mean max-probability = accuracy), and the gate is chosen from the net number
of decisions fusion would fix on each set: among the gates that regress no set, the cheapest one
(highest) within 10% of the best net gain.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from fusion.calibration import fit_temperature
from fusion.decoder import Comparison


@dataclass
class Decision:
    """A recorded comparison, where it came from, and the index of its correct candidate."""

    comparison: Comparison
    group: str  # set, or set/condition: the gate must not regress any of them
    correct: int | None = None


def contains(words: list[str], span: list[str]) -> bool:
    """Is `span` a contiguous run of `words`?"""
    n = len(span)
    return n > 0 and any(words[k : k + n] == span for k in range(len(words) - n + 1))


def label(comparison: Comparison, reference: list[str], norm) -> int | None:
    """Index of the one candidate whose span is in the reference (the ASR's choice: all of its
    paired spans are), or None when none or several are."""
    choice_ok = all(contains(reference, norm(path).split()) for path, _ in comparison.pairs)
    oks = [choice_ok] + [contains(reference, norm(span).split()) for _, span in comparison.pairs]
    return oks.index(True) if sum(oks) == 1 else None


def _span_tau(scores: list[np.ndarray], correct: list[int]) -> float:
    """fit_temperature over candidate sets of varying size (padded with -inf)."""
    width = max(len(s) for s in scores)
    padded = np.full((len(scores), width), -np.inf)
    for row, s in enumerate(scores):
        padded[row, : len(s)] = s
    hits = np.array([int(np.argmax(s)) == k for s, k in zip(scores, correct)])
    return fit_temperature(padded, hits)


def fit_span_temperatures(decisions: list[Decision]) -> tuple[float, float, dict]:
    labelled = [d for d in decisions if d.correct is not None]
    if not labelled:
        return 1.0, 1.0, {"labelled_decisions": 0}
    correct = [d.correct for d in labelled]
    asr = [d.comparison.asr_lp for d in labelled]
    llm = [d.comparison.llm_lp for d in labelled]
    info = {
        "decisions": len(decisions),
        "labelled_decisions": len(labelled),
        "asr_choice_accuracy": float(np.mean([k == 0 for k in correct])),
        "asr_span_accuracy": float(np.mean([int(np.argmax(s)) == k for s, k in zip(asr, correct)])),
        "llm_span_accuracy": float(np.mean([int(np.argmax(s)) == k for s, k in zip(llm, correct)])),
    }
    return _span_tau(asr, correct), _span_tau(llm, correct), info


def gate_table(decisions: list[Decision], grid: list[float], span_asr_tau: float, span_llm_tau: float) -> dict:
    """Per gate and group: labelled decisions fusion fixes minus those it breaks (ASR's choice
    correct, fused not), counting only decisions whose entropy opens the gate."""
    table: dict[str, dict[str, int]] = {}
    for gate in grid:
        net: dict[str, int] = defaultdict(int)
        for d in decisions:
            if d.correct is None or d.comparison.h < gate:
                continue
            choice = d.comparison.uadf_choice(span_asr_tau, span_llm_tau)
            net[d.group] += int(choice == d.correct) - int(d.correct == 0)
        table[str(gate)] = dict(net)
    return table


def choose_gate(table: dict, groups: list[str], never: float, keep: float = 0.9) -> float:
    """Among the gates that regress no group, the highest whose net gain is at least `keep` of the
    best one: every step above the gate costs an ASR continuation and an LLM call. `never` when no
    gate gains."""
    safe = {float(g): sum(net.values()) for g, net in table.items() if all(net.get(k, 0) >= 0 for k in groups)}
    best = max(safe.values(), default=0)
    if best <= 0:
        return never
    return max(g for g, gain in safe.items() if gain >= keep * best)

"""Fusion decisions as data: label them against references, calibrate span scores, fit the gate and the
keyterm parameters.

Calibration observes the decoder at every step it would consult the LLM at the loosest settings (the
lowest gate for the ASR's own candidates, the lowest first-token probability for keyterm candidates;
keeping the ASR's token) and keeps each `Comparison`. Each candidate is marked by whether its span is
found, as normalized words, in the utterance's reference; a decision is labelled when exactly one of the
candidates the decoder would compare at given settings is. The span temperatures are then fitted like
the token ones (mean max-probability = accuracy), the gate from the net number of decisions fusion would
fix on each group (set or set/condition): among the gates that regress no group, the cheapest one
(highest) within 10% of the best net gain; the keyterm boost and threshold the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from fusion.calibration import fit_temperature
from fusion.decoder import Comparison

NO_KEYTERMS = float("inf")  # a keyterm threshold no candidate passes


@dataclass
class Decision:
    """A recorded comparison, where it came from, and which candidates' spans are in the reference."""

    comparison: Comparison
    group: str  # set, or set/condition: a setting must not regress any of them
    oks: list[bool]
    keyterms: bool = False  # recorded in a stream that had keyterms

    @property
    def correct(self) -> int | None:
        """Index of the one candidate whose span is in the reference, else None."""
        return self.oks.index(True) if sum(self.oks) == 1 else None

    def restrict(self, gate: float, keyterm_min_prob: float = NO_KEYTERMS) -> Decision | None:
        """The decision as the decoder would take it with this gate and keyterm threshold: the ASR's
        candidates if the step's entropy opens the gate, keyterm candidates whose first token passes the
        threshold; None when no candidate is left to compare with the ASR's choice."""
        c = self.comparison
        keep = (c.from_asr & (c.h >= gate)) | (c.from_keyterm & (c.first_prob >= keyterm_min_prob))
        keep[0] = True
        if keep.sum() < 2:
            return None
        if keep.all():
            return self
        return Decision(c.subset(keep), self.group, [ok for ok, k in zip(self.oks, keep) if k], self.keyterms)


def contains(words: list[str], span: list[str]) -> bool:
    """Is `span` a contiguous run of `words`?"""
    n = len(span)
    return n > 0 and any(words[k : k + n] == span for k in range(len(words) - n + 1))


def in_reference(comparison: Comparison, reference: list[str], norm) -> list[bool]:
    """Per candidate, is its span in the reference? The ASR's choice is when all of its paired spans are."""
    choice_ok = all(contains(reference, norm(path).split()) for path, _ in comparison.pairs)
    return [choice_ok] + [contains(reference, norm(span).split()) for _, span in comparison.pairs]


def label(comparison: Comparison, reference: list[str], norm) -> int | None:
    """Index of the one candidate whose span is in the reference, or None when none or several are."""
    oks = in_reference(comparison, reference, norm)
    return oks.index(True) if sum(oks) == 1 else None


def _span_tau(scores: list[np.ndarray], correct: list[int]) -> float:
    """fit_temperature over candidate sets of varying size (padded with -inf)."""
    width = max(len(s) for s in scores)
    padded = np.full((len(scores), width), -np.inf)
    for row, s in enumerate(scores):
        padded[row, : len(s)] = s
    hits = np.array([int(np.argmax(s)) == k for s, k in zip(scores, correct)])
    return fit_temperature(padded, hits)


def asr_candidates_only(decisions: list[Decision], gate: float) -> list[Decision]:
    """The decisions among the ASR's own candidates at `gate` (keyterm candidates left out)."""
    return [r for d in decisions if (r := d.restrict(gate)) is not None]


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


def net_fixes(
    decisions: list[Decision], gate: float, span_asr_tau: float, span_llm_tau: float,
    keyterm_boost: float = 0.0, keyterm_min_prob: float = NO_KEYTERMS,
) -> tuple[dict[str, int], int]:
    """Per group: labelled decisions fusion fixes minus those it breaks (the ASR's choice correct, the
    fused one not) at these settings; and how many comparisons the decoder would make (its cost)."""
    net: dict[str, int] = defaultdict(int)
    compared = 0
    for d in decisions:
        r = d.restrict(gate, keyterm_min_prob)
        if r is None:
            continue
        compared += 1
        if r.correct is None:
            continue
        choice = r.comparison.uadf_choice(span_asr_tau, span_llm_tau, keyterm_boost)
        net[r.group] += int(choice == r.correct) - int(r.correct == 0)
    return dict(net), compared


def gate_table(decisions: list[Decision], grid: list[float], span_asr_tau: float, span_llm_tau: float) -> dict:
    """Per gate and group: net fixes among the ASR's own candidates."""
    return {str(gate): net_fixes(decisions, gate, span_asr_tau, span_llm_tau)[0] for gate in grid}


def keyterm_table(
    decisions: list[Decision], gate: float, boosts: list[float], min_probs: list[float], span_asr_tau: float, span_llm_tau: float
) -> dict:
    """Per "boost/min_prob" setting: net fixes per group (keyterm and ASR candidates, at `gate`) and the
    number of comparisons."""
    table = {}
    for boost in boosts:
        for min_prob in min_probs:
            net, compared = net_fixes(decisions, gate, span_asr_tau, span_llm_tau, boost, min_prob)
            table[f"{boost}/{min_prob}"] = {"net": net, "comparisons": compared}
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


def choose_keyterms(table: dict, groups: list[str], keep: float = 0.9) -> tuple[float, float]:
    """(boost, min_prob): among the settings that regress no group, those within `keep` of the best net
    gain; of them the cheapest (fewest comparisons), then the best gain, then the smallest boost.
    (0, inf) — keyterm candidates never proposed — when no setting gains."""
    safe = {}
    for key, row in table.items():
        if all(row["net"].get(k, 0) >= 0 for k in groups):
            boost, min_prob = map(float, key.split("/"))
            safe[(boost, min_prob)] = (sum(row["net"].values()), row["comparisons"])
    best = max((gain for gain, _ in safe.values()), default=0)
    if best <= 0:
        return 0.0, NO_KEYTERMS
    good = [(cost, -gain, boost, min_prob) for (boost, min_prob), (gain, cost) in safe.items() if gain >= keep * best]
    _, _, boost, min_prob = min(good)
    return boost, min_prob

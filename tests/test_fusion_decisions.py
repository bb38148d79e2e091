"""Span comparison and decision-level calibration: pure logic, no model weights."""

import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

from fusion.candidates import rejoin, same_words
from tools.decisions import Decision, choose_gate, choose_keyterms, fit_span_temperatures, gate_table, keyterm_table, label
from fusion.decoder import Comparison

NORM = EnglishTextNormalizer()


def test_rejoin_finds_where_spans_cover_the_same_words():
    path = "in liabilities understated .".split()
    other = "in my abilities understated .".split()
    assert rejoin(path, True, other, True) == (2, 3)
    # A word shared early ("in") is not a rejoin unless the words after it agree too.
    assert rejoin("plant in Wales in 1985".split(), True, "plant and whales in 1985".split(), True) == (3, 3)
    assert rejoin(["the", "end"], True, ["the", "fin"], True) == (2, 2)  # both ended: the end rejoins
    assert rejoin(["the", "end", "of", "it"], False, ["the", "fin", "a", "b"], False) is None


def test_same_words_ignores_case_and_punctuation():
    assert same_words(["suits", "fresh"], ["suits,", "Fresh"])
    assert not same_words(["total", "to"], ["totaled"])


def comparison(h, asr, llm, pairs, keyterm=(), first_prob=()):
    """A comparison among the ASR's candidates, or with `keyterm` flags: keyterm spellings (bias 1) vs the rest."""
    keyterm = np.array(keyterm, bool)
    return Comparison(h=h, cands=[(k,) for k in range(len(asr))], pairs=pairs, asr_lp=np.array(asr), llm_lp=np.array(llm),
                      from_asr=~keyterm if len(keyterm) else (), from_keyterm=keyterm, first_prob=np.array(first_prob),
                      bias=keyterm.astype(float))


def right(k, n=2):
    """Candidate k of n is the one in the reference."""
    return [i == k for i in range(n)]


def test_label_needs_exactly_one_candidate_in_the_reference():
    ref = NORM("Volume on the New York Stock Exchange totaled 181.8 million shares").split()
    c = comparison(2.0, [0.0, -0.5], [0.0, 3.0], [(" Exchange total to", " Exchange totals")])
    assert label(c, ref, NORM) is None  # neither is what was said
    c = comparison(2.0, [0.0, -0.5], [0.0, 3.0], [(" Stock Exchange, total", " Stock Exchange totaled")])
    assert label(c, ref, NORM) == 1
    c = comparison(2.0, [0.0, -0.5], [0.0, 3.0], [(" Stock Exchange totaled", " Stock Exchange, total")])
    assert label(c, ref, NORM) == 0
    c = comparison(2.0, [0.0, -0.5], [0.0, 3.0], [(" sold 5", " bought 5")])
    assert label(c, ref, NORM) is None


def test_gate_keeps_every_group_from_regressing():
    # "a": fusion fixes two uncertain decisions; "b": it breaks one at moderate entropy.
    fix = comparison(3.0, [0.0, -0.2], [0.0, 6.0], [("x", "y")])
    breaks = comparison(1.0, [0.0, -0.2], [0.0, 6.0], [("x", "y")])
    decisions = [Decision(fix, "a", right(1)), Decision(fix, "a", right(1)), Decision(breaks, "b", right(0))]
    assert fix.uadf_choice(1.0, 1.0) == 1
    table = gate_table(decisions, [0.5, 2.0, 4.0], 1.0, 1.0)
    assert table["0.5"] == {"a": 2, "b": -1}
    assert table["2.0"] == {"a": 2}
    assert choose_gate(table, ["a", "b"], never=1e9) == 2.0  # 0.5 regresses "b"; 4.0 gains nothing
    assert choose_gate({"1.0": {"a": 10}, "2.0": {"a": 9}, "3.0": {"a": 5}}, ["a"], never=1e9) == 2.0  # cheapest within 10%
    assert choose_gate({"1.0": {"a": -1}}, ["a"], never=1e9) == 1e9


def test_span_temperatures_flatten_an_overconfident_model():
    # The LLM is always sure (10 nats) and right half the time: its temperature must rise.
    decisions = [Decision(comparison(2.0, [0.0, -1.0], [0.0, 10.0], [("x", "y")]), "a", right(k % 2)) for k in range(20)]
    asr_tau, llm_tau, info = fit_span_temperatures(decisions)
    assert info["labelled_decisions"] == 20 and info["llm_span_accuracy"] == 0.5
    assert llm_tau > 5.0


def test_keyterm_settings_are_fitted_like_the_gate():
    """A keyterm spelling that the ASR finds 2 nats less likely than its own: right in "a" (twice), a
    distractor in "b" whose first token is less probable. The boost must flip "a" but not "b"."""
    pairs = [(" Peter Schulfer in", " Peter Schoeffer in")]
    name = comparison(0.3, [0.0, -2.0], [0.0, 0.0], pairs, keyterm=[False, True], first_prob=[0.9, 0.08])
    distractor = comparison(0.3, [0.0, -2.0], [0.0, 0.0], pairs, keyterm=[False, True], first_prob=[0.9, 0.015])
    decisions = [Decision(name, "a", right(1), True)] * 2 + [Decision(distractor, "b", right(0), True)]
    assert decisions[0].restrict(gate=1.0) is None  # the entropy gate alone never opens here
    assert decisions[0].restrict(gate=1.0, keyterm_min_prob=0.05).comparison.cands == name.cands
    table = keyterm_table(decisions, 1.0, [0.0, 3.0], [0.01, 0.05], 1.0, 1.0)
    assert table["0.0/0.01"] == {"net": {"a": 0, "b": 0}, "comparisons": 3}
    assert table["3.0/0.01"]["net"] == {"a": 2, "b": -1}
    assert table["3.0/0.05"] == {"net": {"a": 2}, "comparisons": 2}
    assert choose_keyterms(table, ["a", "b"]) == (3.0, 0.05)
    assert choose_keyterms({"3.0/0.01": {"net": {"a": -1}, "comparisons": 3}}, ["a"]) == (0.0, float("inf"))

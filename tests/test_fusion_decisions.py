"""Span comparison and decision-level calibration: pure logic, no model weights."""

import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

from fusion.candidates import rejoin, same_words
from tools.decisions import Decision, choose_gate, fit_span_temperatures, gate_table, label
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


def comparison(h, asr, llm, pairs):
    return Comparison(h=h, cands=list(range(len(asr))), pairs=pairs, asr_lp=np.array(asr), llm_lp=np.array(llm))


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
    decisions = [Decision(fix, "a", 1), Decision(fix, "a", 1), Decision(breaks, "b", 0)]
    assert fix.uadf_choice(1.0, 1.0) == 1
    table = gate_table(decisions, [0.5, 2.0, 4.0], 1.0, 1.0)
    assert table["0.5"] == {"a": 2, "b": -1}
    assert table["2.0"] == {"a": 2}
    assert choose_gate(table, ["a", "b"], never=1e9) == 2.0  # 0.5 regresses "b"; 4.0 gains nothing
    assert choose_gate({"1.0": {"a": 10}, "2.0": {"a": 9}, "3.0": {"a": 5}}, ["a"], never=1e9) == 2.0  # cheapest within 10%
    assert choose_gate({"1.0": {"a": -1}}, ["a"], never=1e9) == 1e9


def test_span_temperatures_flatten_an_overconfident_model():
    # The LLM is always sure (10 nats) and right half the time: its temperature must rise.
    decisions = [Decision(comparison(2.0, [0.0, -1.0], [0.0, 10.0], [("x", "y")]), "a", k % 2) for k in range(20)]
    asr_tau, llm_tau, info = fit_span_temperatures(decisions)
    assert info["labelled_decisions"] == 20 and info["llm_span_accuracy"] == 0.5
    assert llm_tau > 5.0

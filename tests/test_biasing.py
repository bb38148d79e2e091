"""Biasing manifests (tools/biasing.py) and metrics (tools/biasing_metrics.py) on hand-made examples.

Every expected number below was counted by hand from the alignment written in the comment.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import required
from tools.biasing import DATA, Vocabulary, keyterm_lists, main, rare_words
from tools.biasing_metrics import BiasCounts, score, score_report, set_totals


def test_b_and_u_split_of_substitutions_and_insertions():
    # ref: the wizard vanished behind the curtain         (wizard, curtain biased: 2 B words, 4 U words)
    # hyp: the lizard vanished behind a   curtain zebra
    #          S(B)                   S(U)         I(U: zebra is a distractor, not in the reference)
    c = score("The wizard vanished behind the curtain.", "the lizard vanished behind a curtain zebra",
              ["Wizard", "curtain", "zebra"])
    assert (c.ref_words, c.b_ref_words, c.u_ref_words) == (6, 2, 4)
    assert (c.b_sub, c.b_del, c.b_ins, c.u_sub, c.u_del, c.u_ins) == (1, 0, 0, 1, 0, 1)
    assert c.wer == pytest.approx(3 / 6)
    assert c.b_wer == pytest.approx(1 / 2)
    assert c.u_wer == pytest.approx(2 / 4)
    assert (c.keyterm_occurrences, c.keyterms_recognised, c.keyterm_recall) == (2, 1, 0.5)
    assert c.missed == ["wizard"]
    # curtain is right where the reference has it; zebra is not in the reference at all
    assert (c.hyp_keyterm_occurrences, c.keyterm_false_insertions, c.keyterm_precision) == (2, 1, 0.5)
    assert c.inserted == ["zebra"]


def test_insertion_of_a_reference_keyterm_counts_toward_b_wer():
    # ref: gutenberg           printed books
    # hyp: gutenberg gutenberg printed books    one insertion of a word that is a keyterm of this reference
    c = score("Gutenberg printed books", "Gutenberg, Gutenberg printed books", ["Gutenberg"])
    assert (c.b_ins, c.u_ins, c.b_ref_words) == (1, 0, 1)
    assert c.b_wer == 1.0
    assert c.u_wer == 0.0
    assert c.wer == pytest.approx(1 / 3)
    assert c.keyterm_recall == 1.0
    assert (c.hyp_keyterm_occurrences, c.keyterm_false_insertions) == (2, 1)


def test_deletion_of_a_keyterm():
    # ref: there was no autopsy period  ->  hyp: there was no period   (autopsy deleted)
    c = score("there was no autopsy period", "there was no period", ["autopsy", "zebra"])
    assert (c.b_del, c.u_del, c.b_ref_words) == (1, 0, 1)
    assert (c.b_wer, c.u_wer, c.keyterm_recall) == (1.0, 0.0, 0.0)
    assert c.missed == ["autopsy"]
    assert c.hyp_keyterm_occurrences == 0


def test_phrase_keyterm_needs_all_words_in_one_run():
    # ref: we met in new york today; "new york" makes 2 B words
    # hyp 1: york -> work substituted: 1 B error of 2, the occurrence is missed
    c = score("We met in New York today", "we met in new work today", ["New York"])
    assert (c.b_ref_words, c.b_sub, c.b_wer, c.u_wer) == (2, 1, 0.5, 0.0)
    assert (c.keyterm_occurrences, c.keyterms_recognised) == (1, 0)
    # hyp 2: both words right but split by an inserted word ("big" is no keyterm word: a U insertion)
    c = score("We met in New York today", "we met in new big york today", ["New York"])
    assert (c.b_errors, c.u_ins) == (0, 1)
    assert c.keyterms_recognised == 0
    assert c.missed == ["new york"]


def test_keyterms_and_texts_share_the_normaliser():
    # British keyterm spelling, American hypothesis: both normalise to "color"
    c = score("the colour scheme", "The color scheme.", ["Colour"])
    assert (c.b_ref_words, c.wer, c.keyterm_recall, c.keyterm_false_insertions) == (1, 0.0, 1.0, 0)


def test_no_keyterms_is_plain_wer():
    # ref: a b c  hyp: a x c d  ->  1 S + 1 I over 3 words, all unbiased
    c = score("alpha beta gamma", "alpha chi gamma delta", [])
    assert c.wer == c.u_wer == pytest.approx(2 / 3)
    assert c.b_ref_words == 0
    assert math.isnan(c.b_wer) and math.isnan(c.keyterm_recall)
    assert c.summary()["b_wer"] is None


def test_counts_add_up_over_a_set():
    a = score("The wizard vanished behind the curtain.", "the lizard vanished behind a curtain zebra",
              ["Wizard", "curtain", "zebra"])
    b = score("We met in New York today", "we met in new work today", ["New York"])
    total = a + b
    # 3 + 1 errors over 6 + 6 words; B: 1 + 1 over 2 + 2; U: 2 + 0 over 4 + 4
    assert total.wer == pytest.approx(4 / 12)
    assert total.b_wer == pytest.approx(2 / 4)
    assert total.u_wer == pytest.approx(2 / 8)
    assert total.keyterm_recall == pytest.approx(1 / 3)
    assert total.missed == ["wizard", "new york"]


def test_score_report_matches_rows_by_set_and_id(tmp_path):
    folder = tmp_path / "speech-dev"
    folder.mkdir()
    manifest = folder / "n100.jsonl"
    entries = [
        {"id": "u1", "text": "there was no autopsy period", "keyterms": ["autopsy", "zebra"]},
        {"id": "u2", "text": "the colour scheme", "keyterms": ["Colour"]},
    ]
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    rows = [
        {"set": "speech-dev", "id": "u1", "reference": entries[0]["text"], "text": "there was no period zebra"},
        {"set": "speech-dev", "id": "u2", "reference": entries[1]["text"], "text": "the color scheme"},
    ]
    totals = set_totals(score_report(rows, [manifest]))
    # u1: autopsy deleted (B), zebra inserted (U, and a false keyterm); u2 correct
    t = totals["speech-dev"]
    assert (t.ref_words, t.b_ref_words, t.b_errors, t.u_errors) == (8, 2, 1, 1)
    assert (t.keyterm_recall, t.keyterm_false_insertions) == (0.5, 1)
    assert totals["all"].summary() == t.summary()
    with pytest.raises(ValueError, match="reference differs"):
        score_report([{**rows[0], "reference": "something else"}], [manifest])
    with pytest.raises(KeyError):
        score_report([{**rows[0], "id": "u3"}], [manifest])


VOCAB = Vocabulary(
    common=frozenset({"mister", "the", "is", "type", "way", "anglo", "of"}),
    pool=("zebra", "quartz", "fjord", "glyph", "nymph", "crypt", "sphinx", "movable"),
)


def test_rare_words_keep_the_reference_spelling():
    text = "Mr. Gutenberg's movable type, the Anglo-Saxon way of Gutenberg. In 1985!"
    # Mr. -> "mister" (common); possessive dropped; hyphen splits; repeats and digits are no keyterms
    assert rare_words(text, VOCAB) == ["Gutenberg", "movable", "Saxon", "In"]


def test_keyterm_lists_are_seeded_nested_and_never_hold_other_reference_words():
    entry = {"id": "x", "text": "the movable zebra of Gutenberg", "source_path": "a.wav"}
    rare = rare_words(entry["text"], VOCAB)
    assert rare == ["movable", "zebra", "Gutenberg"]
    lists = keyterm_lists(entry, rare, VOCAB, counts=(0, 2, 5))
    assert sorted(lists[0]) == sorted(rare)
    assert all(set(rare) <= set(terms) for terms in lists.values())
    distractors = {n: set(terms) - set(rare) for n, terms in lists.items()}
    assert (len(distractors[2]), len(distractors[5])) == (2, 5)
    assert distractors[2] <= distractors[5]
    assert len(lists[5]) == len(set(lists[5])) == 8  # pool words in the reference are never drawn again
    assert keyterm_lists(entry, rare, VOCAB, counts=(0, 2, 5)) == lists
    other = keyterm_lists({**entry, "source_path": "b.wav"}, rare, VOCAB, counts=(5,))
    assert other[5] != lists[5]


def test_committed_manifests_are_a_rebuild_of_the_shared_sets():
    required(DATA / "speech-dev" / "manifest.jsonl")
    assert main(["--check"]) == 0

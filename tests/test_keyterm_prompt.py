"""Which keyterms a window's prompt carries (pure logic: rapidfuzz over the words heard)."""

import pytest

from streamer.config import ConfigError, load_config
from streamer.keyterm_prompt import KeytermSelector

TERMS = ("Gutenberg", "Whittemore", "Kaldi", "New Jersey", "staple", "aforesaid")


def test_terms_spelled_close_to_words_heard_most_similar_first():
    selector = KeytermSelector(TERMS)
    heard = selector.select("I met Whit more and Peter at the bank".split())
    assert heard[0] == "Whittemore" and not {"Gutenberg", "Kaldi", "New Jersey", "staple"} & set(heard), heard
    assert selector.select("we trained it with Kaldy on a staple of data".split())[:2] == ("staple", "Kaldi")


def test_spans_of_other_word_counts_and_run_together():
    selector = KeytermSelector(TERMS)
    assert "Kaldi" in selector.select("the cal d toolkit".split())
    assert "aforesaid" in selector.select("the a fore said printer".split())
    assert "New Jersey" in selector.select("from new jersy".split())  # a two-word term, one word misspelt


def test_nothing_heard_or_nothing_close_selects_nothing():
    selector = KeytermSelector(TERMS)
    assert selector.select([]) == () and selector.select(["uh"]) == ()
    assert selector.select("ask not what your country can do for you".split()) == ()
    assert KeytermSelector(()).select("anything at all".split()) == ()


def test_punctuation_and_case_do_not_count():
    assert KeytermSelector(("Schoeffer",)).select(["SCHOEFFER,"]) == ("Schoeffer",)


def test_a_long_list_puts_at_most_max_terms_in_besides_those_heard_exactly():
    # look-alikes of common words ("fur", "dee", "fort") are what a long list adds: the bound keeps the most similar
    terms = ("fur", "dee", "fort", "ford", "form", "Whittemore", "staple")
    heard = "the staple for Whit more".split()
    # "staple" heard exactly; then "Whittemore" (ratio 89 to "whitmore"), "fort" (86 to "for", first of three ties)
    assert KeytermSelector(terms, max_terms=2).select(heard) == ("staple", "Whittemore", "fort")
    assert KeytermSelector(terms, max_terms=0).select(heard) == ("staple", "Whittemore", "fort", "ford", "form", "fur")  # no bound
    assert KeytermSelector(terms, min_similarity=87, max_terms=2).select(heard) == ("staple", "Whittemore")


def test_the_bound_and_the_threshold_are_checked_in_config():
    assert load_config(overrides=["streaming.keyterm_terms=2"]).streaming.keyterm_terms == 2
    for bad in ("streaming.keyterm_terms=-1", "streaming.keyterm_similarity=101"):
        with pytest.raises(ConfigError, match="keyterm"):
            load_config(overrides=[bad])

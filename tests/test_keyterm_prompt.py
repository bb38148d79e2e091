"""Which keyterms a window's prompt carries (pure logic: rapidfuzz over the words heard)."""

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

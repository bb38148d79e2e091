"""Which spans of a window may be respelled as a keyterm (streamer/keyterm_respell.py), and the stream's memory of
spans already scored (core.types.SpanVerdicts).

Pure logic; the real-model path (Whisper scoring the respellings) is in tests/test_whisper_backend.py."""

from core.types import SpanVerdicts
from streamer.keyterm_respell import look_alikes


def spans(words: str, keyterms: list[str], min_similarity: float = 60) -> list[tuple[str, str]]:
    """(the words a respelling replaces, its text)."""
    ws = [" " + w for w in words.split()]
    return [("".join(ws[r.start : r.stop]).strip(), r.text) for r in look_alikes(ws, keyterms, min_similarity)]


def test_a_look_alike_is_respelled_with_its_capital_and_punctuation():
    assert spans("Mr. Joyans will oversee", ["joynes"]) == [("Joyans", "Joynes"), ("Mr. Joyans", "Joynes")]
    assert spans('not only by "Schofer."', ["Schoeffer"]) == [('"Schofer."', '"Schoeffer."'), ('by "Schofer."', 'Schoeffer."')]


def test_the_two_closest_spans_of_each_term_closest_first():
    # "totaled" heard as "total to", "uncommon" as "a common": the closest single word is not always the span
    assert spans("Exchange total to 181", ["totaled"]) == [("total", "totaled"), ("total to", "totaled")]
    assert spans("not in a common sight", ["uncommon"]) == [("common", "uncommon"), ("a common", "uncommon")]


def test_a_term_of_several_words_heard_as_one_and_one_heard_as_several():
    assert spans("the nepluultra of Gothic type", ["Ne Plus Ultra"])[0] == ("nepluultra", "Ne Plus Ultra")
    assert spans("the wood cutters came", ["woodcutters"])[0] == ("wood cutters", "woodcutters")


def test_nothing_for_a_term_spelled_already_or_spelled_too_far():
    assert spans("Mr. Joynes will oversee the units", ["Joynes", "oversee"]) == []
    assert spans("ask not what your country can do", ["Gutenberg"]) == []
    assert spans("ask not what your country can do", ["county"], min_similarity=95) == []
    assert spans("", ["Gutenberg"]) == [] and spans("ask not", []) == []


def test_a_span_scored_once_keeps_its_verdict_near_the_same_time_until_it_is_final():
    verdicts = SpanVerdicts()
    verdicts.put("joyans", "Joynes", 1.00, 7.1)
    assert verdicts.get("joyans", "Joynes", 1.2) == 7.1  # the next window's alignment moved it a little
    assert verdicts.get("joyans", "Joynes", 1.5) is None  # another place in the stream
    assert verdicts.get("joyans", "Pans", 1.0) is None and verdicts.get("joins", "Joynes", 1.0) is None
    verdicts.forget_before(1.01)  # the span became final
    assert verdicts.get("joyans", "Joynes", 1.0) is None and verdicts.entries == []

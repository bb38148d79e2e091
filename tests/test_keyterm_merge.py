"""The keyterm-prompted decode gives a window only the spans that spell a keyterm (streamer/keyterm_merge.py).

Pure logic on word lists shaped as faster-whisper's alignment gives them; the real-model path is in
tests/test_whisper_backend.py."""

from streamer.keyterm_merge import keyterm_spans


def words(text: str) -> list[dict]:
    return [{"word": " " + w, "start": float(i), "end": i + 0.5, "probability": 0.9} for i, w in enumerate(text.split())]


def text(ws: list[dict]) -> str:
    return "".join(w["word"] for w in ws).strip()


def test_a_span_that_spells_a_keyterm_comes_from_the_prompted_decode():
    plain = words("not only by Schofer.")
    prompted = words("not only by Schoeffer,")
    got = keyterm_spans(plain, prompted, ["Schoeffer"])
    assert text(got) == "not only by Schoeffer,"
    assert got[-1] is prompted[-1]  # its timing and probability come with it


def test_words_the_list_changed_elsewhere_stay_as_decoded_without_it():
    plain = words("Especially as regards the lower case letters, not only by Schofer.")
    prompted = words("especially as regards the lower lowercase letters not only by Schoeffer,")
    assert text(keyterm_spans(plain, prompted, ["Schoeffer"])) == (
        "Especially as regards the lower case letters, not only by Schoeffer,"
    )


def test_a_span_is_not_taken_for_a_keyterm_the_plain_span_already_has():
    plain = words("Mr. Joynes will oversee the units.")
    prompted = words("Mr. Joynes will oversee the units to help me sit.")
    assert text(keyterm_spans(plain, prompted, ["Joynes"])) == "Mr. Joynes will oversee the units."


def test_multi_word_terms_case_and_punctuation():
    plain = words("the nepluultra of Gothic type")
    prompted = words("the ne plus ultra, of Gothic type")
    assert text(keyterm_spans(plain, prompted, ["Ne Plus Ultra"])) == "the ne plus ultra, of Gothic type"
    assert text(keyterm_spans(plain, prompted, ["plus minus"])) == "the nepluultra of Gothic type"


def test_no_keyterms_or_no_difference_keeps_the_plain_words():
    plain = words("ask not what your country can do for you")
    assert keyterm_spans(plain, words("ask not what your county can do for you"), []) == plain
    assert keyterm_spans(plain, words("ask not what your country can do for you"), ["country"]) == plain
    assert text(keyterm_spans([], words("Gutenberg"), ["Gutenberg"])) == "Gutenberg"

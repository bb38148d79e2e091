"""Commit policy: pure logic, no model."""

from core.types import Word
from streamer.commit import POLICIES, AgreementOrLookahead, EndpointOnly, LocalAgreement, Lookahead, common_prefix, make_policy, normalize, strip_committed
from streamer.config import StreamingOptions


def words(text: str, start: float = 0.0, step: float = 0.5) -> list[Word]:
    return [Word(" " + w, start + i * step, start + (i + 1) * step - 0.05, 0.9) for i, w in enumerate(text.split())]


def test_normalize_ignores_case_and_punctuation():
    assert normalize("Americans.") == normalize("americans") == "americans"
    assert normalize("aren't,") == "aren't"


def test_local_agreement_commits_what_two_hypotheses_share():
    la = LocalAgreement(2)
    assert la.update(words("and so my")) == []
    done = la.update(words("and so my fellow"))
    assert [w.word.strip() for w in done] == ["and", "so", "my"]
    # history keeps only the uncommitted tails: "fellow" vs "fellow Americans"
    assert [w.word.strip() for w in la.update(words("fellow Americans", 1.5))] == ["fellow"]


def test_local_agreement_waits_while_hypotheses_disagree():
    la = LocalAgreement(2)
    la.update(words("ask not"))
    assert la.update(words("as well")) == []
    assert [w.word.strip() for w in la.update(words("as well you"))] == ["as", "well"]


def test_strip_committed_by_count_when_repeated():
    committed = words("but by printers")
    hyp = words("But by printers, in Strasburg")
    assert [w.word.strip() for w in strip_committed(hyp, committed, committed[-1].end)] == ["in", "Strasburg"]


def test_strip_committed_finds_rewritten_commit_by_ngram():
    # committed "printers and Strasburg Basil", the new hypothesis rewrote "and" as "in"
    committed = words("but by printers and Strasburg, Basil.")
    hyp = words("but by printers in Strasburg, Basil, Paris,")
    rest = strip_committed(hyp, committed, committed[-1].end)
    assert [w.word.strip() for w in rest] == ["Paris,"]


def test_strip_committed_never_repeats_committed_audio_after_an_early_match():
    """A one-word match sits a word early: the words re-decoded over committed audio are not emitted again."""
    committed = [Word(" the", 58.368, 58.488, 0.9), Word(" suit", 58.488, 58.628, 0.5), Word(" to", 58.628, 58.808, 0.5),
                 Word(" the", 58.808, 58.868, 0.5)]
    hyp = [Word(" in", 57.9, 58.1, 0.9), Word(" the", 58.368, 58.488, 0.9), Word(" suit's", 58.488, 58.748, 0.5),
           Word(" image", 58.748, 59.168, 0.5), Word(" assets", 59.628, 59.988, 0.9)]
    assert [w.word.strip() for w in strip_committed(hyp, committed, committed[-1].end)] == ["image", "assets"]


def test_strip_committed_falls_back_to_time():
    committed = words("alpha beta", 0.0)
    hyp = words("gamma delta epsilon", 0.0)
    rest = strip_committed(hyp, committed, committed[-1].end)
    assert [w.word.strip() for w in rest] == ["epsilon"]


def test_common_prefix():
    assert common_prefix(words("a b c"), words("A, b d")) == 2


def test_no_commit_inside_a_written_word():
    la = LocalAgreement(2)
    hyp = words("totaled 181") + [Word(".8", 1.0, 1.2, 0.9), Word(" million", 1.2, 1.6, 0.9)]
    la.update(hyp[:2])
    done = la.update(hyp)
    assert [w.word for w in done] == [" totaled"]  # "181" waits for ".8"


def test_commit_stops_short_of_the_window_end():
    la = LocalAgreement(2)
    la.update(words("one two three"))
    assert [w.word.strip() for w in la.update(words("one two three four"), window_end=0.5)] == ["one"]
    margin = LocalAgreement(2, margin=1.5)
    margin.update(words("one two three"))
    assert [w.word.strip() for w in margin.update(words("one two three four"), window_end=2.0)] == ["one"]


def test_policies_by_name_and_mode():
    assert isinstance(make_policy(StreamingOptions()), AgreementOrLookahead)
    assert isinstance(make_policy(StreamingOptions(commit="agreement")), LocalAgreement)
    endpoint = make_policy(StreamingOptions(commit="endpoint"))
    assert endpoint.update(words("one two three"), 10.0) == [] and not endpoint.commit_window(10.0, 0.0)
    assert set(POLICIES) == {"agreement", "endpoint", "lookahead", "hybrid"}


def test_hybrid_commits_agreed_words_early_and_any_word_after_the_delay():
    policy = make_policy(StreamingOptions(commit="hybrid", commit_margin=0.5, commit_delay=1.5))
    assert policy.commit_window(1.0, 0.0)
    assert policy.update(words("one two"), 1.0) == []  # nothing to agree with yet, nothing 1.5 s old
    done = policy.update(words("one two three"), 1.5)  # "one two" agreed, ending by 1.0
    assert [w.word.strip() for w in done] == ["one", "two"]
    assert policy.update(words("tree four five", 1.0), 2.0) == []  # "three" -> "tree": no agreement, not old enough
    done = policy.update(words("three for five six", 1.0), 3.0)  # nothing agreed, but "three" ended 1.5 s before
    assert [w.word.strip() for w in done] == ["three"]
    assert [w.word.strip() for w in policy.update(words("four five six", 1.5), 3.5)] == ["four"]  # "for" -> "four"


def test_lookahead_commits_words_with_enough_audio_after_them():
    policy = Lookahead(delay=1.0)
    hyp = words("one two three four five")  # ends 0.45, 0.95, 1.45, 1.95, 2.45
    assert not policy.commit_window(0.9, speech_start=0.0)  # less than the delay of speech so far
    assert policy.commit_window(2.5, speech_start=0.0)
    assert [w.word.strip() for w in policy.update(hyp, 2.5)] == ["one", "two", "three"]
    assert policy.commit_window(3.0, speech_start=1.5)
    written = words("totaled 181") + [Word(".8", 1.0, 1.2, 0.9), Word(" million", 1.2, 1.6, 0.9)]
    assert [w.word for w in policy.update(written, 2.1)] == [" totaled"]  # "181" waits for ".8"


def test_an_unsure_word_waits_longer_for_right_context_and_holds_back_the_words_after_it():
    policy = Lookahead(delay=1.0, unsure_delay=2.0, confidence=0.5)
    hyp = words("one two three four")  # ends 0.45, 0.95, 1.45, 1.95
    hyp[1] = Word(" two", 0.5, 0.95, 0.3)  # Whisper unsure of "two"
    assert [w.word.strip() for w in policy.update(hyp, 2.5)] == ["one"]  # "two" needs 2.0 s after it, "three" waits
    assert [w.word.strip() for w in policy.update(hyp, 2.95)] == ["one", "two", "three", "four"]
    assert Lookahead(delay=1.0, unsure_delay=0.5, confidence=0.5).unsure_delay == 1.0  # never shorter than the delay
    hybrid = make_policy(StreamingOptions(commit="hybrid", commit_margin=0.5, commit_delay=1.0, commit_unsure_delay=2.0))
    hybrid.update(hyp, 2.5)
    assert [w.word.strip() for w in hybrid.update(hyp, 2.6)] == ["one"]  # agreement stops at the unsure word too

"""The meeting-stream builder and the diarization scorer's pieces (speaker turns from words, cpWER, DER)."""

from __future__ import annotations

import pytest
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

from conftest import required
from tools.diarization_eval import CommittedFinal, TimedWord, cp_errors, hypothesis, oracle_labels
from tools.meeting_streams import DATA, build_stream, load_clips, parse_seeds, rttm_lines, speaker_of


@pytest.fixture(scope="module")
def clips():
    required(DATA / "manifest.jsonl")
    return load_clips()


def test_speakers_of_the_dev_clips(clips):
    speakers = {row["speaker"] for row in clips}
    assert len(speakers) == 13  # 8 WSJ, LJSpeech, the MFA author, LibriSpeech 61, JFK, the sonnet's reader
    assert speaker_of("mfa_cold_corpus") == speaker_of("mfa_acoustic_corpus")
    assert speaker_of("47rc0206") != speaker_of("47dc0303")


def test_stream_is_consistent(clips):
    audio, entry = build_stream(3, clips)
    assert 3 <= len(entry["speakers"]) <= 5 and entry["turns"] >= 8
    segments, regions = entry["segments"], entry["regions"]
    assert all(a["end"] <= b["start"] for a, b in zip(segments, segments[1:]))
    changes = [b["start"] - a["end"] for a, b in zip(segments, segments[1:]) if a["speaker"] != b["speaker"]]
    assert min(changes) >= 0.2 - 0.01 and max(changes) <= 1.5 + 0.01  # the pauses between turns
    assert entry["seconds"] * 16000 == pytest.approx(len(audio), abs=16)
    # every chosen clip's text once, in its speaker's reference
    for row in clips:
        used = [s for s in segments if s["source"] == row["id"]]
        if used:
            assert entry["speaker_text"][row["speaker"]].count(row["text"]) == 1
    assert {r["speaker"] for r in regions} == set(entry["speakers"]) == set(entry["speaker_text"])
    assert all(line.split()[7] in entry["speakers"] for line in rttm_lines(entry["id"], regions))


def test_parse_seeds():
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]


def words(*spec: tuple[str, float, float]) -> list[TimedWord]:
    return [TimedWord(*s) for s in spec]


def test_turns_from_labelled_words_join_short_pauses_only():
    finals = [words(("a", 0.0, 0.4), ("b", 0.5, 0.9)), words(("c", 1.2, 1.6)), words(("d", 2.5, 3.0))]
    hyp = hypothesis(finals, [[0, 0], [0], [0]])
    assert [(s.start, s.end) for s in hyp.itersegments()] == [(0.0, 1.6), (2.5, 3.0)]
    hyp = hypothesis(finals, [[0, 1], [1], [0]])
    assert [(s.start, s.end, label) for s, _, label in hyp.itertracks(yield_label=True)] == [
        (0.0, 0.4, 0), (0.5, 1.6, 1), (2.5, 3.0, 0)]


def test_cpwer_counts_a_misattributed_word_twice_and_ignores_label_names():
    ref = {"ann": "hello there", "bob": "good morning"}
    said = [words(("hello", 0, 1), ("there", 1, 2)), words(("good", 3, 4), ("morning", 4, 5))]
    finals = [CommittedFinal(said[0], said[0], 2.5), CommittedFinal(said[1], said[1], 5.5)]
    assert cp_errors(ref, finals, [[7, 7], [3, 3]]) == (0, 4)
    assert cp_errors(ref, finals, [[7, 7], [7, 3]]) == (2, 4)


def test_oracle_labels_and_der_of_a_perfect_hypothesis():
    ref = Annotation()
    ref[Segment(0.0, 2.0)] = "ann"
    ref[Segment(2.5, 5.0)] = "bob"
    said = words(("a", 0.1, 1.0), ("b", 1.0, 1.9), ("c", 2.6, 4.9))
    finals = [CommittedFinal(said, said, 5.5)]
    labels = oracle_labels(finals, ref)
    assert labels == [["ann", "ann", "bob"]]
    der = DiarizationErrorRate(collar=0.25)(ref, hypothesis([f.words for f in finals], labels))
    assert der == pytest.approx(0.0, abs=1e-9)

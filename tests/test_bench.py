"""`uadf-stream bench`: the latency bookkeeping on hand-made message logs, and a --quick run against a real daemon."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools.bench_metrics import RefWord, align, file_latency, stream_words, tokens, utterances
from tools.data import corpus_wer as wer
from conftest import manifest


def _final(text: str) -> dict:
    return {"type": "final", "text": text, "words": [{"word": w} for w in text.split()]}


def _partial(text: str) -> dict:
    return {"type": "partial", "text": text}


REF = [RefWord("And", 0.2, 0.5), RefWord("so,", 0.5, 0.8), RefWord("my", 0.8, 1.0), RefWord("fellow", 1.0, 1.4),
       RefWord("Americans.", 2.6, 3.0)]


def test_align_maps_equal_and_substituted_words():
    mapping = align(tokens("and so my yellow"), tokens("And so, my fellow Americans"))
    assert {k: mapping[k] for k in range(3)} == {0: 0, 1: 1, 2: 2} and mapping[3] in (3, 4)  # a tie: both cost two edits
    assert align(["a", "x", "b"], ["a", "b"]) == {0: 0, 2: 1}
    # a reference that says the same text twice (speech-long/dev-concat): each half maps onto its own copy
    text = "they have put in a lot of money but is that enough".split()
    hyp = ["day"] + text[1:] + text[:5] + ["lots"] + text[6:]
    assert align(hyp, text + text) == {i: i for i in range(len(hyp))}


def test_utterances_split_at_pauses():
    assert utterances(REF) == [(0, 4), (4, 5)]


def test_first_seen_rewrites_and_latencies():
    messages = [
        ({"type": "ready"}, 0.0),
        (_partial("and sew"), 0.9),  # "and" shown; "sew" is wrong
        (_partial("and so my"), 1.2),  # rewrite: "sew" -> "so"
        (_final("And so,"), 1.5),
        (_partial("my fellow"), 1.6),
        (_final("my fellow"), 2.0),
        (_partial("Americans"), 3.1),
        (_final("Americans."), 3.5),
        ({"type": "end"}, 3.6),
    ]
    words, updates, rewrites = stream_words(messages)
    assert [w.word for w in words] == ["and", "so", "my", "fellow", "americans"]
    assert [w.first_seen for w in words] == [0.9, 1.2, 1.2, 1.6, 3.1]
    assert [w.final_wall for w in words] == [1.5, 1.5, 2.0, 2.0, 3.5]
    assert (updates, rewrites) == (7, 1)
    lat = file_latency(messages, REF, speed=1.0, speech=[(0.3, 1.4), (2.6, 3.0)])
    assert lat.final == pytest.approx([1.0, 0.7, 1.0, 0.6, 0.5])
    assert lat.partial == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1])
    assert lat.onset == pytest.approx([0.6, 0.5])  # VAD onset 0.3 is later than the aligned start 0.2
    assert lat.finalization == pytest.approx([0.6, 0.5])
    # at 2x speed the stream time of a word end is halved
    assert file_latency(messages, REF, speed=2.0).final[0] == pytest.approx(1.25)


def test_partial_word_far_from_its_final_position_is_not_credited():
    messages = [(_partial("what you are"), 1.0), (_final("what your country can do for you"), 3.0)]
    words, _, _ = stream_words(messages)
    assert words[0].first_seen == 1.0 and words[-1].first_seen == 3.0


def test_capacity_is_served_only_when_every_client_meets_the_word_targets():
    from tools.bench_results import CapacityLevel

    def level(clients: list[tuple[float, float]], wer: float = 0.10, errors: int = 0) -> CapacityLevel:
        per_client = [{"p50": a, "p90": b, "max": b + 1} for a, b in clients]
        return CapacityLevel("asr", len(clients), len(clients), errors, 60.0, wer, {}, {}, None, None, per_client, 0.095)

    assert level([(1.5, 3.0), (1.9, 3.4)]).served
    assert not level([(1.5, 3.0), (2.1, 3.0)]).served  # one client's median over 2.0 s
    assert not level([(1.5, 3.6)]).served  # p90 over 3.5 s
    assert not level([(1.5, 3.0)], wer=0.11).served  # WER more than a point above one stream's
    assert not level([(1.5, 3.0)], errors=1).served
    assert level([(2.4, 4.0)]).worst == {"p50": 2.4, "p90": 4.0, "max": 5.0}


def test_the_capacity_wer_slack_is_measured_against_the_clips_streamed_alone():
    from tools.bench import streamed_alone_wer
    from tools.bench_results import Clip, FileResult

    clips = [Clip("a", "long", "a.wav", "ask not what your", 2.0), Clip("b", "long", "b.wav", "country can do for", 2.0)]
    files = [FileResult("a", "long", "asr", "ask not what your", 0.0, None), FileResult("b", "long", "asr", "country can do", 0.25, None)]
    assert streamed_alone_wer(files, clips) == pytest.approx(1 / 8)
    assert streamed_alone_wer(files[:1], clips) is None  # a clip the one-stream run did not stream: no reference


def test_wer_uses_whisper_normaliser():
    assert wer(["Mister Smith, ninety-five!"], ["mr smith 95"]) == 0.0


def test_bench_keyterms_are_the_clips_rare_words_and_distractors_within_the_protocols_limit():
    """`bench --keyterms N`: a stream's list as the eval's biasing lists (tools/biasing.py), cut to N (at most the
    protocol's 100, which the eval's lists of rare words + 100 distractors pass)."""
    from streamer.protocol import MAX_KEYTERMS
    from tools.bench import meeting_keyterms
    from tools.biasing import rare_words, vocabulary

    entry = next(e for e in manifest("speech-long") if e["id"] == "dev-concat")
    terms = meeting_keyterms(entry, MAX_KEYTERMS)
    rare = rare_words(entry["text"], vocabulary())
    assert len(terms) == len(set(terms)) == MAX_KEYTERMS and set(rare) <= set(terms) and len(rare) > 5
    assert meeting_keyterms(entry, MAX_KEYTERMS) == terms and meeting_keyterms(entry, 0) == ()
    assert len(meeting_keyterms(entry, 4)) == 4 and set(meeting_keyterms(entry, 4)) <= set(rare)


@pytest.mark.timeout(240)
def test_bench_quick(tmp_path):
    manifest("speech-dev")  # skips when the data is absent
    from tools.bench import main  # `uadf-stream bench` without the other subcommands' imports

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    overall = {r["mode"]: r for r in report["overall"]}
    assert {"offline", "naive-2s", "asr"} <= set(overall)
    asr = overall["asr"]
    assert asr["files"] == 2 and not asr["errors"]
    assert 0 <= asr["wer"] < 0.5 and 0 <= overall["offline"]["wer"] < 0.5
    assert asr["final"]["n"] > 5
    assert -1.0 < asr["partial"]["p50"] <= asr["final"]["p50"] < 10.0
    assert 0 < asr["cpu_rtf"] < 2.0 and asr["rss_peak_mb"] > 50
    levels = report["capacity_levels"]
    assert [lvl["clients"] for lvl in levels] == [1, 2] and [len(lvl["per_client"]) for lvl in levels] == [1, 2]
    assert levels[1]["wer_one_stream"] == levels[0]["wer"] and levels[1]["worst_client"]["p90"] >= levels[1]["per_client"][0]["p90"]
    assert asr["final"]["p90"] <= asr["final"]["max"]
    md = (tmp_path / "bench.md").read_text()
    assert "| asr | dev |" in md and "Capacity" in md
    assert "engine ready" in (tmp_path / "daemon-asr.log").read_text()  # kept: a failed window's traceback is there
    import matplotlib.image

    for name in ("latency_cdf.png", "wer_latency.png", "capacity.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 200 and image.shape[1] > 200
        assert np.std(image[..., :3]) > 0.02, f"{name} is blank"

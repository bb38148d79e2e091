"""Speaker labels on the wire (issue 17), without a model: the start's options, the `speaker` fields of protocol v1
and the transcript store, the exports, the Deepgram and OpenAI renderings (checked against their SDKs' models),
and that a session without `diarize` loads nothing."""

from __future__ import annotations

import json

import pytest
from deepgram.listen.v1.types import ListenV1Results
from openai.types.audio import TranscriptionDiarized, TranscriptionVerbose

from core.types import Word
from streamer.audio import AudioFormat
from streamer.config import ConfigError, SpeakerOptions, load_config
from streamer.errors import StreamError
from streamer.formats import cues, to_srt, to_txt, to_vtt, turns
from streamer.protocol import Final, Start, final_from_dict, parse_client_message, to_dict, to_json
from streamer.speaker_labels import STAGE, diarizer_options, labelled, open_speakers
from streamer.store import TranscriptStore
from streamer.wire import deepgram as dg
from streamer.wire import openai_transcriptions as ot

START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}


def final(segment: int, spoken: str, start: float, endpoint: bool = False, speakers: list[int] | None = None) -> Final:
    """A final of the words in `spoken` (0.3 s each), as the processor makes it; labelled when `speakers` is given."""
    words = [Word(w, start + 0.3 * i, start + 0.3 * i + 0.25, 0.9) for i, w in enumerate(spoken.split())]
    f = Final(segment, spoken, words[0].start, words[-1].end, endpoint, words=words)
    return labelled(f, speakers) if speakers is not None else f


# -- protocol v1 ---------------------------------------------------------------------------------------------
def test_start_takes_the_speaker_options():
    start = parse_client_message(json.dumps({**START, "diarize": True, "max_speakers": 3, "speaker_threshold": 0.7}))
    assert (start.diarize, start.max_speakers, start.speaker_threshold) == (True, 3, 0.7)
    assert start.to_dict()["diarize"] is True and start.to_dict()["max_speakers"] == 3
    plain = parse_client_message(json.dumps(START))
    assert (plain.diarize, plain.max_speakers, plain.speaker_threshold) == (None, None, None)
    assert "diarize" not in plain.to_dict()


@pytest.mark.parametrize("fields", [
    {"diarize": "yes"}, {"diarize": 1}, {"max_speakers": 0}, {"max_speakers": 33}, {"max_speakers": 2.5},
    {"max_speakers": True}, {"speaker_threshold": 1.0}, {"speaker_threshold": 0}, {"speaker_threshold": "0.7"},
])
def test_bad_speaker_options_are_refused_with_their_code(fields):
    with pytest.raises(StreamError) as err:
        parse_client_message(json.dumps({**START, **fields}))
    assert err.value.code == "bad_speakers" and err.value.fatal and err.value.close_code == 1003


def test_nan_threshold_is_refused():
    with pytest.raises(StreamError, match="speaker_threshold"):
        parse_client_message('{"type":"start","sample_rate":16000,"encoding":"pcm_s16le","channels":1,"speaker_threshold":NaN}')


def test_unlabelled_final_is_what_it_was_before_speakers():
    d = to_dict(final(0, "and so my", 1.0, endpoint=True))
    assert list(d) == ["type", "segment", "text", "start", "end", "endpoint", "words"]
    assert all(list(w) == ["word", "start", "end", "probability", "fused"] for w in d["words"])


def test_labelled_final_carries_speakers_and_marks_a_change_inside():
    one = to_dict(final(0, "and so my", 1.0, speakers=[1, 1, 1]))
    assert one["speaker"] == 1 and "speaker_change" not in one and [w["speaker"] for w in one["words"]] == [1, 1, 1]
    two = final(1, "fellow Americans. Thank", 2.0, speakers=[1, 1, 0])
    d = to_dict(two)
    assert d["speaker"] == 1 and d["speaker_change"] is True and [w["speaker"] for w in d["words"]] == [1, 1, 0]
    assert final_from_dict(json.loads(to_json(two))) == two


def test_transcript_store_keeps_the_speakers(tmp_path):
    store = TranscriptStore(tmp_path, fsync=False)
    writer = store.open("a" * 32, {"mode": "asr"})
    finals = [final(0, "and so my", 1.0, speakers=[0, 0, 0]), final(1, "fellow Americans", 2.0, True, [0, 1])]
    for f in finals:
        writer.append(f)
    writer.close(3.0)
    assert store.read("a" * 32) == finals


# -- options -------------------------------------------------------------------------------------------------
def test_session_options_come_from_start_else_config():
    config = SpeakerOptions()
    fmt = AudioFormat(16000, "pcm_s16le", 1)
    assert diarizer_options(config, Start(format=fmt)) is None  # off by default
    opts = diarizer_options(config, Start(format=fmt, diarize=True, max_speakers=2))
    assert (opts.max_speakers, opts.threshold) == (2, 0.675)
    on = SpeakerOptions(diarize=True, max_speakers=4, threshold=0.6)
    assert diarizer_options(on, Start(format=fmt, diarize=False)) is None
    opts = diarizer_options(on, Start(format=fmt, speaker_threshold=0.7))
    assert (opts.max_speakers, opts.threshold) == (4, 0.7)
    with pytest.raises(ConfigError):
        load_config(overrides=["speakers.max_speakers=0"])


def test_a_session_without_diarize_touches_no_speaker_stage():
    fmt = AudioFormat(16000, "pcm_s16le", 1)
    before = (STAGE.loaded, dict(STAGE._executors), dict(STAGE._kept))
    assert open_speakers("b" * 32, Start(format=fmt), SpeakerOptions(), 0.0) is None
    assert open_speakers(None, None, SpeakerOptions(), 0.0) is None
    assert (STAGE.loaded, dict(STAGE._executors), dict(STAGE._kept)) == before  # a daemon's: test_speaker_daemon.py


# -- exports -------------------------------------------------------------------------------------------------
PLAIN = [final(0, "and so my", 1.0), final(1, "fellow Americans,", 2.0, endpoint=True), final(2, "ask not", 4.0, True)]
LABELLED = [
    final(0, "and so my", 1.0, speakers=[0, 0, 0]),
    final(1, "fellow Americans, Thank you.", 2.0, endpoint=True, speakers=[0, 0, 1, 1]),
    final(2, "ask not", 4.0, True, speakers=[0, 0]),
]


def test_exports_without_speakers_are_unchanged():
    assert to_txt(PLAIN) == "and so my fellow Americans,\nask not\n"
    assert to_srt(PLAIN) == ("1\n00:00:01,000 --> 00:00:02,550\nand so my fellow Americans,\n\n"
                             "2\n00:00:04,000 --> 00:00:04,550\nask not\n")
    assert to_vtt(PLAIN).startswith("WEBVTT\n\n00:00:01.000 --> 00:00:02.550\nand so my fellow Americans,\n")


def test_exports_carry_speakers_and_cut_cues_where_the_speaker_changes():
    assert to_txt(LABELLED) == "Speaker 1: and so my fellow Americans,\nSpeaker 2: Thank you.\nSpeaker 1: ask not\n"
    vtt = to_vtt(LABELLED)
    assert "00:00:01.000 --> 00:00:02.550\n<v Speaker 1>and so my fellow Americans,\n" in vtt
    assert "00:00:02.600 --> 00:00:03.150\n<v Speaker 2>Thank you.\n" in vtt and "<v Speaker 1>ask not" in vtt
    srt = to_srt(LABELLED)
    assert "2\n00:00:02.600".replace(".", ",") in srt and "\nSpeaker 2: Thank you.\n" in srt
    assert [c.speaker for c in cues(LABELLED)] == [0, 1, 0]


def test_a_split_keeps_the_text_as_written():
    words = [Word("It", 0, 0.2, 0.9), Word("costs", 0.3, 0.5, 0.9), Word("181", 0.6, 0.8, 0.9), Word(".8", 0.8, 0.9, 0.9),
             Word("Yes.", 1.0, 1.2, 0.9)]
    f = labelled(Final(0, "It costs 181.8 Yes.", 0, 1.2, True, words=words), [0, 0, 0, 0, 1])
    assert [(t.text, t.speaker) for t in turns(f)] == [("It costs 181.8", 0), ("Yes.", 1)]


# -- the other APIs ------------------------------------------------------------------------------------------
def test_deepgram_words_carry_speaker_and_results_name_the_diarizer():
    opts = dg.parse_query({"encoding": "linear16", "sample_rate": "16000", "diarize": "true", "punctuate": "true"}.items())
    assert opts.diarize is True and not any(w.startswith("diarize") for w in opts.warnings)
    assert dg.parse_query({"encoding": "linear16", "sample_rate": "16000"}.items()).diarize is None
    renderer = dg.Renderer(opts, "req", "tiny.en")
    results = [m for f in LABELLED for m in renderer.render(f) if m["type"] == "Results"]
    parsed = [ListenV1Results.model_validate(r) for r in results]
    assert [w.speaker for p in parsed for w in p.channel.alternatives[0].words] == [0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert parsed[0].metadata.diarize_info is not None
    plain = dg.Renderer(dg.parse_query({"encoding": "linear16", "sample_rate": "16000"}.items()), "req", "tiny.en")
    for m in plain.render(PLAIN[0]):
        assert "speaker" not in json.dumps(m) and "diarize_info" not in m["metadata"]


def test_openai_diarize_model_and_diarized_json():
    assert ot.parse_fields([("model", "gpt-4o-transcribe-diarize")]).diarize
    assert ot.parse_fields([("model", "whisper-1"), ("response_format", "diarized_json")]).diarize
    assert not ot.parse_fields([("model", "whisper-1"), ("diarize", "true")]).diarize  # not OpenAI's: ignored
    req = ot.parse_fields([("model", "gpt-4o-transcribe-diarize"), ("response_format", "diarized_json")])
    body, _ = ot.render(req, LABELLED, 5.0)
    parsed = TranscriptionDiarized.model_validate_json(body)
    assert [(s.speaker, s.text) for s in parsed.segments] == [("A", "and so my fellow Americans,"), ("B", "Thank you."), ("A", "ask not")]
    assert parsed.text == "and so my fellow Americans, Thank you. ask not"
    assert [ot.speaker_letter(k) for k in (0, 25, 26, 27)] == ["A", "Z", "AA", "AB"]


def test_openai_verbose_json_has_speakers_where_labelled():
    req = ot.parse_fields([("model", "whisper-1"), ("response_format", "verbose_json"),
                           ("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment")])
    labelled_body = json.loads(ot.render(req, LABELLED, 5.0)[0])
    TranscriptionVerbose.model_validate(labelled_body)
    assert [w["speaker"] for w in labelled_body["words"]] == ["A"] * 5 + ["B", "B", "A", "A"]
    assert [s["speaker"] for s in labelled_body["segments"]] == ["A", "B", "A"]
    plain_body = ot.render(req, PLAIN, 5.0)[0]
    assert "speaker" not in plain_body


def test_the_stage_keeps_a_session_speakers_for_its_resume(monkeypatch):
    """SpeakerStage with a fake encoder (no torch): a closed connection's diarizer is kept without its audio, a
    resume on the same daemon gets it back; a session it does not know numbers after the labels it had."""
    import asyncio

    import numpy as np

    from streamer.speaker_labels import SpeakerStage
    from streamer.speakers import DiarizerOptions

    class OneVoice:
        dim = 2

        def embed(self, pieces):
            return np.tile([1.0, 0.0], (len(pieces), 1))

    stage = SpeakerStage()
    stage._encoder = OneVoice()  # "loaded": nothing is loaded on the worker
    first = stage.open("c" * 32, DiarizerOptions(), 0.0)
    first.accept(np.full(3 * 16000, 0.1, np.float32))
    done = asyncio.run(first.label(final(0, "and so my", 0.5), until=3.0))
    assert [w.speaker for w in done.words] == [0, 0, 0] and done.speaker == 0 and not done.speaker_change
    first.close()
    assert stage._kept["c" * 32] is first.diarizer and not first.diarizer._chunks
    again = stage.open("c" * 32, DiarizerOptions(threshold=0.6), 3.0)
    assert again.diarizer is first.diarizer and again.diarizer.options.threshold == 0.6 and "c" * 32 not in stage._kept
    unknown = stage.open("d" * 32, DiarizerOptions(), 4.0, previous=[final(0, "fellow Americans", 1.0, speakers=[0, 4])])
    assert unknown.diarizer.first_label == 5
    stage.executor.shutdown()


def test_a_final_held_for_an_embedding_does_not_queue_behind_the_worker():
    """The worker embeds every session's new audio, one job at a time, at a lower CPU priority; a final whose
    context is not made yet is labelled on a thread of its own, so it waits for its own embedding, not for that
    queue (here: a worker stuck on another job)."""
    import asyncio
    import os
    import threading

    import numpy as np

    from streamer.speaker_labels import BACKGROUND_NICE, SpeakerStage
    from streamer.speakers import DiarizerOptions

    class OneVoice:
        dim = 2

        def embed(self, pieces):
            return np.tile([1.0, 0.0], (len(pieces), 1))

    stage = SpeakerStage()
    stage._encoder = OneVoice()
    busy = threading.Event()
    stage.executor.submit(busy.wait, 30)  # the worker is busy: this session's embeddings ahead wait behind it
    session = stage.open("e" * 32, DiarizerOptions(), 0.0)
    session.accept(np.full(3 * 16000, 0.1, np.float32))
    try:
        done = asyncio.run(asyncio.wait_for(session.label(final(0, "and so my", 0.5), until=3.0), 10))
        assert [w.speaker for w in done.words] == [0, 0, 0] and session.stats.held == 1
    finally:
        busy.set()
    # the worker runs below the decode threads' CPU priority (Linux), the held thread at theirs
    nice = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # noqa: E731
    assert stage.executor.submit(nice).result() == nice() + BACKGROUND_NICE
    assert stage.held.submit(nice).result() == nice()
    stage.executor.shutdown()
    stage.held.shutdown()


def test_the_labeller_judges_whisper_times_and_the_wire_carries_the_fitted_ones():
    """A final's words are fitted to the speech (word_times.py); `aligned` keeps Whisper's times for the speaker
    labeller (its runs are cut at pauses between those), and is never sent, stored or compared."""
    from dataclasses import replace

    from streamer.speaker_labels import _judged

    whisper = final(0, "may be", 2.4)
    fitted = replace(whisper, words=[replace(w, start=w.start + 0.1) for w in whisper.words], aligned=whisper.words)
    assert _judged(fitted) == whisper.words and _judged(whisper) == whisper.words
    assert "aligned" not in to_dict(fitted) and to_dict(fitted)["words"][0]["start"] == 2.5
    assert replace(fitted, aligned=[]) == fitted  # not compared: a final read back from the store equals the one sent

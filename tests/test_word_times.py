"""Final words fitted to the speech they cover (streamer/word_times.py): the rule on synthetic audio, and the
real pipeline on a built two-speaker stream, whose turns are separated by silence that Whisper's word times
cover."""

from __future__ import annotations

import numpy as np

from conftest import required
from core.types import SAMPLE_RATE, Word
from streamer.pipeline import run_stream
from streamer.word_times import fit_to_speech


def seconds(s: float) -> int:
    return int(s * SAMPLE_RATE)


def tone(s: float, level: float) -> np.ndarray:
    return (level * np.sin(np.arange(seconds(s)) * 0.3)).astype(np.float32)


def test_a_word_stretched_over_silence_is_cut_to_its_speech():
    audio = np.concatenate([np.zeros(seconds(0.5)), tone(0.4, 0.3), np.zeros(seconds(0.6)), tone(0.3, 0.3)]).astype(np.float32)
    words = [Word("ask", 0.3, 1.4, 0.9), Word("not", 1.4, 1.8, 0.9)]
    fitted = fit_to_speech(words, audio, origin=0.0)
    assert [(w.start, w.end) for w in fitted] == [(0.5, 0.9), (1.5, 1.8)]
    assert [w.word for w in fitted] == ["ask", "not"] and fitted[0].probability == 0.9


def test_audio_from_a_later_origin_and_a_word_partly_outside_it():
    audio = np.concatenate([np.zeros(seconds(0.3)), tone(0.5, 0.3), np.zeros(seconds(0.2))]).astype(np.float32)
    fitted = fit_to_speech([Word("so", 9.9, 10.9, 0.5)], audio, origin=10.0)  # starts before the audio kept
    assert (fitted[0].start, fitted[0].end) == (10.3, 10.8)


def test_noise_within_quiet_db_of_the_speech_and_a_silent_word_keep_their_times():
    rng = np.random.default_rng(0)
    noisy = np.concatenate([0.01 * rng.standard_normal(seconds(0.5)), tone(0.4, 0.3), 0.01 * rng.standard_normal(seconds(0.6))])
    words = [Word("ask", 0.3, 1.4, 0.9)]
    assert fit_to_speech(words, noisy.astype(np.float32), 0.0) == words  # pauses 27 dB below the speech: speech
    assert fit_to_speech(words, np.zeros(seconds(2), np.float32), 0.0) == words  # nothing voiced: as it was


def test_finals_show_the_pause_between_two_speakers(engine):
    """LJSpeech, then JFK after a pause of silence (built stream, seed 4): Whisper's word times run on through
    the pause; the finals' words end where LJSpeech stops and start where JFK does (within 0.15 s of the
    reference turns), and the processor's own commits are those of Whisper's times."""
    from tools.meeting_streams import DATA, StreamOptions, build_stream, load_clips

    required(DATA / "manifest.jsonl")
    audio, entry = build_stream(4, load_clips(), StreamOptions(cast=("lj", "jfk"), main_seconds=8.0))
    lj, jfk = entry["segments"][:2]
    result = run_stream(engine, engine.new_processor("asr"), audio[: seconds(jfk["end"] + 0.5)])
    words = [w for f in result.finals for w in f.words]
    before = max((w for w in words if w.start < lj["end"]), key=lambda w: w.start)
    after = min((w for w in words if w.start >= before.end and w is not before), key=lambda w: w.start)
    assert abs(before.end - lj["end"]) <= 0.15 and abs(after.start - jfk["start"]) <= 0.15, (before, after, lj, jfk)
    assert all(f.start == f.words[0].start and f.end == f.words[-1].end for f in result.finals if f.words)

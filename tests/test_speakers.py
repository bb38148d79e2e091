"""Speaker labels: the online clusterer's rules (pure logic, a table of voices) and the real GE2E encoder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from conftest import required
from streamer.audio import SAMPLE_RATE, load_audio
from streamer.ge2e import Ge2eEncoder
from streamer.speakers import DiarizerOptions, OnlineDiarizer
from tools.data import DATA

DEV = DATA / "speech-dev"


@dataclass
class W:
    word: str
    start: float
    end: float


class VoiceTable:
    """Fake encoder: sample value k/100 is voice k; a piece's embedding mixes its voices' vectors by duration."""

    def __init__(self, vectors: dict[int, np.ndarray]):
        self.vectors = {k: v / np.linalg.norm(v) for k, v in vectors.items()}
        self.dim = len(next(iter(vectors.values())))
        self.calls = 0

    def embed(self, pieces):
        self.calls += 1
        out = []
        for p in pieces:
            ids, counts = np.unique(np.rint(np.asarray(p) * 100).astype(int), return_counts=True)
            v = sum((c * self.vectors[k] for k, c in zip(ids, counts) if k in self.vectors), np.zeros(self.dim))
            out.append(v / max(np.linalg.norm(v), 1e-9))
        return np.array(out)


def voices(*cosines: float) -> VoiceTable:
    """Voice 1 along x; voice k+2 at the given cosine to voice 1, all others orthogonal to each other."""
    vectors = {1: np.eye(8)[0]}
    for k, c in enumerate(cosines):
        vectors[k + 2] = c * np.eye(8)[0] + np.sqrt(1 - c * c) * np.eye(8)[k + 1]
    return VoiceTable(vectors)


def script(*turns: tuple[int, float], pause: float = 0.8) -> tuple[np.ndarray, list[list[W]], list[int]]:
    """Audio of (voice, seconds) turns with pauses between, finals of two 0.4 s words, the true voice per word."""
    audio, finals, truth, t = [], [], [], 0.0
    for voice, seconds in turns:
        audio.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
        t += pause
        n = max(1, int(round(seconds / 0.4)))
        words = [W(f"w{i}", t + 0.4 * i, t + 0.4 * (i + 1)) for i in range(n)]
        finals.extend(words[i : i + 2] for i in range(0, n, 2))
        truth.extend([voice] * n)
        audio.append(np.full(int(0.4 * n * SAMPLE_RATE), voice / 100, np.float32))
        t += 0.4 * n
    audio.append(np.zeros(SAMPLE_RATE, np.float32))
    return np.concatenate(audio), finals, truth


def run(diarizer: OnlineDiarizer, audio: np.ndarray, finals: list[list[W]], lookahead: float = 0.8) -> list[list[int]]:
    """Feed audio up to each final's end plus the lookahead a session has, label it; the returned lists."""
    out, fed = [], 0
    for words in finals:
        upto = min(int((words[-1].end + lookahead) * SAMPLE_RATE), len(audio))
        diarizer.accept(audio[fed:upto])
        fed = max(fed, upto)
        out.append(diarizer.label(words))
    return out


def flat(labels: list[list[int]]) -> list[int]:
    return [x for ls in labels for x in ls]


def test_turns_get_speakers_in_order_of_first_appearance():
    audio, finals, truth = script((1, 3.0), (2, 2.4), (1, 2.0), (3, 2.4), (2, 1.6))
    labels = flat(run(OnlineDiarizer(voices(0.2, 0.1)), audio, finals))
    assert labels == [{1: 0, 2: 1, 3: 2}[v] for v in truth]


def test_labels_once_given_never_change():
    diarizer = OnlineDiarizer(voices(0.1, 0.2))
    audio, finals, truth = script((1, 3.2), (2, 2.4), (3, 3.2), (1, 3.2), (2, 2.4))
    given = []
    fed = 0
    for words in finals:
        upto = min(int((words[-1].end + 0.8) * SAMPLE_RATE), len(audio))
        diarizer.accept(audio[fed:upto])
        fed = upto
        labels = diarizer.label(words)
        given.append((labels, list(labels)))
    assert all(returned == copy for returned, copy in given)  # nothing handed out is touched afterwards
    assert [x for _, copy in given for x in copy] == [{1: 0, 2: 1, 3: 2}[v] for v in truth]  # voices come back


def test_centroids_follow_the_speech_they_are_given():
    # voice 2 is a second register of voice 1 (cosine 0.7: it joins), voice 3 is near voice 2 only: it matches
    # the speaker once voice 2's speech has moved the centroid, not before
    vectors = {1: np.eye(8)[0], 2: 0.7 * np.eye(8)[0] + np.sqrt(0.51) * np.eye(8)[1]}
    vectors[3] = 0.3 * np.eye(8)[0] + np.sqrt(0.91) * np.eye(8)[1]
    audio, finals, _ = script((1, 2.4), (2, 6.0), (3, 2.4))
    labels = flat(run(OnlineDiarizer(VoiceTable(vectors)), audio, finals))
    assert set(labels) == {0}
    audio, finals, _ = script((1, 2.4), (3, 2.4))
    assert flat(run(OnlineDiarizer(VoiceTable(vectors)), audio, finals))[-6:] == [1] * 6


def test_max_speakers_is_respected():
    audio, finals, _ = script((1, 2.4), (2, 2.4), (3, 2.4), (4, 2.4), (1, 2.4))
    labels = flat(run(OnlineDiarizer(voices(0.0, 0.0, 0.0), DiarizerOptions(max_speakers=2)), audio, finals))
    assert set(labels) == {0, 1}
    assert labels[:6] == [0] * 6 and labels[6:12] == [1] * 6 and labels[-6:] == [0] * 6


@pytest.mark.parametrize("threshold, expected", [(0.45, 1), (0.55, 2)])
def test_threshold_decides_between_joining_and_a_new_speaker(threshold, expected):
    audio, finals, _ = script((1, 2.4), (2, 2.4))  # cosine 0.5 between the two voices
    labels = flat(run(OnlineDiarizer(voices(0.5), DiarizerOptions(threshold=threshold)), audio, finals))
    assert len(set(labels)) == expected


def test_short_piece_cannot_start_a_speaker():
    # a 0.4 s word of a new voice, alone between pauses, with no audio after it: too little to tell
    audio, finals, _ = script((1, 2.4), (2, 0.4), pause=1.0)
    labels = flat(run(OnlineDiarizer(voices(0.0), DiarizerOptions(min_context=1.0)), audio, finals, lookahead=0.0))
    assert labels == [0] * 7


def test_change_of_speaker_inside_one_final():
    # fusion modes commit a whole utterance at once: one final that holds two turns 0.4 s apart
    audio, finals, truth = script((1, 3.2), (2, 3.2), pause=0.4)
    words = [w for f in finals for w in f]
    diarizer = OnlineDiarizer(voices(0.0))
    diarizer.accept(audio)
    assert diarizer.label(words) == [{1: 0, 2: 1}[v] for v in truth]


def test_a_young_speaker_whose_run_comes_to_match_a_known_one_is_retired():
    # voice 1 speaks 9.6 s; then one run (no pause) opens with 1.6 s of voice 3 (cosine 0.5 to voice 1: a new
    # speaker) and goes on in voice 1. The young speaker keeps matching its run (its centroid holds the mixed
    # contexts), so without `confirm` the voice is split; with it the run goes back to speaker 0
    audio, finals, _ = script((1, 9.6))
    t, words = len(audio) / SAMPLE_RATE, []
    for voice, seconds in ((3, 1.6), (1, 3.2)):
        words += [W("w", t + 0.4 * i, t + 0.4 * (i + 1)) for i in range(int(round(seconds / 0.4)))]
        audio = np.concatenate([audio, np.full(int(seconds * SAMPLE_RATE), voice / 100, np.float32)])
        t += seconds
    audio = np.concatenate([audio, np.zeros(SAMPLE_RATE, np.float32)])
    finals += [words[i : i + 2] for i in range(0, len(words), 2)]
    split = OnlineDiarizer(voices(0.5, 0.5), DiarizerOptions(confirm=0.0))
    assert flat(run(split, audio, finals))[-12:] == [1] * 12
    diarizer = OnlineDiarizer(voices(0.5, 0.5), DiarizerOptions(confirm=4.0))
    assert flat(run(diarizer, audio, finals))[-12:] == [1] * 4 + [0] * 8  # given labels stay
    assert diarizer.speakers[1].retired


def test_a_run_starts_at_most_one_new_speaker_after_its_first_words():
    """One run (no pause): voice 1 for 9.6 s, then a second voice whose 2 s contexts come out unlike each other
    (registers 3 and 4 at cosine 0.5, as the contexts of a noisy recording's pauses do). Its first context starts
    a speaker inside the run; the next, unlike that young speaker, keeps it instead of starting a third (JFK's
    turn in test_speaker_daemon came out as three speakers when the final boundaries fell so)."""
    e = np.eye(8)
    table = VoiceTable({1: e[0], 3: e[1], 4: 0.5 * e[1] + np.sqrt(0.75) * e[2]})
    audio, words, t = [np.zeros(int(0.8 * SAMPLE_RATE), np.float32)], [], 0.8
    for voice, seconds in ((1, 9.6), (3, 2.4), (4, 2.4), (3, 2.4)):
        words += [W("w", t + 0.4 * i, t + 0.4 * (i + 1)) for i in range(int(round(seconds / 0.4)))]
        audio.append(np.full(int(seconds * SAMPLE_RATE), voice / 100, np.float32))
        t += seconds
    audio.append(np.zeros(SAMPLE_RATE, np.float32))
    labels = flat(run(OnlineDiarizer(table), np.concatenate(audio), [words[i : i + 2] for i in range(0, len(words), 2)]))
    assert labels == [0] * 24 + [1] * 18


def test_a_turn_whose_pause_the_audio_does_not_show_is_labelled_from_a_context_made_ahead():
    """The words show a pause (2.4 s to 3.0 s) where the audio holds room noise, not quiet: no context starts
    there, so the second voice's first final takes the one prepared context that starts after the first
    voice's last word, a lookup; nothing is embedded at a final."""
    table = voices(0.0)
    t = lambda s: int(s * SAMPLE_RATE)  # noqa: E731
    audio = np.concatenate([np.zeros(t(0.8)), np.full(t(1.6), 0.01), np.full(t(0.6), 0.004), np.full(t(2.0), 0.02), np.zeros(t(1.0))]).astype(np.float32)
    words = [W("w", 0.8 + 0.4 * i, 1.2 + 0.4 * i) for i in range(4)] + [W("w", 3.0 + 0.4 * i, 3.4 + 0.4 * i) for i in range(5)]
    finals = [words[0:2], words[2:4], words[4:6], words[6:8], words[8:9]]
    diarizer = OnlineDiarizer(table)
    labels, fed = [], 0
    for final in finals:
        upto = min(t(final[-1].end + 0.8), len(audio))
        for i in range(fed, upto, 1600):
            diarizer.accept(audio[i : min(i + 1600, upto)])
            diarizer.prepare()
        fed = max(fed, upto)
        got = diarizer.label(final, until=upto / SAMPLE_RATE, compute=False)
        assert got is not None, final
        labels += got
    assert labels == [0] * 4 + [1] * 5 and diarizer.embedded_on_label == 0


def test_long_final_is_cut_into_context_sized_pieces():
    words = [W("w", 0.4 * i, 0.4 * (i + 1)) for i in range(15)]  # 6 s without a pause
    words[10:] = [W("w", w.start + 0.5, w.end + 0.5) for w in words[10:]]  # one pause after 4 s
    spans = OnlineDiarizer(voices(), DiarizerOptions(context=2.0, pause=0.3)).pieces(words)
    assert spans[0][0] == 0 and spans[-1][1] == 15 and all(a < b for a, b in spans)
    assert (10 in {a for a, _ in spans}) and len(spans) == 3


def test_rechecks_inside_a_run_are_rate_limited():
    table = voices()
    audio, finals, _ = script((1, 8.0))
    run(OnlineDiarizer(table, DiarizerOptions(recheck=2.0)), audio, finals)
    assert table.calls <= 5  # 10 finals over 8 s of one run: the first, then one every 2 s


def dev_clip(name: str) -> np.ndarray:
    return load_audio(str(required(DEV / f"{name}.wav")))


@pytest.fixture(scope="module")
def encoder():
    """The real encoder, run as the daemon runs torch (fusion.threads = 1): two threads cost 4-6x the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Ge2eEncoder()
    torch.set_num_threads(threads)


def clips_as_stream(*clips: np.ndarray, pause: float = 0.8) -> tuple[np.ndarray, list[list[W]], list[int]]:
    """Clips joined with pauses; pseudo-words of 0.5 s over each clip, finals of two words."""
    audio, finals, truth, t = [], [], [], 0.0
    for k, clip in enumerate(clips):
        audio += [np.zeros(int(pause * SAMPLE_RATE), np.float32), clip]
        t += pause
        n = int(len(clip) / SAMPLE_RATE / 0.5)
        words = [W("w", t + 0.5 * i, t + 0.5 * (i + 1)) for i in range(n)]
        finals += [words[i : i + 2] for i in range(0, n, 2)]
        truth += [k] * n
        t += len(clip) / SAMPLE_RATE
    return np.concatenate(audio), finals, truth


def test_real_voices_two_speakers_get_two_labels(encoder):
    audio, finals, truth = clips_as_stream(dev_clip("jfk"), dev_clip("ljspeech_LJ001-0001"))
    labels = flat(run(OnlineDiarizer(encoder), audio, finals))
    first, second = labels[: truth.count(0)], labels[truth.count(0) :]
    assert set(first) == {0}
    assert second.count(1) >= 0.9 * len(second)


def test_real_voices_same_speaker_twice_gets_one_label(encoder):
    audio, finals, _ = clips_as_stream(dev_clip("ljspeech_LJ001-0001"), dev_clip("ljspeech_LJ001-0003"))
    assert set(flat(run(OnlineDiarizer(encoder), audio, finals))) == {0}


class Counting:
    """The real encoder, counting the contexts it embeds."""

    def __init__(self, encoder: Ge2eEncoder):
        self.encoder, self.dim, self.pieces = encoder, encoder.dim, 0

    def embed(self, pieces):
        self.pieces += len(pieces)
        return self.encoder.embed(pieces)


def test_a_final_is_labelled_from_embeddings_made_as_the_audio_came(encoder):
    """No latency for labels: the audio comes in 0.1 s frames and the speaker worker embeds it as it comes
    (`prepare`); at each final the label is a lookup, no embedding made for it (`compute=False` would say None)."""
    audio, finals, truth = clips_as_stream(dev_clip("jfk"), dev_clip("ljspeech_LJ001-0001"), dev_clip("jfk")[: 4 * SAMPLE_RATE])
    counting = Counting(encoder)
    diarizer = OnlineDiarizer(counting)
    labels, fed = [], 0
    for words in finals:
        upto = min(int((words[-1].end + 0.8) * SAMPLE_RATE), len(audio))
        for i in range(fed, upto, 1600):
            diarizer.accept(audio[i : min(i + 1600, upto)])
            diarizer.prepare()
        fed = max(fed, upto)
        before = counting.pieces
        got = diarizer.label(words, until=upto / SAMPLE_RATE, compute=False)
        assert got is not None and counting.pieces == before, words
        labels += got
    assert diarizer.embedded_on_label == 0 and counting.pieces > 0
    assert labels == [{0: 0, 1: 1, 2: 0}[v] for v in truth]


def test_encoder_embeddings_are_unit_vectors_and_tell_voices_apart(encoder):
    lj1, lj3, jfk = dev_clip("ljspeech_LJ001-0001"), dev_clip("ljspeech_LJ001-0003"), dev_clip("jfk")
    e = encoder.embed([lj1[: 3 * SAMPLE_RATE], lj3[: 3 * SAMPLE_RATE], jfk[: 3 * SAMPLE_RATE], lj1[:4000]])
    assert e.shape == (4, 256) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.15
    # pieces shorter than one partial run in one packed pass, each to its own length: as if alone
    short = [lj1[:4000], jfk[: SAMPLE_RATE], lj3[:20000]]
    assert np.allclose(encoder.embed(short), np.concatenate([encoder.embed([p]) for p in short]), atol=1e-5)


# -- the audio a session's diarizer keeps (streamer/speaker_labels.py feeds it from the event loop) ----------
def test_audio_in_small_chunks_labels_as_in_one_piece():
    audio, finals, truth = script((1, 3.2), (2, 2.4), (1, 2.4))
    whole = flat(run(OnlineDiarizer(voices(0.1)), audio, finals))
    chunked = OnlineDiarizer(voices(0.1))
    labels, fed = [], 0
    for words in finals:  # 0.1 s frames, as a live client sends them: contexts cross chunk edges
        upto = min(int((words[-1].end + 0.8) * SAMPLE_RATE), len(audio))
        for i in range(fed, upto, 1600):
            chunked.accept(audio[i : min(i + 1600, upto)])
        fed = max(fed, upto)
        labels += chunked.label(words)
    assert labels == whole == [{1: 0, 2: 1}[v] for v in truth]


def test_until_makes_an_upload_label_as_a_live_stream():
    # an upload gives the diarizer all its audio first; each final may only use what a live stream had. Here
    # finals come without audio after them (lookahead 0): voice 2's first words are too short a context to
    # start a speaker, so a live stream labels them 0; the audio after them would have made them 1
    audio, finals, _ = script((1, 2.4), (2, 2.4), pause=0.3)
    live = flat(run(OnlineDiarizer(voices(0.0)), audio, finals, lookahead=0.0))
    assert live == [0] * 10 + [1] * 2
    upload = OnlineDiarizer(voices(0.0))
    upload.accept(audio)
    assert flat([upload.label(words, until=words[-1].end) for words in finals]) == live
    everything = OnlineDiarizer(voices(0.0))
    everything.accept(audio)
    assert flat([everything.label(words) for words in finals]) == [0] * 6 + [1] * 6


def test_only_the_history_is_kept():
    diarizer = OnlineDiarizer(voices(), DiarizerOptions(history=5.0), start_time=2.0)
    for _ in range(200):  # 20 s in 0.1 s chunks
        diarizer.accept(np.full(1600, 0.01, np.float32))
    kept = sum(len(a) for _, a in diarizer._chunks) / SAMPLE_RATE
    assert 5.0 <= kept < 5.1 and diarizer.audio_end == pytest.approx(22.0)


def test_a_resumed_diarizer_keeps_its_speakers_and_a_restarted_one_numbers_after_the_old_labels():
    audio, finals, _ = script((1, 2.4), (2, 2.4))
    diarizer = OnlineDiarizer(voices(0.0))
    assert set(flat(run(diarizer, audio, finals))) == {0, 1}
    # the connection drops; the stream goes on at `offset` with voice 2 then voice 1
    offset = len(audio) / SAMPLE_RATE
    diarizer.restart_audio(offset)
    assert diarizer.audio_end == offset and not diarizer._chunks and not diarizer.unprepared  # nothing before `offset` to embed
    audio2, finals2, _ = script((2, 2.4), (1, 2.4))
    moved = [[W(w.word, w.start + offset, w.end + offset) for w in f] for f in finals2]
    out, fed = [], 0
    for words in moved:
        upto = min(int((words[-1].end - offset + 0.8) * SAMPLE_RATE), len(audio2))
        diarizer.accept(audio2[fed:upto])
        fed = max(fed, upto)
        out += diarizer.label(words)
    assert out == [1] * 6 + [0] * 6
    # a daemon restarted: the voices are new to it, numbered after the labels the session had
    fresh = flat(run(OnlineDiarizer(voices(0.0), first_label=2), audio, finals))
    assert fresh == [2] * 6 + [3] * 6

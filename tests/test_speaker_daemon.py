"""Speaker labels end to end (issue 17): a real daemon, the real GE2E encoder, a two-speaker meeting-like stream
built from the dev speakers (tools/meeting_streams.py), over protocol v1 (with a resume), the Deepgram SDK and the
openai package; and a daemon whose sessions never ask loads no speaker model.

Whether a daemon loaded the encoder is read from its log ("speaker encoder loaded"): torch itself is in every
`uadf-stream` process (the tools' subcommands import the fusion package), so its mapped libraries tell nothing."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
from unittest.mock import ANY

import numpy as np
import pytest
import soundfile as sf
import websockets
from deepgram import DeepgramClient
from openai import OpenAI
from openai.types.audio import TranscriptionDiarized

from clients.stream import to_pcm16
from compat_util import environment
from conftest import required
from streamer.audio import SAMPLE_RATE
from tools.daemon_process import start_daemon, stop_daemon
from tools.meeting_streams import DATA, StreamOptions, build_stream, load_clips

START = {"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "channels": 1}
FRAME = 3200  # bytes: 0.1 s of 16 kHz 16-bit audio
SPLIT = 14.2  # seconds: the pause between the second and the third turn, where the connection drops


@pytest.fixture(scope="module")
def meeting() -> tuple[np.ndarray, dict]:
    """26.6 s: LJSpeech and JFK taking five turns (seed 4), with reference turns."""
    required(DATA / "manifest.jsonl")
    audio, entry = build_stream(4, load_clips(), StreamOptions(cast=("lj", "jfk"), main_seconds=8.0))
    assert [s["speaker"] for s in entry["segments"]] == ["lj", "jfk", "lj", "jfk", "lj"]
    return audio, entry


@pytest.fixture(scope="module")
def speaker_daemon(tmp_path_factory):
    """A daemon of its own: the shared one must stay without the speaker model (test_off_daemon_loads_nothing)."""
    d = start_daemon(tmp_path_factory.mktemp("speakers"), "--set", "server.max_rate=0")
    yield d
    stop_daemon(d)


def encoder_loaded(daemon) -> bool:
    return "speaker encoder loaded" in daemon.log.read_text()


def speakers_of(finals: list[dict]) -> list[int]:
    return [w["speaker"] for f in finals for w in f["words"]]


def follows_the_speakers(words: list[tuple[float, float, int]], segments: list[dict], least: float = 0.8) -> None:
    """Assert that the labels follow who spoke: each reference speaker's words (by their middle, in a reference
    turn) mostly carry one label, a different one for each speaker, and at least `least` of them carry it."""
    by_speaker: dict[str, list[int]] = {}
    for start, end, label in words:
        mid = (start + end) / 2
        turn = min(segments, key=lambda s: max(s["start"] - mid, mid - s["end"], 0.0))
        by_speaker.setdefault(turn["speaker"], []).append(label)
    majority = {who: max(set(labels), key=labels.count) for who, labels in by_speaker.items()}
    agree = sum(labels.count(majority[who]) for who, labels in by_speaker.items()) / len(words)
    assert len(by_speaker) >= 2 and len(set(majority.values())) == len(majority), (majority, by_speaker)
    assert agree >= least, (agree, by_speaker)


async def _send(ws, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME):
        await ws.send(pcm[i : i + FRAME])
        await asyncio.sleep(0.01)


async def live_with_a_drop(url: str, audio: np.ndarray) -> tuple[dict, float, list[dict]]:
    """The first part of the stream, a drop (the server turns what it has into finals), a resume from the
    start (every final sent again), the rest, stop. Returns the first `ready`, the stream time the resume goes
    on from, and the finals after the resume."""
    pcm = to_pcm16(audio)
    cut = int(SPLIT * SAMPLE_RATE) * 2
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "diarize": True}))
        ready = json.loads(await ws.recv())
        await _send(ws, pcm[:cut])
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "diarize": True, "session_id": ready["session_id"],
                                  "resume_token": ready["resume_token"], "resume_from": 0}))
        resumed = json.loads(await ws.recv())
        assert resumed["resumed"] and SPLIT - 1 < resumed["stream_time"] <= SPLIT
        await _send(ws, pcm[cut:])
        await ws.send(json.dumps({"type": "stop"}))
        messages = [json.loads(m) async for m in ws]
    assert messages[-1]["type"] == "end"
    return ready, resumed["stream_time"], [m for m in messages if m["type"] == "final"]


def test_live_session_labels_speakers_never_changes_them_and_keeps_them_across_a_resume(speaker_daemon, meeting):
    audio, entry = meeting
    ready, drop, finals = asyncio.run(live_with_a_drop(speaker_daemon.ws_url, audio))
    assert [f["segment"] for f in finals] == list(range(len(finals)))  # numbered without gaps, never revised
    resent = [f for f in finals if f["end"] <= drop]
    after = finals[len(resent) :]
    assert resent and after
    words = speakers_of(finals)
    assert all(isinstance(s, int) for s in words) and len(set(words)) >= 2, words
    follows_the_speakers([(w["start"], w["end"], w["speaker"]) for f in finals for w in f["words"]], entry["segments"])
    assert all(f["speaker"] == f["words"][0]["speaker"] for f in finals if f["words"])
    assert all(f.get("speaker_change", False) == (len({w["speaker"] for w in f["words"]}) > 1) for f in finals)
    # the speakers known before the drop are known after it (the diarizer is kept for the resume)
    assert set(speakers_of(resent)) & set(speakers_of(after))
    # labels never change: the transcript store holds exactly what was sent
    sid, token = ready["session_id"], ready["resume_token"]
    with speaker_daemon.get(f"/v1/sessions/{sid}/transcript?resume_token={token}") as r:
        stored = json.loads(r.read())["finals"]
    assert stored == finals
    # exports carry the speakers
    exports = {}
    for fmt in ("txt", "srt", "vtt"):
        with speaker_daemon.get(f"/v1/sessions/{sid}/transcript?format={fmt}&resume_token={token}") as r:
            exports[fmt] = r.read().decode()
    names = {f"Speaker {k + 1}" for k in words}
    assert all(f"<v {n}>" in exports["vtt"] for n in names), exports["vtt"]
    assert all(f"{n}: " in exports["txt"] and f"{n}: " in exports["srt"] for n in names)
    assert encoder_loaded(speaker_daemon)  # the check of test_off_daemon_loads_nothing can fail: here it is loaded


def test_deepgram_sdk_gets_speaker_on_words(speaker_daemon, meeting):
    audio, entry = meeting
    pcm = to_pcm16(audio[: int(SPLIT * SAMPLE_RATE)])  # LJSpeech, then JFK
    client = DeepgramClient(api_key="any", environment=environment(speaker_daemon))
    with client.listen.v1.connect(model="asr", encoding="linear16", sample_rate=SAMPLE_RATE, diarize=True, punctuate=True) as conn:
        for i in range(0, len(pcm), FRAME):
            conn.send_media(pcm[i : i + FRAME])
        conn.send_close_stream()
        received = list(conn)
    results = [m for m in received if m.type == "Results" and m.is_final]
    words = [w for m in results for w in m.channel.alternatives[0].words]
    assert words and all(isinstance(w.speaker, int) for w in words)
    follows_the_speakers([(w.start, w.end, w.speaker) for w in words], entry["segments"])
    assert all(m.metadata.diarize_info is not None for m in results if m.channel.alternatives[0].words)


def test_openai_diarized_json_labels_the_same_words_as_without(speaker_daemon, meeting):
    """The openai package's `diarized_json` (OpenAI's diarizing model) beside a plain `verbose_json` upload of
    the same file: speaker segments that follow who spoke, and otherwise the same transcript."""
    audio, entry = meeting
    wav = io.BytesIO()
    sf.write(wav, audio[: int(SPLIT * SAMPLE_RATE)], SAMPLE_RATE, format="WAV", subtype="PCM_16")  # LJSpeech, JFK
    client = OpenAI(base_url=f"{speaker_daemon.http_url}/v1", api_key="any")

    def upload(model: str, **kwargs):
        raw = client.audio.transcriptions.with_raw_response.create(
            model=model, file=("meeting.wav", wav.getvalue(), "audio/wav"), **kwargs
        )
        with speaker_daemon.get(f"/v1/sessions/{raw.headers['X-Session-Id']}/transcript?resume_token={raw.headers['X-Resume-Token']}") as r:
            return raw.parse(), json.loads(r.read())["finals"]

    plain, stored_plain = upload("asr", response_format="verbose_json", timestamp_granularities=["word"])
    diarized, stored = upload("gpt-4o-transcribe-diarize", response_format="diarized_json")  # one after the other:
    # decoded in one batch with another stream, the same audio can come out different
    assert isinstance(diarized, TranscriptionDiarized) and diarized.segments
    assert "speaker" not in json.dumps(plain.model_dump()) and "speaker" not in json.dumps(stored_plain)
    letters = {s.speaker for s in diarized.segments}
    follows_the_speakers([(s.start, s.end, s.speaker) for s in diarized.segments], entry["segments"])
    assert letters <= {"A", "B", "C"} and diarized.segments[0].speaker == "A"
    assert diarized.text == plain.text == " ".join(s.text for s in diarized.segments)
    # speaker labels change nothing else: the same finals, words and times, each word with its speaker
    assert [{k: v for k, v in f.items() if k not in ("speaker", "speaker_change")} for f in stored] == [
        {**f, "words": [{**w, "speaker": ANY} for w in f["words"]]} for f in stored_plain
    ]
    assert all(isinstance(w["speaker"], int) for f in stored for w in f["words"])


def test_off_daemon_loads_nothing(daemon):
    """The shared daemon's sessions never ask for speakers (any test's): the speaker encoder is never loaded."""
    request = urllib.request.Request(daemon.http_url + "/healthz")
    with urllib.request.urlopen(request, timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"

    async def session() -> list[dict]:
        async with websockets.connect(daemon.ws_url) as ws:
            await ws.send(json.dumps({**START, "diarize": False}))
            await ws.send(to_pcm16(np.zeros(SAMPLE_RATE, np.float32)))
            await ws.send(json.dumps({"type": "stop"}))
            return [json.loads(m) async for m in ws]

    messages = asyncio.run(session())
    assert messages[0]["type"] == "ready" and messages[-1]["type"] == "end" and "speaker" not in json.dumps(messages)
    assert "session" in daemon.log.read_text() and not encoder_loaded(daemon)


@pytest.mark.heavy  # loads Whisper and the speaker encoder in the test process: 25 s
def test_transcribe_command_prints_speakers(meeting, tmp_path, capsys):
    """`uadf-stream transcribe --diarize`: the in-process pipeline labels its finals as the daemon does."""
    from streamer.cli import main

    audio, _ = meeting
    path = tmp_path / "meeting.wav"
    sf.write(path, audio[: int(SPLIT * SAMPLE_RATE)], SAMPLE_RATE, subtype="PCM_16")  # LJSpeech, then JFK
    assert main(["transcribe", "--llm", "", "--diarize", "--max-speakers", "3", str(path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines and all("] Speaker " in line for line in lines)
    assert {"Speaker 1:", "Speaker 2:"} <= {line.split("] ")[1][:10] for line in lines}, lines

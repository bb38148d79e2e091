"""The daemon end to end: real server process, real websockets, real model, real speech."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import websockets

from clients.stream import connect, stream_audio, to_pcm16
from conftest import DATA, manifest, offline_text, wer
from tools.daemon_process import start_daemon, stop_daemon

SPEED = 4.0  # stream faster than real time; the processor paces itself in stream time


def finals_of(received) -> list[dict]:
    return [r.message for r in received if r.message["type"] == "final"]


def transcript(received) -> str:
    return " ".join(m["text"] for m in finals_of(received) if m["text"])


def stream_file(daemon, path: str, speed: float = SPEED, **kw):
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return asyncio.run(stream_audio(daemon.ws_url, audio, rate, audio.shape[1], speed=speed, **kw))


@pytest.fixture(scope="module")
def dev_runs(daemon):
    """Every other speech-dev clip up to 15 s (21 of 45, 145 s of audio, 354 words) streamed two at a time
    through the server (the whole set is `uadf-stream eval`'s and the bench's)."""
    entries = [e for e in manifest("speech-dev") if e["seconds"] <= 15][::2]

    async def both(pair):
        tasks = []
        for e in pair:
            audio, rate = sf.read(e["path"], dtype="float32", always_2d=True)
            tasks.append(stream_audio(daemon.ws_url, audio, rate, audio.shape[1], speed=SPEED))
        return await asyncio.gather(*tasks)

    runs = []
    for i in range(0, len(entries), 2):
        runs += list(zip(entries[i : i + 2], asyncio.run(both(entries[i : i + 2]))))
    return runs


def test_healthz_reports_model(daemon):
    info = json.load(daemon.get("/healthz"))
    assert info["status"] == "ok" and info["model"] == "tiny.en" and "asr" in info["modes"]


def test_finals_match_offline_wer(dev_runs, offline_model):
    refs = [e["text"] for e, _ in dev_runs]
    streamed = wer(refs, [transcript(r) for _, r in dev_runs])
    offline = wer(refs, [offline_text(offline_model, e["path"]) for e, _ in dev_runs])
    assert streamed <= offline + 0.02, (streamed, offline)


def test_partials_precede_finals_and_finals_are_never_rewritten(dev_runs):
    for entry, received in dev_runs:
        finals = finals_of(received)
        assert [f["segment"] for f in finals] == list(range(len(finals))), entry["id"]
        assert finals and finals[-1]["endpoint"], entry["id"]
        kinds = [r.message["type"] for r in received]
        assert "partial" in kinds[: kinds.index("final")], entry["id"]  # the words show before they are final
        times = [(f["start"], f["end"]) for f in finals]
        assert all(a <= b for a, b in times) and all(times[i][0] >= times[i - 1][0] - 0.5 for i in range(1, len(times)))
        assert received[-1].message["type"] == "end" and received[-1].message["finals"] == len(finals)


def test_stop_flushes_pending_audio_into_finals(daemon):
    entry = next(e for e in manifest("speech-dev") if e["id"] == "jfk")
    received = stream_file(daemon, entry["path"], speed=0)  # everything arrives before the first decode ends
    assert wer([entry["text"]], [transcript(received)]) < 0.15
    assert received[-1].message["type"] == "end"


@pytest.mark.parametrize("kind", ["silence", "white-noise", "bus-noise"])
def test_silence_and_noise_give_no_words(daemon, kind):
    rng = np.random.default_rng(0)
    if kind == "silence":
        audio = np.zeros(16000 * 8, np.float32)
    elif kind == "white-noise":
        audio = (rng.standard_normal(16000 * 8) * 0.05).astype(np.float32)
    else:
        noise, rate = sf.read(DATA / "noise" / "bus.wav", dtype="float32", always_2d=True)
        audio = np.tile(soxr.resample(noise[:, 0], rate, 16000).astype(np.float32), 11)[: 16000 * 8]  # a 0.76 s loop
    received = asyncio.run(stream_audio(daemon.ws_url, audio, 16000, speed=0))
    assert transcript(received) == "", transcript(received)


def test_48k_stereo_is_resampled(daemon):
    entry = next(e for e in manifest("speech-dev") if e["id"] == "jfk")
    mono, rate = sf.read(entry["path"], dtype="float32")
    up = soxr.resample(mono, rate, 48000)
    stereo = np.stack([up, up * 0.5], axis=1)
    received = asyncio.run(stream_audio(daemon.ws_url, stereo, 48000, channels=2, speed=0))
    assert wer([entry["text"]], [transcript(received)]) < 0.15


def test_two_clients_get_their_own_transcripts(dev_runs):
    a, b = dev_runs[0], dev_runs[1]
    assert wer([a[0]["text"]], [transcript(a[1])]) < 0.3
    assert wer([b[0]["text"]], [transcript(b[1])]) < 0.3
    assert transcript(a[1]) != transcript(b[1])


async def _exchange(url: str, *frames, read: int = 1) -> list[dict]:
    async with connect(url) as ws:
        for f in frames:
            await ws.send(f)
        return [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(read)]


START = json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1})


@pytest.mark.parametrize(
    "frames, code",
    [
        (["not json"], "bad_message"),
        (["[1,2]"], "bad_message"),
        ([json.dumps({"type": "dance"})], "unknown_type"),
        ([b"\x00\x01" * 100], "not_started"),
        ([json.dumps({"type": "stop"})], "not_started"),
        ([json.dumps({"type": "start", "sample_rate": 4000, "encoding": "pcm_s16le", "channels": 1})], "bad_sample_rate"),
        ([json.dumps({"type": "start", "sample_rate": 16000, "encoding": "mp3", "channels": 1})], "bad_encoding"),
        ([json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 3})], "bad_channels"),
        ([json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, "mode": "magic"})], "bad_mode"),
    ],
)
def test_bad_input_gets_a_clear_error(daemon, frames, code):
    (msg,) = asyncio.run(_exchange(daemon.ws_url, *frames))
    assert msg["type"] == "error" and msg["code"] == code and msg["message"]


def test_errors_inside_a_session_leave_it_running(daemon):
    async def go():
        async with connect(daemon.ws_url) as ws:
            await ws.send(START)
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(b"\x00\x01\x02")  # odd byte count for s16le
            assert json.loads(await ws.recv())["code"] == "bad_audio"
            await ws.send(START)
            assert json.loads(await ws.recv())["code"] == "already_started"
            await ws.send(b"\x00" * (300 * 1024))
            assert json.loads(await ws.recv())["code"] == "frame_too_large"
            await ws.send(json.dumps({"type": "keepalive"}))
            await ws.send(to_pcm16(np.zeros(16000, np.float32)))
            await ws.send(json.dumps({"type": "stop"}))
            msgs = [json.loads(m) async for m in ws]
            assert msgs[-1]["type"] == "end"
            assert ws.close_code == 1000

    asyncio.run(go())


def test_busy_beyond_max_sessions(tmp_path):
    d = start_daemon(tmp_path, "--max-sessions", "1")
    try:
        async def go():
            async with connect(d.ws_url) as first:
                await first.send(START)
                assert json.loads(await first.recv())["type"] == "ready"
                async with connect(d.ws_url) as second:
                    await second.send(START)
                    msg = json.loads(await second.recv())
                    assert msg["code"] == "busy"
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await second.recv()
                    assert closed.value.rcvd.code == 1008

        asyncio.run(go())
        # the daemon still serves after refusing
        assert json.load(d.get("/healthz"))["status"] == "ok"
    finally:
        assert stop_daemon(d) == 0


def test_eval_pipeline_gives_the_finals_a_websocket_client_gets(tmp_path, engine):
    """One drive loop: `uadf-stream eval`'s in-process pipeline and a websocket client get the same finals,
    word for word, on three dev clips (asr mode). The daemon replays every decision point (a max_lag no shared
    CI machine reaches) and sheds no window (the partial interval capped at one step), so neither a slow
    machine nor the client's pace makes it skip one: the client sends as fast as it can (the daemon then lags
    most), and the cluster's 12 real-time clients (test_cluster) are held to the same pipeline. The daemon
    decodes on two model replicas (`asr.workers`, a core and a decode thread each), the pipeline one window at
    a time: the same finals."""
    from streamer.pipeline import transcribe_file

    entries = [e for e in manifest("speech-dev") if e["id"] in ("jfk", "01jc020j", "40dc021d")]
    assert len(entries) == 3
    daemon = start_daemon(tmp_path, "--set", "streaming.max_lag=60", "--set", "scheduler.max_partial_interval=0.5")
    try:
        for entry in entries:
            online = [(m["segment"], m["text"], m["endpoint"]) for m in finals_of(stream_file(daemon, entry["path"], speed=0))]
            in_process = [(f.segment, f.text, f.endpoint) for f in transcribe_file(entry["path"], engine).finals]
            assert online == in_process, entry["id"]
    finally:
        stop_daemon(daemon)

"""What speaker labels cost in the daemon: CPU per audio second and word->final latency, with `diarize` off and on.

One daemon process (asr mode, no LLM) serves the same meeting-like streams (tools/meeting_streams.py):

- CPU: each stream uploaded (OpenAI's transcriptions endpoint, model `asr`, then `gpt-4o-transcribe-diarize`): an
  upload decodes every window a real-time client would get decoded, whatever the machine's load, so both passes
  do the same ASR work and the difference in the daemon's CPU seconds (psutil, the whole process) is the speaker
  labels'. (Live streams on a loaded machine skip decodes when the decoder lags, which no comparison survives.)
- Latency (`--live`): each stream over protocol v1 at real-time pace, without then with `diarize`; per word of
  each final, the time from sending the audio of the word's end to receiving its final.

The daemon's own account of the speaker stage (its worker's CPU, how long each final waited for its labels, how
many finals were held for an embedding not made ahead) comes from its log.

    python -m tools.meeting_streams --seeds 13-20
    python -m tools.speaker_cost --seeds 13-20            # uploads: a minute or two
    python -m tools.speaker_cost --seeds 13-14 --live     # and 2 x 4 min of real-time streaming
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import numpy as np
import websockets

from clients.stream import to_pcm16
from streamer.audio import SAMPLE_RATE, load_audio
from tools.daemon_process import ResourceMonitor, start_daemon, stop_daemon
from tools.meeting_streams import parse_seeds

FRAME = 0.1  # seconds of audio a frame, as live clients send it
STATS = re.compile(r"speakers: (\d+) finals labelled, CPU ([\d.]+) s .*wait per final p50 ([\d.]+) ms, p90 [\d.]+ ms, max ([\d.]+) ms, (\d+) held for an embedding")


async def stream(url: str, audio: np.ndarray, diarize: bool, speed: float) -> list[float]:
    """One live session at `speed` x real time; the word->final latency of every word of every final."""
    pcm = to_pcm16(audio)
    step = int(FRAME * SAMPLE_RATE) * 2
    sent: list[float] = []  # wall time each frame went out
    latencies: list[float] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "channels": 1,
                                  "mode": "asr", "diarize": diarize}))
        json.loads(await ws.recv())

        async def send() -> None:
            t0 = time.monotonic()
            for k, i in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, t0 + k * FRAME / speed - time.monotonic()))
                await ws.send(pcm[i : i + step])
                sent.append(time.monotonic())
            await ws.send(json.dumps({"type": "stop"}))

        sender = asyncio.create_task(send())
        async for raw in ws:
            message = json.loads(raw)
            now = time.monotonic()
            if message["type"] == "final" and not sender.done():  # the flush at stop says nothing about latency
                for w in message["words"]:
                    frame = min(int(w["end"] / FRAME), len(sent) - 1)
                    latencies.append(now - sent[frame])
        await sender
    return latencies


async def upload(base: str, path: Path, model: str) -> None:
    """One file through POST /v1/audio/transcriptions (the daemon decodes it as a live stream, at full speed)."""
    form = aiohttp.FormData()
    form.add_field("model", model)
    form.add_field("file", path.read_bytes(), filename=path.name, content_type="audio/wav")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/audio/transcriptions", data=form) as response:
            response.raise_for_status()
            await response.read()


def run(streams: list[Path], speed: float, live: bool, workdir: Path) -> dict:
    daemon = start_daemon(workdir, "--set", "server.max_rate=0")
    monitor = ResourceMonitor(daemon.process.pid).start()
    audio = [load_audio(str(p)) for p in streams]
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    out: dict = {"streams": [p.stem for p in streams], "audio_seconds": round(seconds, 1), "speed": speed}
    try:
        for diarize, model in ((False, "asr"), (True, "gpt-4o-transcribe-diarize")):
            first = monitor.mark()
            for path in streams:
                asyncio.run(upload(daemon.http_url, path, model))
            usage = monitor.usage(first, monitor.mark())
            out["on" if diarize else "off"] = {"cpu_per_audio_s": usage.cpu_seconds / seconds, "rss_peak_mb": usage.rss_peak_mb}
        for diarize in (False, True) if live else ():
            latencies = [x for a in audio for x in asyncio.run(stream(daemon.ws_url, a, diarize, speed))]
            out["on" if diarize else "off"] |= {
                "word_final_latency_p50": float(np.percentile(latencies, 50)),
                "word_final_latency_p90": float(np.percentile(latencies, 90)),
            }
    finally:
        monitor.stop()
        stop_daemon(daemon)
    stage = [m.groups() for m in STATS.finditer(daemon.log.read_text())]
    out["speaker_stage"] = {
        "finals": sum(int(f) for f, *_ in stage),
        "cpu_per_audio_s": sum(float(c) for _, c, *_ in stage) / seconds / (2 if live else 1),
        "wait_p50_ms_per_session": [float(p) for _, _, p, _, _ in stage],
        "wait_max_ms": max((float(m) for _, _, _, m, _ in stage), default=0.0),
        "held_per_session": [int(h) for *_, h in stage],  # finals that waited for an embedding (uploads, then live)
    }
    out["added_cpu"] = out["on"]["cpu_per_audio_s"] / out["off"]["cpu_per_audio_s"] - 1
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meetings", default="bench-out/meetings", help="folder written by tools.meeting_streams")
    parser.add_argument("--seeds", default="13-14")
    parser.add_argument("--live", action="store_true", help="also stream live, without and with diarize: word->final latency")
    parser.add_argument("--speed", type=float, default=1.0, help="live: x real time (1: as a live meeting)")
    parser.add_argument("--out", default="bench-out/speaker-cost")
    args = parser.parse_args(argv)
    folder = Path(args.meetings)
    streams = [folder / f"meeting-{seed:03d}.wav" for seed in parse_seeds(args.seeds)]
    out = Path(args.out)
    result = run(streams, args.speed, args.live, out)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    off, on = result["off"], result["on"]
    print(f"{result['audio_seconds']} s of audio ({', '.join(result['streams'])})")
    print(f"daemon CPU per audio second (uploads): off {off['cpu_per_audio_s']:.3f} s, on {on['cpu_per_audio_s']:.3f} s "
          f"(+{result['added_cpu']:.1%}); speaker stage {result['speaker_stage']['cpu_per_audio_s']:.4f} s")
    if args.live:
        print(f"word->final latency p50/p90 at {args.speed:g}x real time: off {off['word_final_latency_p50']:.3f}/"
              f"{off['word_final_latency_p90']:.3f} s, on {on['word_final_latency_p50']:.3f}/{on['word_final_latency_p90']:.3f} s")
    print(f"a final's wait for its labels: p50 {result['speaker_stage']['wait_p50_ms_per_session']} ms per session, "
          f"max {result['speaker_stage']['wait_max_ms']:.1f} ms over {result['speaker_stage']['finals']} finals; "
          f"held for an embedding, per session: {result['speaker_stage']['held_per_session']}")


if __name__ == "__main__":
    main()

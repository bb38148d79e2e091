"""`uadf-stream bench`: latency, accuracy and capacity of the live daemon, side by side with baselines.

Streams the clips of a manifest through a real daemon over websockets at `--speed` x real time and
measures, per word, partial and final latency against reference word end times (offline
faster-whisper with word timestamps on the whole file), per utterance the first-partial latency after
speech onset and the finalization latency after the end of speech, partial rewrites, WER of the
finals, CPU and RSS of the daemon process. Baselines in the same run and on the same model: offline
faster-whisper on the whole file, and naive fixed 2 s chunks without overlap. A sweep over
concurrent clients finds the capacity: the most real-time streams with median final latency < 2 s.
Writes bench.json, bench.md and PNG plots to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

from clients.stream import stream_audio
from core.types import SAMPLE_RATE, Mode, WindowRequest
from streamer.audio import load_audio
from tools.bench_metrics import FileLatency, RefWord, file_latency, summary
from tools.bench_report import build_report, write_outputs
from tools.bench_results import (
    CapacityLevel,
    Clip,
    DaemonRun,
    FileResult,
    ModeSetResult,
    Reference,
    Soak,
    aggregate,
    capacity_targets,
)
from streamer.config import Config
from tools.biasing import keyterm_lists, rare_words, vocabulary
from tools.daemon_process import ResourceMonitor, start_daemon, stop_daemon
from tools.data import DATA, corpus_wer as wer, load_manifest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
NAIVE_CHUNK = 2.0  # seconds of the naive baseline's chunks


# -- command line ------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="websocket URL of a running daemon (default: start one per LLM setting)")
    p.add_argument("--daemon-pid", type=int, help="with --url: the daemon's pid, to measure its CPU and RSS")
    p.add_argument("--dev", default=str(DATA / "speech-dev"), help="folder with a manifest.jsonl of short clips")
    p.add_argument("--dev-limit", type=int, default=9, help="first N clips of --dev (0: none, -1: all)")
    p.add_argument("--long", default=str(DATA / "speech-long"), help="folder with a manifest.jsonl of minutes-long audio")
    p.add_argument("--long-limit", type=int, default=-1, help="first N clips of --long (0: none, -1: all)")
    p.add_argument("--modes", default="asr,uadf", help="daemon modes to measure, comma separated (fusion ones need --llm)")
    p.add_argument("--clients", default="1,2,4,6,8", help="concurrent real-time clients swept for capacity in asr mode, e.g. 1,2,4,6")
    p.add_argument("--fusion-sets", default="dev,long", help="sets streamed in fusion modes (they may run slower than real time)")
    p.add_argument("--fusion-clients", default="1,2", help="concurrent client counts swept in fusion modes ('' skips)")
    p.add_argument("--capacity-clips", type=int, default=2, help="clips each client streams in the capacity sweep")
    p.add_argument("--capacity-set", default="long", help="set the capacity sweep streams (long: minutes of continuous speech; "
                   "short clips end in a pause and hide how late words in a long utterance come)")
    p.add_argument("--speed", type=float, default=1.0, help="audio pace, x real time")
    p.add_argument("--soak-minutes", type=float, default=0.0, help="asr: RSS over one stream this long (the long set looped)")
    p.add_argument("--soak-speed", type=float, default=4.0, help="pace of the soak stream, x real time")
    p.add_argument("--no-baselines", action="store_true", help="skip the naive 2 s chunk baseline")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench"), help="output folder")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 short clips, asr only, 1-2 clients (< 2 min)")
    p.add_argument("--keyterms", type=int, default=0, help="each stream's `start` carries N keyterms, as a meeting's client would: "
                   "the clip's rare words and seeded distractors (the eval's biasing lists, tools/biasing.py); 0: none")


def _manifest(folder: str, name: str, limit: int, keyterms: int = 0) -> list[Clip]:
    if limit == 0:
        return []
    entries = load_manifest(folder, max(limit, 0))
    return [Clip(e["id"], name, e["path"], e["text"], float(e["seconds"]), meeting_keyterms(e, keyterms)) for e in entries]


def meeting_keyterms(entry: dict, count: int) -> tuple[str, ...]:
    """`count` keyterms for a clip (none for 0): its reference's rare words, then seeded distractors up to the
    count (the biasing protocol of `uadf-stream eval`'s lists, cut to the protocol's limit as a client must)."""
    if count <= 0:
        return ()
    vocab = vocabulary()
    rare = rare_words(entry["text"], vocab)[:count]
    distractors = count - len(rare)
    return tuple(keyterm_lists(entry, rare, vocab, counts=(distractors,))[distractors])


def _csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# -- baselines (in-process, same model) --------------------------------------------------------------
def offline_references(backend, clips: list[Clip]) -> dict[str, Reference]:
    """faster-whisper on each whole file, greedy, with word timestamps; Silero VAD speech regions."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    refs: dict[str, Reference] = {}
    for clip in clips:
        vad = get_speech_timestamps(load_audio(clip.path), VadOptions(min_silence_duration_ms=300, speech_pad_ms=0))
        speech = [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in vad]
        c0, w0 = time.process_time(), time.perf_counter()
        segments, _ = backend.whisper_model.transcribe(
            clip.path, language="en", beam_size=1, temperature=0, condition_on_previous_text=False, word_timestamps=True
        )
        segments = list(segments)
        words = [RefWord(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in s.words or []]
        text = " ".join(s.text.strip() for s in segments)
        refs[clip.id] = Reference(text, words, time.process_time() - c0, time.perf_counter() - w0, speech)
    return refs


def naive_chunks(engine, clip: Clip, ref: Reference, speed: float) -> tuple[FileResult, float]:
    """Fixed 2 s chunks, no overlap, no context; a chunk's words are final when its decode ends.

    Time line: chunk k is ready at its end (/ speed); decoding starts when it is ready and the previous
    chunk is done. Returns the result and the CPU seconds spent."""
    audio = load_audio(clip.path)
    step = int(NAIVE_CHUNK * SAMPLE_RATE)
    done = 0.0
    cpu = 0.0
    messages: list[tuple[dict, float]] = []
    texts = []
    for i in range(0, len(audio), step):
        chunk = audio[i : i + step]
        ready = (i + len(chunk)) / SAMPLE_RATE / speed
        c0, w0 = time.process_time(), time.perf_counter()
        (hyp,) = engine.transcribe([WindowRequest(audio=chunk, offset=i / SAMPLE_RATE, end=(i + len(chunk)) / SAMPLE_RATE)])
        cpu += time.process_time() - c0
        done = max(done, ready) + time.perf_counter() - w0
        if hyp.text:
            texts.append(hyp.text)
            messages.append(({"type": "final", "text": hyp.text, "words": [{"word": w.word} for w in hyp.words]}, done))
    text = " ".join(texts)
    latency = file_latency(messages, ref.words, speed, ref.speech)
    latency.partial = list(latency.final)
    return FileResult(clip.id, clip.set, "naive-2s", text, wer([clip.text], [text]), latency), cpu


# -- streaming through the daemon --------------------------------------------------------------------
async def stream_clip(url: str, clip: Clip, mode: str, speed: float, ref: Reference) -> FileResult:
    audio = load_audio(clip.path)
    timeout = clip.seconds / max(speed, 0.05) * 3 + 120
    try:
        received = await asyncio.wait_for(stream_audio(url, audio, SAMPLE_RATE, mode=mode, speed=speed, keyterms=clip.keyterms), timeout)
    except Exception as exc:  # noqa: BLE001 - a failed stream is a result
        return FileResult(clip.id, clip.set, mode, "", float("nan"), FileLatency(), error=f"{type(exc).__name__}: {exc}")
    messages = [(r.message, r.wall) for r in received]
    errors = [m for m, _ in messages if m.get("type") == "error"]
    text = " ".join(m["text"] for m, _ in messages if m.get("type") == "final" and m.get("text"))
    return FileResult(
        clip.id, clip.set, mode, text, wer([clip.text], [text]), file_latency(messages, ref.words, speed, ref.speech),
        error=json.dumps(errors[0]) if errors else None,
    )


async def run_mode(url: str, mode: str, sets: dict[str, list[Clip]], refs: dict[str, Reference], speed: float, monitor: ResourceMonitor | None) -> tuple[list[ModeSetResult], list[FileResult]]:
    """One client streams every clip in turn; resources are measured per set."""
    rows: list[ModeSetResult] = []
    files: list[FileResult] = []
    for name, clips in sets.items():
        start = monitor.mark() if monitor else 0
        results = []
        for clip in clips:
            result = await stream_clip(url, clip, mode, speed, refs[clip.id])
            log.info("%s %s: WER %.3f, %d words, final p50 %s%s", mode, clip.id, result.wer, len(result.latency.final),
                     summary(result.latency.final)["p50"], f" ERROR {result.error}" if result.error else "")
            results.append(result)
        usage = monitor.usage(start, monitor.mark()) if monitor else None
        rows.append(aggregate(mode, name, clips, results, usage))
        files += results
    return rows, files


def streamed_alone_wer(files: list[FileResult], clips: list[Clip]) -> float | None:
    """WER of the capacity clips as the mode's own run streamed them, one session at a time: the reference of
    the capacity criterion's WER slack when the sweep has no one-client level (None if a clip was not run)."""
    alone = {f.clip: f for f in files}
    if not clips or any(c.id not in alone for c in clips):
        return None
    return wer([c.text for c in clips], [alone[c.id].text for c in clips])


async def run_capacity(url: str, mode: str, clients: int, clips: list[Clip], per_client: int, refs: dict[str, Reference], speed: float, monitor: ResourceMonitor | None, wer_one_stream: float | None = None) -> CapacityLevel:
    """`clients` concurrent sessions, each streaming `per_client` clips in turn (rotated, staggered starts)."""

    async def client(i: int) -> list[FileResult]:
        await asyncio.sleep(0.37 * i)
        mine = [clips[(i + k) % len(clips)] for k in range(per_client)]
        return [await stream_clip(url, c, mode, speed, refs[c.id]) for c in mine]

    start = monitor.mark() if monitor else 0
    by_client = await asyncio.gather(*(client(i) for i in range(clients)))
    results = [r for rs in by_client for r in rs]
    usage = monitor.usage(start, monitor.mark()) if monitor else None
    by_id = {c.id: c for c in clips}
    return CapacityLevel(
        mode=mode,
        clients=clients,
        sessions=len(results),
        errors=sum(1 for r in results if r.error),
        audio_seconds=round(sum(by_id[r.clip].seconds for r in results), 2),
        wer=wer([by_id[r.clip].text for r in results], [r.text for r in results]),
        partial=summary([v for r in results for v in r.latency.partial]),
        final=summary([v for r in results for v in r.latency.final]),
        cpu_percent=usage.cpu_percent if usage else None,
        rss_peak_mb=usage.rss_peak_mb if usage else None,
        per_client=[summary([v for r in rs for v in r.latency.final]) for rs in by_client],
        wer_one_stream=wer_one_stream,
        texts=[{"clip": r.clip, "text": r.text} for r in results],
    )


def healthz(ws_url: str) -> dict:
    http = ws_url.replace("wss://", "https://").replace("ws://", "http://").split("/v1/")[0]
    with urllib.request.urlopen(http + "/healthz", timeout=30) as resp:
        return json.loads(resp.read())


async def warm_up(url: str, clip: Clip, mode: str) -> None:
    """One short stream so that first-use costs do not land in the measurements."""
    audio = load_audio(clip.path)[: 2 * SAMPLE_RATE]
    await asyncio.wait_for(stream_audio(url, audio, SAMPLE_RATE, mode=mode, speed=0), 120)


# -- the run --------------------------------------------------------------------------------------------
async def run_soak(url: str, clips: list[Clip], minutes: float, speed: float, monitor: ResourceMonitor) -> Soak:
    """One session streaming `clips` looped to `minutes` of audio; RSS from the first to the last sample."""
    audio = np.concatenate([load_audio(c.path) for c in clips])
    repeats = int(np.ceil(minutes * 60 * SAMPLE_RATE / len(audio)))
    audio = np.tile(audio, repeats)[: int(minutes * 60 * SAMPLE_RATE)]
    start = monitor.mark()
    t0 = time.monotonic()
    error = None
    received = []
    try:
        received = await asyncio.wait_for(stream_audio(url, audio, SAMPLE_RATE, mode=Mode.ASR, speed=speed), len(audio) / SAMPLE_RATE / speed * 3 + 120)
    except Exception as exc:  # noqa: BLE001
        error = f"{type(exc).__name__}: {exc}"
    wall = time.monotonic() - t0
    end = monitor.mark()
    usage = monitor.usage(start, end)
    samples = monitor.samples[start : end + 1]
    curve, last = [], -1e9
    for t, _, rss in samples:
        if t - last >= 10 or t == samples[-1][0]:
            curve.append((round(min((t - samples[0][0]) * speed, len(audio) / SAMPLE_RATE), 1), round(rss, 1)))
            last = t
    finals = sum(1 for r in received if r.message.get("type") == "final")
    return Soak("asr", len(audio) / SAMPLE_RATE, speed, wall, usage.rss_start_mb, usage.rss_end_mb, usage.rss_peak_mb, curve, finals, error)


def bench_daemon(url: str, pid: int | None, modes: list[str], sets: dict[str, list[Clip]], refs: dict[str, Reference], args, levels: dict[str, list[int]]) -> DaemonRun:
    run = DaemonRun(modes=[])
    offered = healthz(url).get("modes", [Mode.ASR])
    monitor = ResourceMonitor(pid).start() if pid else None
    if monitor:
        run.idle_rss_mb = monitor.usage(monitor.mark(), monitor.mark()).rss_end_mb
    all_clips = [c for clips in sets.values() for c in clips]
    try:
        for mode in modes:
            if mode not in offered:
                run.unavailable[mode] = f"the daemon offers {offered}"
                continue
            try:
                asyncio.run(warm_up(url, all_clips[0], mode))
            except Exception as exc:  # noqa: BLE001
                run.unavailable[mode] = f"warm-up failed: {type(exc).__name__}: {exc}"
                continue
            run.modes.append(mode)
            mode_sets = sets if mode == Mode.ASR else {k: v for k, v in sets.items() if k in args.fusion_sets.split(",")}
            rows, files = asyncio.run(run_mode(url, mode, mode_sets, refs, args.speed, monitor))
            run.rows += rows
            run.files += files
            capacity_clips = sets.get(args.capacity_set) or next(iter(sets.values()))
            one_stream = streamed_alone_wer(files, capacity_clips)
            for n in levels.get(mode, []):
                level = asyncio.run(run_capacity(url, mode, n, capacity_clips, args.capacity_clips, refs, args.speed, monitor, one_stream))
                if n == 1:
                    one_stream = level.wer
                log.info("capacity %s x%d: word final p50 %s p90 %s, worst client %s, errors %d", mode, n, level.final["p50"],
                         level.final["p90"], level.worst, level.errors)
                run.capacity.append(level)
                worst = level.worst["p50"]
                if not level.served and worst is not None and worst > 3 * capacity_targets(mode).p50:
                    break  # far past capacity: larger N only takes longer
        if monitor and args.soak_minutes > 0 and Mode.ASR in run.modes:
            soak_clips = sets.get("long") or all_clips
            log.info("soak: %.1f min of audio at %gx", args.soak_minutes, args.soak_speed)
            run.soak = asyncio.run(run_soak(url, soak_clips, args.soak_minutes, args.soak_speed, monitor))
            log.info("soak: RSS %.0f -> %.0f MB (peak %.0f)", run.soak.rss_start_mb, run.soak.rss_end_mb, run.soak.rss_peak_mb)
    finally:
        if monitor:
            monitor.stop()
    return run


def run(args: argparse.Namespace, config: Config) -> int:
    from streamer.engine import Engine

    if args.quick:
        args.dev_limit, args.long_limit = 2, 0
        args.modes, args.clients, args.fusion_clients, args.capacity_clips = "asr", "1,2", "", 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {k: v for k, v in (("dev", _manifest(args.dev, "dev", args.dev_limit, args.keyterms)),
                              ("long", _manifest(args.long, "long", args.long_limit, args.keyterms))) if v}
    if not sets:
        log.error("no clips: check --dev / --long")
        return 2
    clips = [c for cs in sets.values() for c in cs]
    try:
        modes = [Mode(m.strip()) for m in args.modes.split(",") if m.strip()]
    except ValueError as exc:
        log.error("--modes: %s (modes: %s)", exc, ", ".join(Mode.names()))
        return 2
    levels = {m: _csv_ints(args.clients if m == Mode.ASR else args.fusion_clients) for m in modes}
    started = datetime.now(timezone.utc)
    t_start = time.monotonic()

    # Baselines first, while no daemon competes for the CPU.
    log.info("offline references for %d clips", len(clips))
    engine = Engine(replace(config, fusion=replace(config.fusion, llm="")))  # the baselines decode with Whisper alone
    backend = engine.backend
    refs = offline_references(backend, clips)
    rows: list[ModeSetResult] = []
    files: list[FileResult] = []
    me = psutil.Process()
    for name, cs in sets.items():
        res = [FileResult(c.id, c.set, "offline", refs[c.id].text, wer([c.text], [refs[c.id].text]), FileLatency()) for c in cs]
        row = aggregate("offline", name, cs, res, None, sum(refs[c.id].cpu_seconds for c in cs))
        row.rss_peak_mb = me.memory_info().rss / 2**20
        rows.append(row)
        files += res
    if not args.no_baselines:
        for name, cs in sets.items():
            pairs = [naive_chunks(engine, c, refs[c.id], args.speed) for c in cs]
            row = aggregate("naive-2s", name, cs, [r for r, _ in pairs], None, sum(cpu for _, cpu in pairs))
            row.rss_peak_mb = me.memory_info().rss / 2**20
            rows.append(row)
            files += [r for r, _ in pairs]
    model_name = f"{backend.model_name} ({backend.device} {backend.compute_type})"
    del backend, engine
    gc.collect()

    # The daemon modes: one daemon without an LLM for asr, one with it for the fusion modes.
    daemon_runs: list[DaemonRun] = []
    unavailable: dict[str, str] = {}
    if args.url:
        groups: list[tuple[str, list[str]]] = []
        daemon_runs.append(bench_daemon(args.url, args.daemon_pid, modes, sets, refs, args, levels))
    else:
        groups = [("", [m for m in modes if not m.fused]), (config.fusion.llm, [m for m in modes if m.fused])]
    for llm, group in groups:
        if not group:
            continue
        if group != [Mode.ASR] and not llm:
            unavailable.update({m: "no LLM configured (fusion.llm; pass --llm smollm2)" for m in group})
            continue
        workdir = Path(tempfile.mkdtemp(prefix="uadf-bench-"))
        extra = ["--max-sessions", str(max([1, *(n for ns in levels.values() for n in ns)]) + 2), "--set", "server.max_rate=0"]
        for key in ("model", "device", "compute_type"):
            extra += ["--set", f"asr.{key}={getattr(config.asr, key)}"]
        extra += (["--config", args.config] if args.config else []) + [x for kv in args.set for x in ("--set", kv)]
        t0 = time.monotonic()
        try:
            daemon = start_daemon(workdir, *extra, llm=llm, timeout=600)
            startup = time.monotonic() - t0
        except RuntimeError as exc:
            unavailable.update({m: f"daemon with LLM {llm!r} did not start: {str(exc)[-500:]}" for m in group})
            continue
        try:
            result = bench_daemon(daemon.ws_url, daemon.process.pid, group, sets, refs, args, levels)
            result.startup_seconds = startup
            daemon_runs.append(result)
        finally:
            stop_daemon(daemon)
            # kept beside the report: a failed window's traceback is only in the daemon's log
            shutil.copyfile(daemon.log, out / f"daemon-{'-'.join(m.value for m in group)}.log")
    for r in daemon_runs:
        rows += r.rows
        files += r.files
        unavailable.update(r.unavailable)
    capacity = [lvl for r in daemon_runs for lvl in r.capacity]

    report = build_report(args, started, time.monotonic() - t_start, model_name, sets, rows, files, capacity, unavailable, daemon_runs)
    write_outputs(out, report, rows, files, capacity)
    print((out / "bench.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tools.bench ...`: the same as `uadf-stream bench ...`."""
    from streamer.cli import SHORTCUTS, _add_common, build_config

    parser = argparse.ArgumentParser(prog="uadf-stream bench", description=__doc__)
    _add_common(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args, build_config(args, SHORTCUTS))


if __name__ == "__main__":
    sys.exit(main())

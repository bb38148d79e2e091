"""The report of `uadf-stream bench`: bench.json, bench.md (tables, targets) and the PNG plots."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import psutil

from tools import bench_plots
from tools.bench_metrics import summary
from tools.bench_results import ONE_STREAM, WER_SLACK, CapacityLevel, FileResult, ModeSetResult, all_rows, capacity_targets


def _round(obj):
    if isinstance(obj, float):
        return None if obj != obj else round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def gpu_name() -> str | None:
    """The machine's GPU as nvidia-smi names it (None without one): the report says what the figures ran on."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = out.stdout.strip().splitlines()
    return names[0] if names else None


def build_report(args, started, wall, model_name, sets, rows, files, capacity, unavailable, daemon_runs) -> dict:
    overall = all_rows(rows, files, sets)
    cap: dict[str, int] = {}
    for mode in dict.fromkeys(level.mode for level in capacity):
        served = [lvl.clients for lvl in capacity if lvl.mode == mode and lvl.served]
        cap[mode] = max(served) if served else 0
    long_rss = {r.mode: r.rss_end_mb - r.rss_start_mb for r in rows if r.set == "long" and r.rss_start_mb is not None}
    return _round({
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "gpu": gpu_name(),
        },
        "model": model_name,
        "speed": args.speed,
        "wall_seconds": wall,
        "sets": {name: {"clips": [c.id for c in cs], "audio_seconds": sum(c.seconds for c in cs)} for name, cs in sets.items()},
        "definitions": {
            "partial": "per word: wall time of the first partial or final showing it minus its reference end time / speed",
            "final": "per word: wall time of the final holding it minus its reference end time / speed (word -> final)",
            "onset": "per utterance (reference words split at pauses >= 0.8 s): first word shown minus speech onset",
            "finalization": "per utterance: last word final minus end of its speech (a file's last utterance is closed by the client's stop when the audio ends)",
            "rewrite_rate": "transcript updates (non-empty partials and finals) that change or retract a shown word / all updates",
            "cpu_rtf": "CPU seconds (daemon process; bench process for offline and naive-2s) / audio seconds",
            "cpu_percent": "average CPU use of the daemon process while streaming, percent of one core",
            "rss": "resident memory of the daemon process (bench process, which holds the same model, for offline and naive-2s)",
            "capacity": "largest concurrent real-time stream count at which every client's per-word final latency meets the "
            f"mode's targets (asr: {capacity_targets('asr')}; fusion modes: {capacity_targets('uadf')}), no session failed, "
            f"and WER is within {WER_SLACK:.0%} (absolute) of one stream's",
        },
        "results": [asdict(r) for r in rows],
        "overall": [asdict(r) for r in overall],
        "capacity_levels": [asdict(lvl) | {"served": lvl.served, "worst_client": lvl.worst} for lvl in capacity],
        "capacity": cap,
        "rss_growth_long_mb": long_rss,
        "daemons": [{"modes": r.modes, "startup_seconds": r.startup_seconds, "idle_rss_mb": r.idle_rss_mb} for r in daemon_runs],
        "soak": [asdict(r.soak) | {"growth_mb": r.soak.growth_mb} for r in daemon_runs if r.soak],
        "unavailable": unavailable,
        "files": [{"clip": f.clip, "set": f.set, "mode": f.mode, "wer": f.wer, "timed_words": len(f.latency.final),
                   "final_p50": summary(f.latency.final)["p50"], "partial_p50": summary(f.latency.partial)["p50"],
                   "error": f.error, "text": f.text} for f in files],
    })


def command_line(args) -> str:
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = sys.argv[sys.argv.index("bench") + 1 :] if "bench" in sys.argv else sys.argv[1:]
    return "uadf-stream bench " + " ".join(shlex.quote(a) for a in argv)


def _fmt(value, spec: str = ".2f", scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, spec)


def markdown(report: dict) -> str:
    lines = [
        f"# uadf-stream benchmark, {report['date']}",
        "",
        f"`{report['command']}`",
        "",
        f"Model {report['model']}, {report['machine']['cpu_count']} CPU cores ({report['machine']['processor']})"
        f"{', GPU ' + report['machine']['gpu'] if report['machine'].get('gpu') else ''}, "
        f"load average {report['machine']['load_average_at_end'][2]:.1f} (15 min, at the end), "
        f"audio at {report['speed']:g}x real time, one client per mode. Latencies per word, in seconds after the word "
        "ends in the stream (reference word times: offline faster-whisper word timestamps).",
        "",
        "| mode | set | clips | audio s | WER | partial p50 | word→final p50 | p90 | max | onset p50 | end→final p50 | rewrites | CPU RTF | CPU % | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"] + [r for r in report["overall"] if "+" in r["set"]]:
        no_latency = r["mode"] == "offline"
        lines.append(
            f"| {r['mode']} | {r['set']} | {r['files']} | {r['audio_seconds']:.0f} | {_fmt(r['wer'], '.1%')} | "
            + " | ".join("—" if no_latency else _fmt(x) for x in (r["partial"]["p50"], r["final"]["p50"], r["final"]["p90"], r["final"]["max"], r["onset"]["p50"], r["finalization"]["p50"]))
            + f" | {_fmt(r['rewrite_rate'], '.1%')} | {_fmt(r['cpu_rtf'], '.3f')} | {_fmt(r['cpu_percent'], '.0f')} | {_fmt(r['rss_peak_mb'], '.0f')} |"
        )
    if report["capacity_levels"]:
        lines += [
            "",
            f"Capacity (concurrent real-time streams; served = {report['definitions']['capacity']}):",
            "",
            "| mode | clients | sessions | WER | partial p50 | word→final p50 | p90 | max | worst client p50 / p90 / max | CPU % | peak RSS MB | served |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in report["capacity_levels"]:
            w = c["worst_client"]
            lines.append(
                f"| {c['mode']} | {c['clients']} | {c['sessions']} | {_fmt(c['wer'], '.1%')} | {_fmt(c['partial']['p50'])} | "
                f"{_fmt(c['final']['p50'])} | {_fmt(c['final']['p90'])} | {_fmt(c['final']['max'])} | "
                f"{_fmt(w['p50'])} / {_fmt(w['p90'])} / {_fmt(w['max'])} | {_fmt(c['cpu_percent'], '.0f')} | "
                f"{_fmt(c['rss_peak_mb'], '.0f')} | {'yes' if c['served'] else 'no'}{' (' + str(c['errors']) + ' failed)' if c['errors'] else ''} |"
            )
        tried = {m: max(c["clients"] for c in report["capacity_levels"] if c["mode"] == m) for m in report["capacity"]}
        lines += ["", "Capacity: " + ", ".join(
            f"`{m}` {'at least ' if n == tried[m] else ''}{n} streams{' (the most tried)' if n == tried[m] else ''}"
            for m, n in report["capacity"].items())]
    for soak in report["soak"]:
        lines += ["", f"Memory: one `{soak['mode']}` stream of {soak['audio_seconds'] / 60:.1f} min of audio at {soak['speed']:g}x: "
                  f"daemon RSS {soak['rss_start_mb']:.0f} -> {soak['rss_end_mb']:.0f} MB ({soak['growth_mb']:+.0f} MB, peak "
                  f"{soak['rss_peak_mb']:.0f} MB), {soak['finals']} finals{', ERROR ' + soak['error'] if soak['error'] else ''}."]
    lines += ["", "Targets (real time; set for tiny.en on a 2-core CPU):", ""]
    lines += [f"- {t}" for t in targets(report)]
    gaps = wer_gaps(report)
    if gaps:
        lines += ["", "Clips where the finals' WER exceeds the offline run's by more than 10 points:", ""] + [f"- {g}" for g in gaps]
    if report["unavailable"]:
        lines += ["", "Not measured: " + "; ".join(f"`{m}`: {why}" for m, why in report["unavailable"].items())]
    lines += ["", "Definitions: " + "; ".join(f"{k}: {v}" for k, v in report["definitions"].items()) + "."]
    return "\n".join(lines) + "\n"


def wer_gaps(report: dict, points: float = 0.10) -> list[str]:
    offline = {f["clip"]: f["wer"] for f in report["files"] if f["mode"] == "offline"}
    return [
        f"`{f['mode']}` {f['clip']}: {f['wer']:.1%} (offline {offline[f['clip']]:.1%})"
        for f in report["files"]
        if f["mode"] not in ("offline", "naive-2s") and f["wer"] is not None and f["clip"] in offline
        and offline[f["clip"]] is not None and f["wer"] - offline[f["clip"]] > points
    ]


def targets(report: dict) -> list[str]:
    """The issue's targets against the measured numbers (reported, never asserted)."""
    overall = {r["mode"]: r for r in report["overall"]}
    offline = overall.get("offline", {}).get("wer")
    out = []
    for mode in [m for m in overall if m not in ("offline", "naive-2s")]:
        r = overall[mode]
        checks = [
            ("median partial latency", r["partial"]["p50"], 0.8, "s"),
            ("word->final p50", r["final"]["p50"], ONE_STREAM.p50, "s"),
            ("word->final p90", r["final"]["p90"], ONE_STREAM.p90, "s"),
            ("word->final max", r["final"]["max"], ONE_STREAM.max, "s"),
        ]
        parts = [f"{name} {_fmt(v)} {unit} (<= {limit:g}: {'met' if v is not None and v <= limit else 'missed'})" for name, v, limit, unit in checks]
        if offline and r["wer"] is not None:
            rel = r["wer"] / offline - 1
            parts.append(f"WER {r['wer']:.1%} vs offline {offline:.1%} ({rel:+.0%} relative; within 10%: {'met' if rel <= 0.10 else 'missed'})")
        if mode in report["capacity"]:
            need = 16 if mode == "asr" else 4
            parts.append(f"capacity {report['capacity'][mode]} streams (>= {need}: {'met' if report['capacity'][mode] >= need else 'missed'})")
        soak = [x for x in report["soak"] if x["mode"] == mode]
        if soak:
            g = soak[0]["growth_mb"]
            parts.append(f"RSS growth over a {soak[0]['audio_seconds'] / 60:.1f}-min stream {g:+.0f} MB (< 50 MB: {'met' if g < 50 else 'missed'})")
        elif mode in report["rss_growth_long_mb"]:
            g = report["rss_growth_long_mb"][mode]
            parts.append(f"RSS growth over the long set {g:+.0f} MB (< 50 MB: {'met' if g < 50 else 'missed'})")
        out.append(f"`{mode}`: " + "; ".join(parts))
    return out


def write_outputs(out: Path, report: dict, rows: list[ModeSetResult], files: list[FileResult], capacity: list[CapacityLevel]) -> None:
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(report))
    latencies: dict[str, dict[str, list[float]]] = {}
    for f in files:
        if f.mode == "offline":
            continue
        d = latencies.setdefault(f.mode, {"partial": [], "final": []})
        d["partial"] += f.latency.partial
        d["final"] += f.latency.final
    bench_plots.latency_cdf(latencies, out / "latency_cdf.png")
    overall = {r["mode"]: r for r in report["overall"]}
    points = {m: (r["final"]["p50"], r["wer"]) for m, r in overall.items() if m != "offline" and r["wer"] is not None}
    bench_plots.wer_latency(points, overall.get("offline", {}).get("wer"), out / "wer_latency.png")
    levels: dict[str, list[tuple[int, float | None, float | None]]] = {}
    for lvl in capacity:
        levels.setdefault(lvl.mode, []).append((lvl.clients, lvl.worst["p50"], lvl.worst["p90"]))
    bench_plots.capacity(levels, out / "capacity.png", capacity_targets("asr").p50)


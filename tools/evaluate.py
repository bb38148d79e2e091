"""`uadf-stream eval`: WER and fusion statistics of the in-process streaming pipeline.

Every manifest entry is streamed through the same processor and backend the daemon uses
(`streamer.pipeline.transcribe_file`). WER is jiwer's corpus WER after Whisper's English
normalizer on both sides, reported per set and per `condition` when the manifest has one.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import dataclasses

from core.types import MeetingContext, Mode
from tools.biasing_metrics import BiasCounts, score
from tools.data import load_manifest, word_errors

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", action="append", required=True, help="manifest.jsonl (repeatable)")
    parser.add_argument("--condition", help="only entries with this `condition` field")
    parser.add_argument("--limit", type=int, default=0, help="first N entries of each manifest (0: all)")
    parser.add_argument("--json", dest="json_out", help="write the report (with per-utterance rows) here")
    parser.add_argument(
        "--context", choices=("manifest", "none"), default="manifest",
        help="pass each entry's `keyterms`/`context` to the session as a client would (default), or none",
    )


def _group_report(rows: list[dict]) -> dict:
    errors = sum(r["errors"] for r in rows)
    words = sum(r["ref_words"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    audio = sum(r["seconds"] for r in rows)
    delays = [d for r in rows for d in r["word_delays"]]
    waits = [d for r in rows for d in r["word_waits"]]
    return {
        "utterances": len(rows),
        "ref_words": words,
        "wer": errors / words if words else 0.0,
        "llm_calls_per_100_tokens": 100.0 * sum(r["llm_calls"] for r in rows) / tokens if tokens else 0.0,
        "fused_words": sum(r["fused_words"] for r in rows),
        "fused_tokens_decoded": sum(r["fused_tokens"] for r in rows),
        "rtf": sum(r["decode_seconds"] for r in rows) / audio if audio else 0.0,
        "word_delay": _percentiles(delays),
        "word_wait": _percentiles(waits),
        **_bias_report(rows),
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {k: float(np.percentile(values, q)) if values else None for k, q in (("p50", 50), ("p90", 90), ("max", 100))}


def _bias_report(rows: list[dict]) -> dict:
    """B-WER, U-WER, keyterm recall and false insertions over the rows whose entries had keyterms."""
    scored = [BiasCounts(**r["bias"]) for r in rows if "bias" in r]
    if not scored:
        return {}
    return {"bias": sum(scored, BiasCounts()).summary()}


def meeting_of(entry: dict) -> MeetingContext:
    """The keyterms and notes a manifest entry gives its session."""
    return MeetingContext(tuple(entry.get("keyterms", ())), entry.get("context", ""))


def evaluate(engine, manifests: list[str], mode: Mode | str, condition: str | None = None, limit: int = 0, context: bool = True) -> dict:
    """Stream every entry (with its keyterms and notes unless `context` is False); return
    {"sets": {name: report}, "conditions": {...}, "rows": [...]}; with keyterms, B-WER and U-WER too."""
    from streamer.pipeline import transcribe_file

    rows = []
    for manifest in manifests:
        for entry in load_manifest(manifest, limit, condition):
            t0 = time.perf_counter()
            meeting = meeting_of(entry) if context else MeetingContext()
            result = transcribe_file(entry["path"], engine, mode, meeting=meeting)
            errors, ref_words = word_errors(entry["text"], result.text)
            row = {
                "set": entry["set"],
                "id": entry["id"],
                "condition": entry.get("condition", ""),
                "seconds": result.audio_seconds,
                "decode_seconds": result.decode_seconds,
                "wall_seconds": time.perf_counter() - t0,
                "ref_words": ref_words,
                "errors": errors,
                "llm_calls": result.stats.llm_calls,
                "tokens": result.stats.tokens,
                "fused_tokens": result.stats.fused_tokens,
                "fused_words": sum(1 for f in result.finals for w in f.words if w.fused),
                "word_delays": [round(d, 3) for d in result.word_delays],
                "word_waits": [round(d, 3) for d in result.word_waits],
                "text": result.text,
                "reference": entry["text"],
                **({"bias": dataclasses.asdict(score(entry["text"], result.text, entry["keyterms"]))} if "keyterms" in entry else {}),
            }
            log.info("%s %s: %d/%d errors, %s", row["set"], row["id"], row["errors"], row["ref_words"], row["text"])
            rows.append(row)
    groups: dict[str, list[dict]] = defaultdict(list)
    conditions: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["set"]].append(row)
        if row["condition"]:
            conditions[f'{row["set"]}/{row["condition"]}'].append(row)
    return {
        "mode": str(mode),
        "sets": {k: _group_report(v) for k, v in groups.items()},
        "conditions": {k: _group_report(v) for k, v in conditions.items()},
        "all": _group_report(rows),
        "rows": rows,
    }


def calibration_source(config) -> dict:
    """Which calibration a fused run used and the manifests it was fitted on, so that a report can refuse
    to score a set with a calibration fitted on it (tools/crossval_report.py)."""
    from fusion.factory import DEFAULT_CALIBRATION

    path = Path(config.fusion.calibration).expanduser() if config.fusion.calibration else DEFAULT_CALIBRATION
    details = json.loads(path.read_text()).get("details", {}) if path.exists() else {}
    return {"path": str(path), "fitted_on": [Path(m).parent.name for m in details.get("manifests", [])]}


def format_report(report: dict) -> str:
    lines = [
        f"mode {report['mode']}; word delay = word end -> its final, stream time + decode time (s)",
        f"{'set':34s} {'utts':>5s} {'words':>6s} {'WER%':>6s} {'calls/100t':>10s} {'fused_w':>7s} {'RTF':>6s} "
        f"{'delay50':>7s} {'delay90':>7s} {'max':>6s}",
    ]
    for name, r in [*report["sets"].items(), *report["conditions"].items(), ("all", report["all"])]:
        d = {k: (f"{v:.2f}" if v is not None else "-") for k, v in r["word_delay"].items()}
        b = r.get("bias")
        bias = (f"  B-WER {_pct(b['b_wer'])} U-WER {_pct(b['u_wer'])} recall {_pct(b['keyterm_recall'])} "
                f"false-ins {b['keyterm_false_insertions']}") if b else ""
        lines.append(
            f"{name:34s} {r['utterances']:5d} {r['ref_words']:6d} {100 * r['wer']:6.2f} "
            f"{r['llm_calls_per_100_tokens']:10.1f} {r['fused_words']:7d} {r['rtf']:6.3f} {d['p50']:>7s} {d['p90']:>7s} {d['max']:>6s}{bias}"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def run(args: argparse.Namespace, config) -> int:
    from streamer.engine import Engine

    if args.mode == Mode.ASR:
        config.fusion.llm = ""  # no need to load the LLM
    engine = Engine(config)
    mode = args.mode or engine.default_mode
    report = evaluate(engine, args.manifest, mode, args.condition, args.limit, args.context == "manifest")
    report |= {"context": args.context, "manifests": list(args.manifest)}
    if Mode(mode).fused:
        report["calibration"] = calibration_source(config)
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0

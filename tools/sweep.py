"""`python -m tools.sweep`: WER against per-word final delay for streaming settings (the commit policy's knobs).

Each setting (`--setting "label:section.key=value,..."`) runs `uadf-stream eval`'s in-process pipeline over
the manifests with one loaded engine; per set it records WER, the word wait (word end -> its final in stream
time: what the policy costs, the same on any machine) and the word delay (the wait plus the window's decode
time on this machine; see streamer/pipeline.py). Writes sweep.json and a plot of WER against the wait per
set (docs/bench). Deterministic apart from the decode-time part of the delay.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

from core.types import Mode
from streamer.config import apply, load_config
from streamer.engine import Engine
from tools.evaluate import evaluate

log = logging.getLogger(__name__)


def parse_setting(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    label, _, assignments = text.partition(":")
    keys = []
    for item in filter(None, assignments.split(",")):
        name, _, value = item.partition("=")
        section, _, key = name.strip().partition(".")
        keys.append((section, key, value.strip()))
    return label, keys


def sweep(engine: Engine, manifests: list[str], mode: Mode, settings: list[str], limit: int = 0) -> list[dict]:
    base = copy.deepcopy(engine.config)
    out = []
    for text in settings:
        label, keys = parse_setting(text)
        engine.config = copy.deepcopy(base)
        for section, key, value in keys:
            apply(engine.config, section, key, value)
        report = evaluate(engine, manifests, mode, limit=limit)
        row = {"label": label, "mode": str(mode), "setting": text,
               "sets": {k: {m: v[m] for m in ("wer", "word_delay", "word_wait", "rtf", "ref_words")} for k, v in (report["sets"] | {"all": report["all"]}).items()},
               "rows": [{k: r[k] for k in ("set", "id", "errors", "ref_words", "text")} | {"max_wait": max(r["word_waits"], default=0.0)}
                        for r in report["rows"]]}
        log.info("%s: %s", label, json.dumps(row["sets"]["all"]))
        out.append(row)
    engine.config = base
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({s for r in rows for s in r["sets"]})
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.8), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for mode in sorted({r["mode"] for r in rows}):
            mine = [r for r in rows if r["mode"] == mode and name in r["sets"]]
            for q, marker in (("p50", "o"), ("p90", "^")):
                xs = [r["sets"][name].get("word_wait", r["sets"][name]["word_delay"])[q] for r in mine]
                ys = [100 * r["sets"][name]["wer"] for r in mine]
                ax.plot(xs, ys, marker=marker, linestyle="-" if q == "p50" else ":", label=f"{mode} {q}")
                if q == "p50":
                    for r, x, y in zip(mine, xs, ys):
                        ax.annotate(r["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(name)
        ax.set_xlabel("word end -> its final, stream time (s)")
        ax.set_ylabel("WER %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__)
    p.add_argument("--manifest", action="append", required=True)
    p.add_argument("--mode", default="asr", choices=Mode.names())
    p.add_argument("--setting", action="append", required=True, help='"label:section.key=value,..."')
    p.add_argument("--set", action="append", default=[], help="config override for every setting")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--out", default="bench-out/sweep", help="folder for sweep.json and sweep.png (appends to sweep.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mode = Mode(args.mode)
    config = load_config(overrides=args.set + ([] if mode.fused else ["fusion.llm="]))
    engine = Engine(config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "sweep.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    rows += sweep(engine, args.manifest, mode, args.setting, args.limit)
    results.write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, out / "sweep.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

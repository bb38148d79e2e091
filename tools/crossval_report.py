"""Held-out tables of the keyterm and fusion runs (issue 13): every `uadf-stream eval --json` report in a folder,
per set (domain) and keyterm list, never scoring a set with a calibration fitted on it.

Each report says its mode, whether the entries' keyterms were passed (`context`), its manifests (the N of
`eval/biasing/<set>/n<N>.jsonl`) and, for fused modes, the calibration and the sets it was fitted on (eval
writes them; older reports are read from the file names of scripts/keyterms-crossval: `<mode>-none-...` or
`<mode>-n<N>-...`). A fused report's rows of a set its calibration was fitted on are left out and listed, so a
figure here is always a held-out one: leave-one-set-out calibrations (fit on the other sets) or a calibration
fitted on other domains. Every row is scored against the N-list of its utterance (tools/biasing_metrics.py), so
runs without keyterms have false insertions per N too.

    python -m tools.crossval_report bench-out/keyterms [--ns 0 100 500] [--utterances 100]

Systems: `asr` without context; `asr` with the keyterms in Whisper's prompt; `uadf` without context; `uadf`
with keyterms (prompt, LLM prefix and keyterm candidates), each `uadf` row with the sets its calibration was
fitted on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.biasing import OUT as BIASING
from tools.biasing_metrics import BiasCounts, score_report

DOMAINS = {"speech-dev": "read", "speech-dev-noisy": "noisy", "speech-dev-hard": "noisy, reverberant",
           "speech-meeting": "conversational"}
TARGET_N = 100
_N = re.compile(r"(?:^|[-/])n(\d+)(?:\.jsonl|-|$)")


@dataclass(frozen=True)
class Run:
    """What one eval report ran: mode, keyterm list length N (None: no context) and the calibration's fit sets."""

    mode: str
    n: int | None
    fitted_on: tuple[str, ...] = ()

    @property
    def system(self) -> str:
        if self.mode == "asr":
            return "asr, no context" if self.n is None else "asr, keyterms in prompt"
        name = f"{self.mode}, no context" if self.n is None else f"{self.mode}, keyterms (prompt + LLM + candidates)"
        return f"{name}; fitted on {', '.join(self.fitted_on) or '?'}"


def describe(path: Path, report: dict) -> Run:
    """The run of a report, from its own fields, else from its file name."""
    mode = report["mode"]
    context = report.get("context") or ("none" if "-none" in path.stem else "manifest")
    n = None
    if context == "manifest":
        names = report.get("manifests") or [path.stem]
        found = {int(m.group(1)) for name in names if (m := _N.search(Path(name).as_posix()))}
        if len(found) != 1:
            raise ValueError(f"{path}: cannot tell its keyterm list length (N) from {names}")
        n = found.pop()
    fitted_on = tuple(report.get("calibration", {}).get("fitted_on", ())) if mode != "asr" else ()
    if mode != "asr" and "calibration" not in report:
        raise ValueError(f"{path}: a fused report without its calibration (rerun it with this eval)")
    return Run(mode, n, fitted_on)


def load_runs(folder: Path) -> tuple[dict[Run, list[dict]], list[str]]:
    """{run: rows} over the folder's reports, and what was left out (a set scored with its own fit)."""
    runs: dict[Run, list[dict]] = {}
    left_out = []
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        if "rows" not in report or "mode" not in report:
            continue  # a calibration file
        run = describe(path, report)
        rows = []
        for row in report["rows"]:
            if row["set"] in run.fitted_on:
                left_out.append(f"{path.name}: {row['set']}/{row['id']}")
            else:
                rows.append(row)
        have = {(r["set"], r["id"]) for r in runs.get(run, [])}
        dupes = [r for r in rows if (r["set"], r["id"]) in have]
        if dupes:
            raise ValueError(f"{path}: {dupes[0]['set']}/{dupes[0]['id']} is in another report of the same run")
        runs.setdefault(run, []).extend(rows)
    return runs, left_out


def totals(rows: list[dict], n: int) -> dict[str, BiasCounts]:
    """Counts per set, every row scored against its utterance's N-list."""
    sets = sorted({r["set"] for r in rows})
    scored = score_report(rows, [BIASING / s / f"n{n}.jsonl" for s in sets])
    return {s: sum((c for _, c in items), BiasCounts()) for s, items in scored.items()}


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.2f}%"


def _rel(x: float, base: float | None) -> str:
    return "-" if base is None or not base or x != x or base != base else f"{100 * (x - base) / base:+.0f}%"


def _order(run: Run) -> tuple:
    return (run.mode != "asr", run.n is not None, run.fitted_on)


def table(runs: dict[Run, list[dict]], ns: list[int]) -> tuple[str, dict]:
    """Per set, N and system: words, WER, B-WER, U-WER, recall, false insertions, and B-WER/U-WER against
    `asr` without context and against `asr` with the keyterms in its prompt."""
    lines = [
        "| set (domain) | N | system | words | WER | B-WER (B words) | U-WER | keyterm recall | false ins. | "
        "B-WER vs asr | B-WER vs prompt | U-WER vs asr |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out: dict = {}
    sets = [s for s in DOMAINS if any(r["set"] == s for rows in runs.values() for r in rows)]
    sets += sorted({r["set"] for rows in runs.values() for r in rows} - set(sets))
    for s in sets:
        for n in ns:
            here = {run: totals([r for r in rows if r["set"] == s], n) for run, rows in runs.items()
                    if (run.n in (None, n)) and any(r["set"] == s for r in rows)}
            base = here.get(Run("asr", None), {}).get(s)
            prompt = here.get(Run("asr", n), {}).get(s)
            for run in sorted(here, key=_order):
                c = here[run][s]
                out[(s, n, run)] = c
                lines.append(
                    f"| {s} ({DOMAINS.get(s, '?')}) | {n} | {run.system} | {c.ref_words} | {_pct(c.wer)} | "
                    f"{_pct(c.b_wer)} ({c.b_ref_words}) | {_pct(c.u_wer)} | {_pct(c.keyterm_recall)} | {c.keyterm_false_insertions} | "
                    f"{_rel(c.b_wer, base.b_wer if base else None)} | {_rel(c.b_wer, prompt.b_wer if prompt else None)} | "
                    f"{_rel(c.u_wer, base.u_wer if base else None)} |"
                )
    return "\n".join(lines), out


def targets(counts: dict) -> str:
    """The issue's targets at N = 100, per set and held-out fusion run."""
    lines = []
    for (s, n, run), c in sorted(counts.items(), key=lambda kv: (kv[0][0], _order(kv[0][2]))):
        if n != TARGET_N or run.mode == "asr":
            continue
        base, prompt = counts.get((s, n, Run("asr", None))), counts.get((s, n, Run("asr", n)))
        if base is None:
            continue
        if run.n is None:
            checks = {"uadf without keyterms <= asr (WER)": c.wer <= base.wer}
        else:
            checks = {"B-WER >= 40% below asr without context": c.b_wer <= 0.6 * base.b_wer,
                      "U-WER <= 2% above asr without context": c.u_wer <= 1.02 * base.u_wer}
            if prompt is not None:
                checks["B-WER >= 15% below prompt only"] = c.b_wer <= 0.85 * prompt.b_wer
        lines.append(f"- {s}, {run.system}: " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    return "\n".join(lines)


def changed_utterances(runs: dict[Run, list[dict]], n: int) -> str:
    """Per utterance where prompt only and prompt + fusion differ: errors, missed and inserted keyterms."""
    prompt = {(r["set"], r["id"]): r for r in runs.get(Run("asr", n), [])}
    lines = []
    for run, rows in sorted(runs.items(), key=lambda kv: _order(kv[0])):
        if run.mode == "asr" or run.n != n:
            continue
        for row in rows:
            p = prompt.get((row["set"], row["id"]))
            if p is None or p["text"] == row["text"]:
                continue
            (pc,), (fc,) = ([c for _, c in score_report([x], [BIASING / x["set"] / f"n{n}.jsonl"])[x["set"]]] for x in (p, row))
            lines.append(
                f"- {row['set']}/{row['id']} ({run.system}): errors {p['errors']} -> {row['errors']} "
                f"(B {pc.b_errors} -> {fc.b_errors}); missed {pc.missed} -> {fc.missed}; inserted {pc.inserted} -> {fc.inserted}\n"
                f"  prompt: {p['text']}\n  fusion: {row['text']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.crossval_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder of the eval reports (JSON)")
    parser.add_argument("--ns", type=int, nargs="+", default=[0, 100, 500])
    parser.add_argument("--utterances", type=int, help="also list the utterances fusion changed at this N")
    args = parser.parse_args(argv)
    runs, left_out = load_runs(args.out)
    text, counts = table(runs, args.ns)
    print("## Keyterms and fusion, held out\n\n" + text + f"\n\n## Targets (N = {TARGET_N})\n\n" + targets(counts))
    if args.utterances is not None:
        print(f"\n## Utterances fusion changed (N = {args.utterances})\n\n" + changed_utterances(runs, args.utterances))
    if left_out:
        print(f"\n{len(left_out)} rows left out (their set is in the calibration's fit):", *left_out[:20], sep="\n  ", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tables of the cross-validated keyterm and fusion runs (scripts/keyterms-crossval) and their targets (issue 13).

Reads the `uadf-stream eval --json` reports in one output folder: `asr-none.json` (no context), `asr-n<N>.json`
(keyterms in Whisper's prompt only), `uadf-n<N>-<set>.json` (prompt + fusion, each set with the calibration
fitted without it) and `uadf-none-<set>.json` (fusion without keyterms). Every row is scored against the
N-list of its utterance (tools/biasing_metrics.py), so "no context" has false insertions per N too.

    python -m tools.crossval_report bench-out/keyterms/delay-1.0 [--ns 0 100 500] [--utterances 100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tools.biasing_metrics import BiasCounts, score_report, set_totals

SETS = ("speech-dev", "speech-dev-noisy", "speech-dev-hard")
TARGET_N = 100


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def _scored(rows: list[dict], n: int) -> dict[str, list[tuple[dict, BiasCounts]]]:
    return score_report(rows, [f"eval/biasing/{s}/n{n}.jsonl" for s in SETS]) if rows else {}


def _systems(out: Path, n: int) -> dict[str, list[dict]]:
    return {
        "no context": _rows(out / "asr-none.json"),
        "prompt only": _rows(out / f"asr-n{n}.json"),
        "prompt + fusion": [r for s in SETS for r in _rows(out / f"uadf-n{n}-{s}.json")],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.2f}%"


def _rel(x: float, base: float) -> str:
    return "-" if not base or x != x or base != base else f"{100 * (x - base) / base:+.1f}%"


def _time(rows: list[dict], set_name: str) -> float:
    return sum(r["decode_seconds"] for r in rows if r["set"] == set_name)


def biasing_table(out: Path, ns: list[int]) -> tuple[str, dict]:
    """Per set and N: WER, B-WER, U-WER, recall, false insertions, decode time of the three systems."""
    lines = [
        "| set | N | system | WER | B-WER | U-WER | keyterm recall | false ins. | B-WER vs no context | B-WER vs prompt | "
        "U-WER vs no context | decode s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    totals: dict = {}
    for n in ns:
        systems = _systems(out, n)
        for name, rows in systems.items():
            totals[(n, name)] = set_totals(_scored(rows, n)) if rows else {}
        for s in SETS:
            base, prompt = totals[(n, "no context")].get(s), totals[(n, "prompt only")].get(s)
            for name, rows in systems.items():
                c = totals[(n, name)].get(s)
                if c is None:
                    continue
                lines.append(
                    f"| {s} | {n} | {name} | {_pct(c.wer)} | {_pct(c.b_wer)} | {_pct(c.u_wer)} | {_pct(c.keyterm_recall)} | "
                    f"{c.keyterm_false_insertions} | {_rel(c.b_wer, base.b_wer) if base else '-'} | "
                    f"{_rel(c.b_wer, prompt.b_wer) if prompt else '-'} | {_rel(c.u_wer, base.u_wer) if base else '-'} | "
                    f"{_time(rows, s):.0f} |"
                )
    return "\n".join(lines), totals


def fusion_table(out: Path) -> tuple[str, dict]:
    """Per set, without keyterms: `uadf` (calibration fitted without the set) against `asr`."""
    lines = ["| set | words | asr WER | uadf WER | relative | asr decode s | uadf decode s | LLM calls / 100 tokens |",
             "|---|---|---|---|---|---|---|---|"]
    result = {}
    asr_rows = _rows(out / "asr-none.json")
    for s in SETS:
        uadf_rows = _rows(out / f"uadf-none-{s}.json")
        a = [r for r in asr_rows if r["set"] == s]
        if not a or not uadf_rows:
            continue
        words = sum(r["ref_words"] for r in a)
        wa, wu = sum(r["errors"] for r in a) / words, sum(r["errors"] for r in uadf_rows) / words
        calls = 100 * sum(r["llm_calls"] for r in uadf_rows) / max(1, sum(r["tokens"] for r in uadf_rows))
        result[s] = (wa, wu)
        lines.append(f"| {s} | {words} | {_pct(wa)} | {_pct(wu)} | {_rel(wu, wa)} | {_time(a, s):.0f} | "
                     f"{_time(uadf_rows, s):.0f} | {calls:.1f} |")
    return "\n".join(lines), result


def targets(totals: dict, fusion: dict, out: Path) -> str:
    """The issue's targets at N = 100, per set."""
    lines = []
    for s in SETS:
        base = totals.get((TARGET_N, "no context"), {}).get(s)
        prompt = totals.get((TARGET_N, "prompt only"), {}).get(s)
        fused = totals.get((TARGET_N, "prompt + fusion"), {}).get(s)
        if not (base and prompt and fused):
            continue
        checks = {
            "B-WER >= 40% below no context": fused.b_wer <= 0.6 * base.b_wer,
            "B-WER >= 15% below prompt only": fused.b_wer <= 0.85 * prompt.b_wer,
            "U-WER <= 2% above no context": fused.u_wer <= 1.02 * base.u_wer,
        }
        if s in fusion:
            checks["uadf without keyterms <= asr"] = fusion[s][1] <= fusion[s][0]
        none_rows = _rows(out / f"uadf-none-{s}.json")
        kt_rows = _rows(out / f"uadf-n{TARGET_N}-{s}.json")
        if none_rows and kt_rows:
            ratio = _time(kt_rows, s) / max(_time(none_rows, s), 1e-9)
            checks[f"keyterm decode time <= +10% (here {100 * (ratio - 1):+.0f}%, shared CPU)"] = ratio <= 1.10
        lines.append(f"- {s}: " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    return "\n".join(lines)


def utterances(out: Path, n: int) -> str:
    """Per utterance where prompt-only and prompt + fusion differ: errors, missed and inserted keyterms."""
    prompt = {(r["set"], r["id"]): (r, c) for s, items in _scored(_rows(out / f"asr-n{n}.json"), n).items() for r, c in items}
    fused_rows = [r for s in SETS for r in _rows(out / f"uadf-n{n}-{s}.json")]
    lines = []
    for s, items in _scored(fused_rows, n).items():
        for row, c in items:
            p = prompt.get((s, row["id"]))
            if p is None or p[0]["text"] == row["text"]:
                continue
            pc = p[1]
            lines.append(
                f"- {s}/{row['id']}: errors {p[0]['errors']} -> {row['errors']} (B {pc.b_errors} -> {c.b_errors}); "
                f"missed {pc.missed} -> {c.missed}; inserted {pc.inserted} -> {c.inserted}\n"
                f"  prompt: {p[0]['text']}\n  fusion: {row['text']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.crossval_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder of the eval reports")
    parser.add_argument("--ns", type=int, nargs="+", default=[0, 100, 500])
    parser.add_argument("--utterances", type=int, help="also list the utterances fusion changed at this N")
    args = parser.parse_args(argv)
    out = Path(args.out)
    table, totals = biasing_table(out, args.ns)
    ftable, fusion = fusion_table(out)
    print("## Keyterms (cross-validated)\n\n" + table + "\n\n## Fusion without keyterms (cross-validated)\n\n" + ftable)
    print("\n## Targets (N = 100)\n\n" + targets(totals, fusion, out))
    if args.utterances is not None:
        print(f"\n## Utterances fusion changed (N = {args.utterances})\n\n" + utterances(out, args.utterances))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

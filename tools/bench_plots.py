"""PNG plots of a benchmark report (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


COLORS = {"offline": "C7", "naive-2s": "C3", "asr": "C0", "shallow": "C2", "uadf": "C1", "uadf-llm": "C4"}


def color(mode: str, k: int) -> str:
    return COLORS.get(mode, f"C{5 + k % 5}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def _save(plt, fig, ax, title: str, path: Path) -> Path:
    """Title, lay out, write the PNG, free the figure."""
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

def latency_cdf(latencies: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """CDF of per-word final (solid) and partial (dashed) latency, one colour per mode."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (mode, kinds) in enumerate(latencies.items()):
        c = color(mode, k)
        for kind, style in (("final", "-"), ("partial", "--")):
            values = np.sort(np.asarray(kinds.get(kind) or []))
            if not len(values) or (kind == "partial" and mode == "naive-2s"):
                continue
            ax.step(values, np.arange(1, len(values) + 1) / len(values), style, color=c, where="post", label=f"{mode} {kind}")
    ax.axvline(2.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("latency after the word ends in the stream (s)")
    ax.set_ylabel("fraction of words")
    finals = [v for kinds in latencies.values() for v in kinds.get("final") or []]
    ax.set_xlim(-0.5, max(3.0, float(np.percentile(finals, 99)) + 0.5) if finals else 3.0)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    return _save(plt, fig, ax, "Per-word latency CDF (final solid, partial dashed)", path)


def wer_latency(points: dict[str, tuple[float | None, float]], offline_wer: float | None, path: Path) -> Path:
    """WER of the finals against median final latency, one point per mode; offline as a horizontal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (mode, (latency, wer)) in enumerate(points.items()):
        if latency is None:
            continue
        ax.scatter([latency], [100 * wer], color=color(mode, k), s=60, zorder=3)
        ax.annotate(mode, (latency, 100 * wer), textcoords="offset points", xytext=(6, 4))
    ax.axvline(2.0, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, max([2.5] + [1.2 * x for x, _ in points.values() if x is not None]))
    ax.set_ylim(0, max([1.0] + [130 * w for _, w in points.values()] + ([130 * offline_wer] if offline_wer else [])))
    if offline_wer is not None:
        ax.axhline(100 * offline_wer, color="grey", ls="--", lw=1)
        ax.annotate("offline, whole file (no latency)", (ax.get_xlim()[1], 100 * offline_wer), textcoords="offset points",
                    xytext=(-4, 4), ha="right", fontsize=8, color="grey")
    ax.set_xlabel("median final latency (s)")
    ax.set_ylabel("WER of finals (%)")
    ax.grid(alpha=0.3)
    return _save(plt, fig, ax, "Accuracy against latency", path)


def capacity(levels: dict[str, list[tuple[int, float | None, float | None]]], path: Path, limit: float = 2.0) -> Path:
    """The worst client's per-word median (solid) and p90 (dashed) final latency against concurrent real-time streams."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (mode, rows) in enumerate(levels.items()):
        rows = [r for r in rows if r[1] is not None]
        if not rows:
            continue
        n = [r[0] for r in rows]
        ax.plot(n, [r[1] for r in rows], "o-", color=color(mode, k), label=f"{mode} worst client p50")
        ax.plot(n, [r[2] for r in rows], "s--", color=color(mode, k), alpha=0.6, label=f"{mode} worst client p90")
    ax.axhline(limit, color="grey", ls=":", lw=1)
    if not any(rows for rows in levels.values()):
        ax.text(0.5, 0.5, "no capacity sweep in this run", ha="center", transform=ax.transAxes, color="grey")
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("word -> final latency (s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(plt, fig, ax, "Final latency against concurrent streams", path)

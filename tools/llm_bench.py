"""LLM scoring cost and scores of the compacted CPU model against today's int8 reference.

Records the `LLMScorer.sync` / `score` calls the fusion decoder really makes while the in-process
pipeline streams manifest entries (uadf mode, the default LLM), then replays them on fresh
states with two models loaded in the same process, alternating over repetitions:

- reference: float32 model, int8 `quantize_dynamic` on a copy, float32 embedding kept in memory
  (what `load_llm(quantize=True)` built before fusion.llm_memory);
- compact: `load_llm(quantize=True)` (fusion.llm_memory: embedding rows read from the file).

Reports the largest score difference (0.0 means bit-identical) and the CPU time
(time.process_time, one torch thread) per sync and per score call of each.

    python -m tools.llm_bench --manifest /work/shared/data/speech-dev-noisy/manifest.jsonl --limit 12 --reps 5
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from fusion.llm_loader import LoadedLLM, load_llm
from fusion.llm_scorer import LLMScorer, LLMState


@dataclass
class Call:
    """One scorer call of a session: sync to `ids`, or score `texts`."""

    session: int
    kind: str  # "sync" | "score"
    ids: list[int] | None = None
    texts: list[str] | None = None


def record(manifest: str, limit: int, config_path: str | None = None) -> tuple[list[Call], LoadedLLM]:
    """Stream `limit` entries of the manifest in uadf mode; return the scorer calls and the loaded LLM."""
    from streamer.config import load_config
    from streamer.engine import Engine
    from tools.evaluate import evaluate

    calls: list[Call] = []
    sessions: dict[int, tuple[int, LLMState]] = {}  # holds the states so that no id is reused
    scorers: list[LLMScorer] = []
    sync, score = LLMScorer.sync, LLMScorer.score

    def session(scorer: LLMScorer, state: LLMState) -> int:
        if scorer not in scorers:
            scorers.append(scorer)
        return sessions.setdefault(id(state), (len(sessions), state))[0]

    def recording_sync(self: LLMScorer, state: LLMState, ids: list[int]) -> None:
        calls.append(Call(session(self, state), "sync", ids=list(ids)))
        sync(self, state, ids)

    def recording_score(self: LLMScorer, state: LLMState, texts: list[str]) -> np.ndarray:
        calls.append(Call(session(self, state), "score", texts=list(texts)))
        return score(self, state, texts)

    engine = Engine(load_config(config_path, ["fusion.mode=uadf"]))
    LLMScorer.sync, LLMScorer.score = recording_sync, recording_score
    try:
        evaluate(engine, [manifest], "uadf", limit=limit)
    finally:
        LLMScorer.sync, LLMScorer.score = sync, score
    if len(scorers) != 1:
        raise RuntimeError(f"expected the calls of one LLM scorer, got {len(scorers)}")
    return calls, scorers[0].llm


def reference_llm(fp32: LoadedLLM) -> LoadedLLM:
    """The model `load_llm(quantize=True)` built before fusion.llm_memory from the float32 one:
    int8 linears on a deep copy, the float32 embedding kept in memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(fp32.model, {torch.nn.Linear}, dtype=torch.qint8)
    return LoadedLLM(name=fp32.name, model=model, tokenizer=fp32.tokenizer, device=fp32.device)


def replay(scorer: LLMScorer, calls: list[Call]) -> tuple[list[np.ndarray], float, float]:
    """Run the calls on fresh states; (score arrays, CPU seconds in sync, CPU seconds in score)."""
    states: dict[int, LLMState] = {}
    out, cpu = [], {"sync": 0.0, "score": 0.0}
    for call in calls:
        state = states.setdefault(call.session, LLMState())
        t = time.process_time()
        if call.kind == "sync":
            scorer.sync(state, call.ids)
            out.append(state.last_logits.numpy().copy())
        else:
            out.append(scorer.score(state, call.texts))
        cpu[call.kind] += time.process_time() - t
    return out, cpu["sync"], cpu["score"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--limit", type=int, default=12, help="manifest entries streamed to record the calls")
    parser.add_argument("--reps", type=int, default=5, help="replays of all calls per model (alternating)")
    parser.add_argument("--config", help="config.toml (default: the repository's)")
    parser.add_argument("--json", dest="json_out", help="write the figures here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    calls, compact = record(args.manifest, args.limit, args.config)
    tau = 1.0
    models = {"reference": LLMScorer(reference_llm(load_llm(compact.name, "cpu")), tau), "compact": LLMScorer(compact, tau)}
    n_sync = sum(c.kind == "sync" for c in calls)
    n_score = len(calls) - n_sync
    cpu = {name: [0.0, 0.0] for name in models}
    outputs = {}
    for rep in range(args.reps):
        for name, scorer in sorted(models.items(), reverse=rep % 2 == 1):  # ABBA: neither always runs first
            outputs[name], s, c = replay(scorer, calls)
            cpu[name][0] += s
            cpu[name][1] += c
    diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs["reference"], outputs["compact"]))
    report = {
        "calls": {"sync": n_sync, "score": n_score, "sessions": len({c.session for c in calls})},
        "reps": args.reps,
        "max_abs_diff": diff,
        "cpu_ms_per_call": {
            name: {"sync": 1000 * s / (args.reps * n_sync), "score": 1000 * c / (args.reps * n_score)}
            for name, (s, c) in cpu.items()
        },
    }
    print(json.dumps(report, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

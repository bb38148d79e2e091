"""`uadf-stream calibrate`: fit ASR and LLM temperatures and the UADF gate on held-out manifests.

ASR: greedy tiny.en steps, a token counts as correct when its word is a hit in the jiwer
alignment with the normalized reference. LLM: next-token prediction over the ASR hypotheses of
the clips the ASR got right (cased, punctuated text like what the LLM sees at run time).
Spans and gate: the decoder's comparisons at every step the lowest gate would open, observed in the
streaming pipeline's windows that commit words (the commit policy as configured; ASR path kept) and
labelled against the references (tools/decisions.py); span temperatures fitted on them, then the gate
with the most net fixes that regresses no set or condition.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import ctranslate2
import jiwer
import numpy as np
import torch

from core.types import FusionOptions, Mode
from fusion.calibration import Calibration, fit_temperature
from fusion.candidates import text_logits
from fusion.decoder import Comparison, FusionDecoder, ModeDecoder
from fusion.llm_scorer import LLMScorer
from streamer.audio import load_audio
from streamer.engine import Engine
from streamer.greedy import GreedyDecoder
from streamer.pipeline import transcribe_file
from tools.data import load_manifest, normalize
from tools.decisions import Decision, choose_gate, fit_span_temperatures, gate_table, label

log = logging.getLogger(__name__)

GATE_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
NEVER = 1e9  # gate that never opens
TOP = 256  # logits kept per step for the temperature fit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", action="append", required=True, help="manifest.jsonl (repeatable)")
    parser.add_argument("--out", default=None, help="calibration JSON (default: fusion.calibration of config)")
    parser.add_argument("--decisions", help="also write the labelled decisions here (JSONL)")
    parser.add_argument("--gates", default=",".join(map(str, GATE_GRID)), help="comma-separated gate grid")


def _token_correct(fusion: FusionDecoder, tokens: list[int], reference: str, norm) -> list[bool]:
    """Per token: does its word survive normalization as a hit against the reference?"""
    words: list[list[int]] = []
    for t in tokens:
        if not words or fusion.pieces.starts_word(t):
            words.append([])
        words[-1].append(t)
    normed = [norm(fusion.tokenizer.decode(w)).split() for w in words]
    hyp = [x for n in normed for x in n]
    ref = norm(reference).split()
    hit = [False] * len(hyp)
    if hyp and ref:
        for chunk in jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]:
            if chunk.type == "equal":
                for k in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                    hit[k] = True
    out, k = [], 0
    for w, n in zip(words, normed):
        ok = all(hit[k : k + len(n)])
        k += len(n)
        out += [ok] * len(w)
    return out


def fit_asr(backend, fusion: FusionDecoder, rows: list[dict], norm) -> tuple[float, dict]:
    """Token temperature of the ASR: greedy steps over each clip (<= 30 s) as one window."""
    tok = fusion.tokenizer
    tops, correct, hyps = [], [], []
    for row in rows:
        if row["seconds"] > 30:
            continue
        encoded, _ = backend.encode([load_audio(row["path"])])
        res = fusion.whisper.generate(
            ctranslate2.StorageView.from_array(encoded), [backend.prompt_tokens("")], beam_size=1, return_logits_vocab=True
        )[0]
        tokens = res.sequences_ids[0]
        if not tokens:
            continue
        ok = _token_correct(fusion, tokens, row["text"], norm)
        for step, good in zip(res.logits[0], ok):
            tops.append(np.sort(text_logits(step, tok.eot))[-TOP:])
            correct.append(good)
        if all(ok):
            hyps.append(tok.decode(tokens).strip())
    tau = fit_temperature(np.stack(tops), np.array(correct))
    return tau, {"asr_steps": len(correct), "asr_accuracy": float(np.mean(correct)), "clean_hypotheses": hyps}


@torch.inference_mode()
def fit_llm(scorer: LLMScorer, texts: list[str]) -> tuple[float, dict]:
    """Token temperature of the LLM: next-token prediction over the ASR's correct hypotheses."""
    tops, correct = [], []
    for text in texts:
        ids = scorer.context_ids(text)
        logits = scorer.llm.model(input_ids=torch.tensor([ids], device=scorer.llm.device)).logits[0, :-1].float()
        top = torch.topk(logits, TOP, dim=-1)
        tops.append(top.values.cpu().numpy())
        correct.append((top.indices[:, 0].cpu().numpy() == np.array(ids[1:])))
    tau = fit_temperature(np.concatenate(tops), np.concatenate(correct))
    return tau, {"llm_steps": int(sum(len(c) for c in correct)), "llm_accuracy": float(np.mean(np.concatenate(correct)))}


def record_decisions(engine: Engine, fusion: FusionDecoder, sets: dict[str, list[dict]], gate: float, norm) -> list[Decision]:
    """Every comparison the fusion decoder would make at `gate` in a `uadf` stream of every clip, observed
    (keeping the ASR's token) in the windows that commit words under the configured commit policy, as the
    daemon runs them, and labelled against the clip's reference. A step re-decoded in several windows with
    the same context and candidates counts once."""
    fusion.gate = gate
    decisions: list[Decision] = []
    for name, rows in sets.items():
        for row in rows:
            reference = norm(row["text"]).split()
            found: dict[tuple, Comparison] = {}
            fusion.observer = lambda c: found.setdefault((c.context, tuple(map(tuple, c.pairs))), c)
            transcribe_file(row["path"], engine, Mode.UADF)
            group = f"{name}/{row['condition']}" if row.get("condition") else name
            decisions += [Decision(c, group, label(c, reference, norm)) for c in found.values()]
            log.info("%s: %d decisions", row["id"], len(found))
    fusion.observer = None
    return decisions


def save_decisions(decisions: list[Decision], path: str) -> None:
    with open(path, "w") as f:
        for d in decisions:
            c = d.comparison
            row = {"group": d.group, "correct": d.correct, "h": c.h, "pairs": c.pairs, "context": c.context}
            f.write(json.dumps(row | {"asr_lp": c.asr_lp.tolist(), "llm_lp": c.llm_lp.tolist()}) + "\n")


def run(args: argparse.Namespace, config) -> int:
    """Needs the Whisper model and a fusion LLM; writes the calibration JSON."""
    from fusion.factory import DEFAULT_CALIBRATION, create_fusion
    from streamer.whisper_backend import WhisperBackend

    options: FusionOptions = replace(config.fusion, mode=Mode.UADF, gate=None)
    if args.llm:
        options = replace(options, llm=args.llm)
    if not options.llm:
        raise SystemExit("calibrate needs an LLM: --llm or fusion.llm")
    out = args.out or options.calibration or str(DEFAULT_CALIBRATION)
    backend = WhisperBackend(config.asr)
    decoder = create_fusion(backend, options)
    decoder.calibration, decoder.scorer.tau = Calibration(), 1.0  # fit from tau = 1
    engine = Engine(config, backend, {Mode.ASR: GreedyDecoder(backend.model, backend.tokenizer.eot), Mode.UADF: ModeDecoder(decoder, Mode.UADF)})
    norm = normalize
    sets = {Path(m).parent.name: load_manifest(m) for m in args.manifest}
    rows = [r for rs in sets.values() for r in rs]
    asr_tau, asr_info = fit_asr(backend, decoder, rows, norm)
    llm_tau, llm_info = fit_llm(decoder.scorer, asr_info.pop("clean_hypotheses"))
    decoder.calibration = Calibration(asr_tau=asr_tau, llm_tau=llm_tau)
    decoder.scorer.tau = llm_tau
    grid = sorted(float(g) for g in args.gates.split(","))
    decisions = record_decisions(engine, decoder, sets, grid[0], norm)
    if args.decisions:
        save_decisions(decisions, args.decisions)
    span_asr_tau, span_llm_tau, span_info = fit_span_temperatures(decisions)
    table = gate_table(decisions, grid, span_asr_tau, span_llm_tau)
    groups = sorted({d.group for d in decisions} | {n for n in sets})
    gate = choose_gate(table, groups, NEVER)
    calibration = Calibration(
        asr_tau=asr_tau,
        llm_tau=llm_tau,
        span_asr_tau=span_asr_tau,
        span_llm_tau=span_llm_tau,
        gate=gate,
        llm=options.llm,
        details={"manifests": args.manifest, **asr_info, **llm_info, **span_info, "gate_net_fixes": table},
    )
    calibration.save(out)
    print(json.dumps({k: v for k, v in calibration.__dict__.items() if k != "details"}, indent=2))
    print(f"wrote {out}")
    return 0

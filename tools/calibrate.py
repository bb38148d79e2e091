"""`uadf-stream calibrate`: fit ASR and LLM temperatures and the UADF gate on held-out manifests.

ASR: greedy tiny.en steps, a token counts as correct when its word is a hit in the jiwer
alignment with the normalized reference. LLM: next-token prediction over the ASR hypotheses of
the clips the ASR got right (cased, punctuated text like what the LLM sees at run time).
Spans and gate: the decoder's comparisons at every step the lowest gate would open, observed in the
streaming pipeline's windows that commit words (the commit policy as configured; ASR path kept; `--windows
endpoint`: the endpoint windows only, where a stream fuses) and
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

from core.types import FusionOptions, MeetingContext, Mode
from fusion.calibration import Calibration, fit_temperature
from fusion.candidates import text_logits
from fusion.decoder import Comparison, FusionDecoder, ModeDecoder
from fusion.llm_scorer import LLMScorer
from streamer.audio import load_audio
from streamer.config import FusedWindows
from streamer.engine import Engine
from streamer.greedy import GreedyDecoder
from streamer.pipeline import transcribe_file
from tools.data import load_manifest, normalize
from tools.decisions import (
    Decision, asr_candidates_only, choose_gate, choose_keyterms, fit_span_temperatures, gate_table, in_reference, keyterm_table,
)
from tools.evaluate import meeting_of

log = logging.getLogger(__name__)

GATE_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
BOOST_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
MIN_PROB_GRID = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
NEVER = 1e9  # gate that never opens
TOP = 256  # logits kept per step for the temperature fit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", action="append", required=True, help="manifest.jsonl (repeatable); entries with "
                        "`keyterms` (eval/biasing/<set>/n<N>.jsonl) are also streamed with them, to fit the keyterm settings")
    parser.add_argument("--limit", type=int, default=0, help="first N entries of each manifest (0: all)")
    parser.add_argument("--windows", choices=[w.value for w in FusedWindows], default=FusedWindows.COMMITTING.value,
                        help="windows whose comparisons are recorded: every window that commits words (default: about ten "
                        "times the comparisons of the endpoint windows alone, of the same kind) or the endpoint windows")
    parser.add_argument("--out", default=None, help="calibration JSON (default: fusion.calibration of config)")
    parser.add_argument("--decisions", help="also write the recorded decisions (and token temperatures) here (JSONL)")
    parser.add_argument("--from-decisions", help="fit from decisions written by --decisions instead of recording them")
    parser.add_argument("--gates", default=",".join(map(str, GATE_GRID)), help="comma-separated gate grid")
    parser.add_argument("--keyterm-boosts", default=",".join(map(str, BOOST_GRID)), help="comma-separated keyterm boost grid (nats)")
    parser.add_argument("--keyterm-min-probs", default=",".join(map(str, MIN_PROB_GRID)),
                        help="comma-separated grid of the keyterm candidates' first-token probability threshold")


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


def record_decisions(
    engine: Engine, fusion: FusionDecoder, sets: dict[str, list[dict]], gate: float, norm,
    keyterms: bool = False, keyterm_min_prob: float = 0.0, keyterm_max_boost: float = 0.0,
) -> list[Decision]:
    """Every comparison the fusion decoder would make at `gate` (and, with `keyterms`, with the entries'
    keyterms at `keyterm_min_prob`) in a `uadf` stream of every clip, observed (keeping the ASR's token)
    in the windows that commit words under the configured commit policy, as the daemon runs them, and
    marked against the clip's reference. A step re-decoded in several windows with the same context and
    candidates counts once."""
    fusion.gate, fusion.keyterm_min_prob, fusion.keyterm_max_boost = gate, keyterm_min_prob, keyterm_max_boost
    decisions: list[Decision] = []
    try:
        for name, rows in sets.items():
            for row in rows:
                if keyterms and not row.get("keyterms"):
                    continue
                reference = norm(row["text"]).split()
                found: dict[tuple, Comparison] = {}
                fusion.observer = lambda c: found.setdefault((c.context, tuple(map(tuple, c.pairs))), c)
                meeting = meeting_of(row) if keyterms else MeetingContext()
                transcribe_file(row["path"], engine, Mode.UADF, meeting=meeting)
                group = f"{name}/{row['condition']}" if row.get("condition") else name
                decisions += [Decision(c, group, in_reference(c, reference, norm), keyterms) for c in found.values()]
                log.info("%s%s: %d decisions", row["id"], " (keyterms)" if keyterms else "", len(found))
    finally:
        fusion.observer, fusion.keyterm_min_prob, fusion.keyterm_max_boost = None, None, None
    return decisions


def save_decisions(decisions: list[Decision], temperatures: dict, path: str) -> None:
    """The token temperatures (first line), then one decision a line: everything fitting needs."""
    with open(path, "w") as f:
        f.write(json.dumps({"temperatures": temperatures}) + "\n")
        for d in decisions:
            c = d.comparison
            row = {"group": d.group, "keyterms": d.keyterms, "oks": d.oks, "h": c.h, "cands": c.cands, "pairs": c.pairs,
                   "context": c.context, "asr_lp": c.asr_lp.tolist(), "llm_lp": c.llm_lp.tolist(),
                   "from_asr": c.from_asr.tolist(), "from_keyterm": c.from_keyterm.tolist(),
                   "first_prob": c.first_prob.tolist(), "bias": c.bias.tolist()}
            f.write(json.dumps(row) + "\n")


def load_decisions(path: str) -> tuple[list[Decision], dict]:
    lines = Path(path).read_text().splitlines()
    temperatures = json.loads(lines[0])["temperatures"]
    decisions = []
    for line in lines[1:]:
        r = json.loads(line)
        c = Comparison(r["h"], [tuple(x) for x in r["cands"]], [tuple(p) for p in r["pairs"]], np.array(r["asr_lp"]),
                       np.array(r["llm_lp"]), r["context"], np.array(r["from_asr"]), np.array(r["from_keyterm"]),
                       np.array(r["first_prob"]), np.array(r["bias"]))
        decisions.append(Decision(c, r["group"], r["oks"], r["keyterms"]))
    return decisions, temperatures


def fit(decisions: list[Decision], groups: list[str], gates: list[float], boosts: list[float], min_probs: list[float]) -> dict:
    """Span temperatures and gate from the decisions streamed without keyterms (the ASR's candidates),
    then the keyterm boost and threshold from those streamed with keyterms, at that gate. Each setting is
    the cheapest within 10% of the best net gain that regresses no group."""
    plain = asr_candidates_only([d for d in decisions if not d.keyterms], gates[0])
    span_asr_tau, span_llm_tau, info = fit_span_temperatures(plain)
    table = gate_table(plain, gates, span_asr_tau, span_llm_tau)
    gate = choose_gate(table, groups, NEVER)
    fields = {"span_asr_tau": span_asr_tau, "span_llm_tau": span_llm_tau, "gate": gate}
    with_keyterms = [d for d in decisions if d.keyterms]
    if with_keyterms:
        kt_gate = gate if gate < NEVER else float("inf")
        kt_table = keyterm_table(with_keyterms, kt_gate, boosts, min_probs, span_asr_tau, span_llm_tau)
        boost, min_prob = choose_keyterms(kt_table, sorted({d.group for d in with_keyterms}))
        fields |= {"keyterm_boost": boost, "keyterm_min_prob": min_prob}
        kt_decisions = [d for d in with_keyterms if d.comparison.from_keyterm.any()]
        info |= {"keyterm_decisions": len(kt_decisions),
                 "labelled_keyterm_decisions": sum(d.correct is not None for d in kt_decisions),
                 "keyterm_net_fixes": kt_table}
    return fields | {"details": info | {"gate_net_fixes": table}}


def run(args: argparse.Namespace, config) -> int:
    """Needs the Whisper model and a fusion LLM (unless fitting from saved decisions); writes the
    calibration JSON."""
    from fusion.factory import DEFAULT_CALIBRATION, create_fusion
    from streamer.whisper_backend import WhisperBackend

    options: FusionOptions = replace(config.fusion, mode=Mode.UADF, gate=None)
    if args.llm:
        options = replace(options, llm=args.llm)
    if not options.llm:
        raise SystemExit("calibrate needs an LLM: --llm or fusion.llm")
    out = Path(args.out or options.calibration or str(DEFAULT_CALIBRATION))
    sets = {Path(m).parent.name: load_manifest(m, args.limit) for m in args.manifest}
    config = replace(config, streaming=replace(config.streaming, fused_windows=FusedWindows(args.windows)))
    gates = sorted(float(g) for g in args.gates.split(","))
    boosts = sorted(float(b) for b in args.keyterm_boosts.split(","))
    min_probs = sorted(float(p) for p in args.keyterm_min_probs.split(","))
    if args.from_decisions:
        decisions, temperatures = load_decisions(args.from_decisions)
    else:
        backend = WhisperBackend(config.asr)
        decoder = create_fusion(backend, replace(options, calibration=""))  # refitted below; the configured file may not exist yet
        decoder.calibration, decoder.scorer.tau = Calibration(), 1.0  # fit from tau = 1
        modes = {Mode.ASR: GreedyDecoder(backend.model, backend.tokenizer.eot), Mode.UADF: ModeDecoder(decoder, Mode.UADF)}
        engine = Engine(config, backend, modes)
        rows = [r for rs in sets.values() for r in rs]
        asr_tau, asr_info = fit_asr(backend, decoder, rows, normalize)
        llm_tau, llm_info = fit_llm(decoder.scorer, asr_info.pop("clean_hypotheses"))
        temperatures = {"asr_tau": asr_tau, "llm_tau": llm_tau, **asr_info, **llm_info}
        decoder.calibration = Calibration(asr_tau=asr_tau, llm_tau=llm_tau)
        decoder.scorer.tau = llm_tau
        decisions = record_decisions(engine, decoder, sets, gates[0], normalize)
        if any(r.get("keyterms") for r in rows):
            decisions += record_decisions(
                engine, decoder, sets, gates[0], normalize, keyterms=True, keyterm_min_prob=min_probs[0], keyterm_max_boost=boosts[-1]
            )
        if args.decisions:
            save_decisions(decisions, temperatures, args.decisions)
    groups = sorted({d.group for d in decisions} | set(sets))
    fitted = fit(decisions, groups, gates, boosts, min_probs)
    calibration = Calibration(
        asr_tau=temperatures["asr_tau"], llm_tau=temperatures["llm_tau"], llm=options.llm,
        **{k: v for k, v in fitted.items() if k != "details"},
        details={"manifests": args.manifest, "limit": args.limit, "windows": args.windows, **{k: v for k, v in temperatures.items() if k not in ("asr_tau", "llm_tau")},
                 **fitted["details"]},
    )
    calibration.save(out)
    print(json.dumps({k: v for k, v in calibration.__dict__.items() if k != "details"}, indent=2))
    print(f"wrote {out}")
    return 0

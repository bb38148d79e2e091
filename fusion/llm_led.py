"""`uadf-llm`: the paper's direction. The LLM writes the transcript, prompted with the ASR N-best;
at each LLM step its calibrated distribution leads and the ASR's teacher-forced probability of
each candidate continuation (one batched forced-prefix generate) is fused in with
the UADF weight sigmoid(H_llm) - 0.5.

Slow (one LLM forward and one batched ASR pass per LLM token): an experimental mode.
"""

from __future__ import annotations

import difflib

import ctranslate2
import numpy as np

from fusion.candidates import audio_frames, text_logits
from fusion.uncertainty import entropy, fusion_weight, log_softmax

END = -1  # candidate id: the transcript ends here


def prompt_text(committed: str, hypotheses: list[str]) -> str:
    """Previous text + N-best, one `Hypothesis:` line each; the LLM continues `Transcript:`.
    (SmolLM2's chat template did worse: the 135M model answers the request instead.)"""
    lines = [f"Previous text: {committed}"] if committed else []
    lines += [f"Hypothesis: {h}" for h in hypotheses]
    lines.append("Transcript:")
    return "\n".join(lines)


def decode_llm_led(decoder, encoder_output: ctranslate2.StorageView, prompt: list[int], context, max_length: int):
    """Returns a DecodeResult whose tokens are Whisper tokens of the LLM-led transcript."""
    tok, scorer, opts = decoder.tokenizer, decoder.scorer, decoder.options
    nbest = decoder.whisper.generate(
        encoder_output, [prompt], beam_size=opts.top_k, num_hypotheses=opts.top_k,
        max_length=max_length, return_no_speech_prob=True,
    )[0]
    greedy = list(nbest.sequences_ids[0])
    hyps = [tok.decode(s).strip() for s in nbest.sequences_ids]
    if not greedy:
        return decoder.path_result([], [], [], float(nbest.no_speech_prob), 0)
    enc = np.array(encoder_output)
    enc = enc[:, : audio_frames(enc, decoder.silence) + 25]
    llm_ids = scorer.context_ids(prompt_text(context.committed, hyps))
    newline = set(scorer.tokenize("\n"))
    eos = set(scorer.llm.tokenizer.all_special_ids)
    text, calls = "", 0
    for _ in range(2 * len(greedy) + 4):
        scorer.sync(context.state, llm_ids)
        cal = log_softmax(context.state.last_logits.cpu().numpy(), decoder.calibration.llm_tau)
        h = float(entropy(cal))
        top = [int(t) for t in np.argsort(-cal)[: opts.top_k] if np.exp(cal[t]) >= opts.min_candidate_prob]
        cands = sorted({END if (t in newline or t in eos) else t for t in top}, key=lambda c: c != END)
        if not text.strip():  # the transcript has not started: nothing can end yet
            cands = [c for c in cands if c != END] or [int(t) for t in np.argsort(-cal)[: opts.top_k] if t not in newline | eos]
        if not cands:
            break
        texts = [text if c == END else text + scorer.llm.tokenizer.decode([c]) for c in cands]
        p_asr = _asr_probs(decoder, enc, prompt, texts, [c == END for c in cands])
        calls += 1
        p_llm = np.array([sum(np.exp(cal[t]) for t in top if (END if (t in newline or t in eos) else t) == c) for c in cands])
        winner = cands[int(np.argmax(p_llm + fusion_weight(h) * p_asr))]
        if winner == END:
            break
        text = texts[cands.index(winner)]
        llm_ids = llm_ids + [winner]
    tokens = tok.encode(" " + text.strip()) if text.strip() else []
    forced = decoder.whisper.generate(
        encoder_output, [prompt + tokens], beam_size=1, max_length=max(max_length, 2 * (len(prompt) + len(tokens) + 2)),
        return_logits_vocab=True, suppress_blank=False,
    )[0]
    logits = [text_logits(s, tok.eot) for s in forced.logits[0][: len(tokens) + 1]]
    same = difflib.SequenceMatcher(a=greedy, b=tokens, autojunk=False)
    fused = [True] * len(tokens)
    for block in same.get_matching_blocks():
        fused[block.b : block.b + block.size] = [False] * block.size
    return decoder.path_result(tokens, logits, fused, float(nbest.no_speech_prob), calls)


def _asr_probs(decoder, enc: np.ndarray, prompt: list[int], texts: list[str], ends: list[bool]) -> np.ndarray:
    """ASR probability of each candidate text, normalized over the candidates.

    Teacher-forced in one batched call: the candidate's Whisper tokens are forced through the
    prompt and the logits at the forced positions (plus the next one, for eot) come back."""
    tok = decoder.tokenizer
    seqs = [tok.encode(" " + t.strip()) if t.strip() else [] for t in texts]
    batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(enc, len(seqs), 0)))
    longest = max(len(s) for s in seqs)
    results = decoder.whisper.generate(
        batch, [prompt + s for s in seqs], beam_size=1, max_length=2 * (len(prompt) + longest + 2),
        return_logits_vocab=True, suppress_blank=False,
    )
    logp = np.zeros(len(seqs))
    for k, (seq, end, res) in enumerate(zip(seqs, ends, results)):
        steps = [log_softmax(text_logits(x, tok.eot)) for x in res.logits[0][: len(seq) + 1]]
        logp[k] = sum(float(steps[j][t]) for j, t in enumerate(seq))
        if end:
            logp[k] += float(steps[len(seq)][tok.eot]) if len(steps) > len(seq) else -np.inf
    p = np.exp(logp - logp.max())
    return p / p.sum()

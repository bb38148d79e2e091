"""ASR-led step-wise decoding over CTranslate2 Whisper with uncertainty-gated LLM fusion.

One greedy `generate` gives the ASR path and its per-step logits. Walking the steps, the LLM is
consulted only where the calibrated ASR entropy passes the gate (every step in `shallow` mode);
the candidates are the ASR's own top-k tokens, each continued by the ASR until it rejoins the ASR
path and compared with it as text over the same words. When the fused choice differs
from the ASR's, decoding continues from the accepted prefix forced through the prompt (the
forced positions come back teacher-forced, so earlier logits stay valid).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer

from core.interfaces import DecodeTask
from core.types import DecodeResult, FusionOptions, MeetingContext, Mode
from fusion.calibration import Calibration
from fusion.candidates import (
    WordPieces, audio_frames, continue_with_asr, norm_word, rejoin, same_words, select_candidates, text_logits,
)
from fusion.keyterms import KEYTERM_CANDIDATES, KEYTERM_STEPS, KeytermCandidate, KeytermTrie, propose
from fusion.llm_led import decode_llm_led
from fusion.llm_scorer import LLMScorer, LLMState
from fusion.uncertainty import entropy, fusion_weight, gate_open, log_softmax, softmax

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """One consulted step: the candidates (token sequences to force, the ASR's choice first), the span
    texts compared (ASR path's, candidate's) for each other candidate, and each model's span log-odds
    against the choice. Per candidate also: who proposed it (the ASR's top-k, which the entropy gate lets
    in; the keyterms, which their first token's calibrated ASR probability `first_prob` lets in) and
    `bias`, how many more keyterm occurrences its span holds than the choice's."""

    h: float
    cands: list[tuple[int, ...]]
    pairs: list[tuple[str, str]]
    asr_lp: np.ndarray
    llm_lp: np.ndarray
    context: str = ""
    from_asr: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    from_keyterm: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    first_prob: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        n = len(self.asr_lp)
        fill = {"from_asr": True, "from_keyterm": False, "first_prob": 1.0, "bias": 0.0}
        for name, default in fill.items():
            value = np.asarray(getattr(self, name))
            setattr(self, name, value.astype(type(default)) if len(value) == n else np.full(n, default))

    def uadf_choice(self, span_asr_tau: float, span_llm_tau: float, keyterm_boost: float = 0.0) -> int:
        """Index of the UADF winner: both span distributions calibrated, the LLM's weighted by the
        ASR's entropy (an LLM's absolute probability of a multi-word span would never move a decision).
        Each keyterm a span holds beyond the choice's adds `keyterm_boost` nats on the ASR's side: the
        prior that a term the meeting announced is said (contextual biasing), fitted like the gate."""
        asr = softmax(self.asr_lp / span_asr_tau + keyterm_boost * self.bias)
        llm = softmax(self.llm_lp / span_llm_tau)
        return int(np.argmax(asr + fusion_weight(self.h) * llm))

    def subset(self, keep: np.ndarray) -> "Comparison":
        """The comparison over the kept candidates (the choice, index 0, is always kept)."""
        keep = np.asarray(keep, bool).copy()
        keep[0] = True
        idx = np.flatnonzero(keep)
        return Comparison(
            self.h, [self.cands[k] for k in idx], [self.pairs[k - 1] for k in idx[1:]], self.asr_lp[idx], self.llm_lp[idx],
            self.context, self.from_asr[idx], self.from_keyterm[idx], self.first_prob[idx], self.bias[idx],
        )


def hopeless(asr_odds: float, h: float) -> bool:
    """Can a candidate with these (boosted, calibrated) ASR log-odds against the choice never win, even
    with the LLM certain of it? Exact for two spans: it needs p_asr > (1 - w) / 2, w the LLM's weight."""
    w = fusion_weight(h)
    return 1.0 / (1.0 + np.exp(-asr_odds)) <= (1.0 - w) / 2


@dataclass
class _Run:
    """State of one decode() call: its inputs and LLM call count."""

    encoder_output: ctranslate2.StorageView
    prompt: list[int]
    context: "FusionContext"
    mode: Mode
    calls: int = 0
    keyterm_steps: int = 0  # steps that compared keyterm candidates (bounded per decode)
    floor: int = 0  # tokens forced as final text at the window's start: never reopened
    _audio: np.ndarray | None = None

    def encoder(self, silence: np.ndarray | None) -> np.ndarray:
        """The encoder output cut to its audio frames (+ a margin), for the candidates' continuation decodes."""
        if self._audio is None:
            full = np.array(self.encoder_output)
            self._audio = full[:, : audio_frames(full, silence) + 25]
        return self._audio


# The meeting prefix in LLM tokens, at most. With the rolling transcript (FusionContext.max_tokens) and the spans
# it keeps the context within Gemma 3's 512-token sliding window, past which its KV cache cannot roll back (a
# rollback then re-feeds the whole context: correct, but a cost at every gated step).
MAX_PREFIX_TOKENS = 256
PREFIX_END = "\nTranscript:\n"


def meeting_prefix(meeting: MeetingContext) -> str:
    """The session prefix the LLM reads before the transcript (without PREFIX_END): the keyterms first (what
    the candidates spell), then the notes, cut to MAX_PREFIX_TOKENS when tokenized."""
    if not meeting:
        return ""
    lines = ["Names and terms: " + ", ".join(meeting.keyterms) + "."] if meeting.keyterms else []
    if meeting.notes.strip():
        lines.append(f"Meeting notes: {meeting.notes.strip()}")
    return "\n".join(lines)


@dataclass
class FusionContext:
    """Per-session LLM context: the meeting prefix, the committed transcript, and the KV cache that holds
    them. The prefix is tokenized once and leads every context, so trimming the transcript keeps it cached."""

    scorer: LLMScorer | None
    max_tokens: int = 200
    committed: str = ""
    meeting: MeetingContext = field(default_factory=MeetingContext)
    state: LLMState = field(default_factory=LLMState)
    _prefix_ids: list[int] | None = None
    _next_meeting: MeetingContext | None = None  # set mid-stream, taken by the next decode
    trie: KeytermTrie | None = None  # the keyterms' Whisper spellings, built at the first decode
    # Streaming re-decodes a growing window every step: the same gated step (same text before
    # it, same ASR choice) comes back many times. Its decision is remembered: no new LLM call,
    # and consecutive hypotheses agree (LocalAgreement commits only what two of them share).
    memo: OrderedDict = field(default_factory=OrderedDict)
    memo_size: int = 512

    def remembered(self, key: tuple) -> int | None:
        if key in self.memo:
            self.memo.move_to_end(key)
        return self.memo.get(key)

    def remember(self, key: tuple, winner: int) -> None:
        self.memo[key] = winner
        if len(self.memo) > self.memo_size:
            self.memo.popitem(last=False)

    def commit(self, text: str) -> None:
        """Append final text. The cache extends lazily at the next LLM call (only new tokens are
        fed); past max_tokens the oldest words are dropped down to half, which rebuilds the
        cache once every ~max_tokens/2 tokens instead of shifting it at every commit."""
        self.committed = f"{self.committed} {text.strip()}".strip()
        if self.scorer is not None and len(self.scorer.tokenize(self.committed)) > self.max_tokens:
            words = self.committed.split()
            keep = max(1, int(len(words) * self.max_tokens / 2 / len(self.scorer.tokenize(self.committed))))
            self.committed = " ".join(words[-keep:])

    def set_meeting(self, meeting: MeetingContext) -> None:
        """New keyterms or notes (a mid-stream `context` message, set from the event loop): taken at the
        next decode's start, never in the middle of one (decodes run in a worker thread)."""
        self._next_meeting = meeting

    def take_meeting(self) -> None:
        """At a decode's start: a new meeting replaces the prefix, the trie and the decisions taken under
        the old one (all recomputed lazily)."""
        meeting, self._next_meeting = self._next_meeting, None
        if meeting is not None and meeting != self.meeting:
            self.meeting, self._prefix_ids, self.trie = meeting, None, None
            self.memo.clear()

    def prefix_text(self, window_text: str) -> str:
        """The transcript the LLM continues: committed text followed by the window's accepted text."""
        if not self.committed:
            return window_text.lstrip()
        return self.committed + (window_text if window_text.startswith(" ") else " " + window_text)

    def llm_ids(self, transcript: str) -> list[int]:
        """Token ids of the whole LLM context: start, meeting prefix (tokenized once), transcript."""
        if self._prefix_ids is None:
            text = meeting_prefix(self.meeting)
            self._prefix_ids = self.scorer.tokenize(text)[:MAX_PREFIX_TOKENS] + self.scorer.tokenize(PREFIX_END) if text else []
        return self.scorer.start_ids + self._prefix_ids + self.scorer.tokenize(transcript)


class FusionDecoder:
    """Built once per daemon; decode() serves every session and every mode."""

    def __init__(
        self,
        whisper: ctranslate2.models.Whisper,
        tokenizer: Tokenizer,
        options: FusionOptions,
        scorer: LLMScorer | None,
        calibration: Calibration,
        silence: np.ndarray | None = None,
    ) -> None:
        self.whisper = whisper
        self.tokenizer = tokenizer
        self.options = options
        self.scorer = scorer
        self.calibration = calibration
        self.gate = options.gate if options.gate is not None else calibration.gate
        self.pieces = WordPieces(tokenizer)
        self.eot = tokenizer.eot
        self.silence = silence  # encoder output of 30 s of zeros, (1500, d_model)
        self.observer: Callable[[Comparison], None] | None = None  # set by calibration
        self.keyterm_candidates = KEYTERM_CANDIDATES  # cost bounds of keyterm candidates (fusion/keyterms.py)
        self.keyterm_steps = KEYTERM_STEPS
        self.keyterm_min_prob: float | None = None  # None: the calibration's (calibration records at its lowest)
        self.keyterm_max_boost: float | None = None  # calibration: keyterm candidates hopeless even at this boost are dropped

    def prune_boost(self) -> float:
        """The keyterm boost a candidate must be hopeless at to be dropped before the LLM."""
        return self.keyterm_max_boost if self.keyterm_max_boost is not None else self.calibration.keyterm_boost

    def new_context(self, meeting: MeetingContext = MeetingContext()) -> FusionContext:
        return FusionContext(scorer=self.scorer, max_tokens=self.options.context_tokens, meeting=meeting)

    def _generate(self, encoder: ctranslate2.StorageView, prompt: list[int], max_length: int, suppress_blank: bool):
        return self.whisper.generate(
            encoder,
            [prompt],
            beam_size=1,
            max_length=max_length,
            return_no_speech_prob=True,
            return_logits_vocab=True,
            suppress_blank=suppress_blank,  # not after a forced prefix: it decided the first step
        )[0]

    def decode(
        self,
        encoder_output: ctranslate2.StorageView,
        prompt: list[int],
        context: FusionContext,
        mode: Mode,
        max_length: int,
        prefix: Sequence[int] = (),
    ) -> DecodeResult:
        """Decode a window; `prefix` (text already final, at the window's start) is forced, not fused."""
        mode = Mode(mode)
        if mode.fused and self.scorer is None:
            raise ValueError(f"mode {mode!r} needs an LLM (fusion.llm)")
        context.take_meeting()
        if mode == Mode.UADF_LLM:
            return decode_llm_led(self, encoder_output, prompt, context, max_length)
        prefix = list(prefix)
        result = self._generate(encoder_output, prompt + prefix, max_length + len(prefix), suppress_blank=not prefix)
        tokens = list(result.sequences_ids[0])
        logits = [text_logits(step, self.eot) for step in result.logits[0]]
        fused = [False] * len(tokens)
        run = _Run(encoder_output, prompt, context, mode)
        i = len(prefix)
        run.floor = len(prefix)
        while mode.fused and i < len(logits):  # an override re-decodes the rest of the path
            chosen = tokens[i] if i < len(tokens) else self.eot
            winner = self._fuse_step(run, tokens, logits, i, chosen)
            if winner != (chosen,):  # forced as a whole (a keyterm's tokens), the ASR goes on after it
                n = len(winner)
                forced = self._generate(encoder_output, prompt + tokens[:i] + list(winner), max_length + i + n, suppress_blank=False)
                tokens = list(forced.sequences_ids[0])
                logits = logits[: i + 1] + [text_logits(s, self.eot) for s in forced.logits[0][i + 1 :]]
                fused = fused[:i] + [True] * n + [False] * (len(tokens) - i - n)
            i += len(winner)
        return self.path_result(tokens, logits, fused, float(result.no_speech_prob), run.calls)

    def _fuse_step(self, run: "_Run", tokens: list[int], logits: list[np.ndarray], i: int, chosen: int) -> tuple[int, ...]:
        """The tokens to emit from step i: the ASR's token, unless the gated fusion picks another
        candidate (one of the ASR's tokens, or the rest of a keyterm's spelling)."""
        if not self.pieces.is_lexical(chosen):
            return (chosen,)
        cal = log_softmax(logits[i], self.calibration.asr_tau)
        h = float(entropy(cal))
        gated = run.mode == Mode.SHALLOW or gate_open(h, self.gate)
        keyterms = self._keyterm_candidates(run, tokens, i, chosen, cal)
        if not gated and not keyterms:
            return (chosen,)
        if not self._has_right_context(tokens, i):
            return (chosen,)
        gated = gated and self._has_context(run.context, tokens, i)  # keyterms: the meeting prefix is context
        if not gated and not keyterms:
            return (chosen,)
        key = (run.context.committed, tuple(tokens[:i]), chosen)
        winner = run.context.remembered(key)
        if winner is not None:
            return winner
        from_asr = [(c,) for c in self._candidates(cal, tokens, i, chosen)] if gated else [(chosen,)]
        cands = from_asr + [k.tokens for k in keyterms if k.tokens not in from_asr]
        if len(cands) < 2:
            return (chosen,)
        if keyterms:
            run.keyterm_steps += 1
        cmp = self._compare_spans(run, tokens, logits, cal, i, h, cands, set(from_asr), {k.tokens for k in keyterms})
        if len(cmp.cands) < 2:
            run.context.remember(key, (chosen,))
            return (chosen,)
        run.calls += 1
        if self.observer is not None:  # calibration: record the decision, keep the ASR's token (once, as decided once)
            self.observer(cmp)
            run.context.remember(key, (chosen,))
            return (chosen,)
        if run.mode == Mode.SHALLOW:
            best = int(np.argmax(cmp.asr_lp + self.options.shallow_weight * cmp.llm_lp))
        else:
            best = cmp.uadf_choice(self.calibration.span_asr_tau, self.calibration.span_llm_tau, self.calibration.keyterm_boost)
        winner = cmp.cands[best]
        log.debug("H %.2f %s asr %s llm %s bias %s -> %r", h, cmp.pairs, np.round(cmp.asr_lp, 2), np.round(cmp.llm_lp, 2),
                  cmp.bias, self.tokenizer.decode(list(winner)))
        run.context.remember(key, winner)
        return winner

    def _keyterm_candidates(self, run: "_Run", tokens: list[int], i: int, chosen: int, cal: np.ndarray) -> list[KeytermCandidate]:
        """The session's keyterms that continue the path at step i (fusion/keyterms.py), within the
        per-step and per-decode bounds (calibration records every step: its observer lifts the latter)."""
        context = run.context
        if not context.meeting.keyterms:
            return []
        if self.observer is None and run.keyterm_steps >= self.keyterm_steps:
            return []
        if context.trie is None:
            context.trie = KeytermTrie(context.meeting.keyterms, self.tokenizer)
        min_prob = self.keyterm_min_prob if self.keyterm_min_prob is not None else self.calibration.keyterm_min_prob
        return propose(context.trie, self.pieces, tokens, i, chosen, cal, min_prob, self.keyterm_candidates, run.floor)

    def _candidates(self, cal: np.ndarray, tokens: list[int], i: int, chosen: int) -> list[int]:
        """The ASR's lexical top-k at this step, or just `chosen` when there is nothing to fuse.

        Only words compete. Where the ASR considers ending, the end is an acoustic call: an LLM
        would rather continue the sentence, and the decoder then runs on into a loop. A candidate
        the ASR emits within the next few tokens is a skip (choosing it deletes the words in
        between: "mentioning [in passing] that"), not an alternative."""
        cands = select_candidates(cal, self.eot, self.options.top_k, self.options.min_candidate_prob)
        if self.eot in cands:
            return [chosen]
        ahead = set(tokens[i + 1 : i + 4])
        cands = [c for c in cands if self.pieces.is_lexical(c) and c not in ahead]
        return cands if chosen in cands else [chosen] + cands[: self.options.top_k - 1]

    def _has_right_context(self, tokens: list[int], i: int) -> bool:
        """Two words follow step i's word in the ASR path. A streaming window's last words are
        often cut by the window end: their acoustics are incomplete and the LLM would guess."""
        return sum(self.pieces.starts_word(t) for t in tokens[i + 1 :]) >= 2

    def _has_context(self, context: FusionContext, tokens: list[int], i: int) -> bool:
        """Enough text before step i for the LLM to say more than its unconditional prior."""
        words = len(context.committed.split()) + len(self.tokenizer.decode(tokens[:i]).split())
        return words >= self.options.min_context_words

    def _compare_spans(
        self, run: "_Run", tokens: list[int], logits: list[np.ndarray], cal: np.ndarray, i: int, h: float,
        cands: list[tuple[int, ...]], from_asr: set[tuple[int, ...]], from_keyterm: set[tuple[int, ...]] = frozenset(),
    ) -> Comparison:
        """The candidates comparable with the ASR's choice (cands[0]) and, for each, the calibrated ASR
        and LLM log-probs of its span up to where it rejoins the ASR path, as log-odds against the
        choice's span over the same words (`cal`: step i's calibrated log-probs, `h` its entropy). A
        candidate is a token sequence forced from step i (a keyterm's: several tokens, scored
        teacher-forced), then continued by the ASR. A keyterm candidate that cannot win even with the LLM
        certain of it is dropped before the LLM (calibration: at the largest boost it tries). The LLM scores every span
        in one batch on top of the cached shared context (meeting prefix, committed transcript, the window
        before the word at step i)."""
        tau, limit = self.calibration.asr_tau, self.options.span_tokens
        chosen = cands[0][0]
        j = self.pieces.word_start(tokens, i)
        path = tokens[j : i + 1 + limit]
        path_ended = len(tokens) < i + 1 + limit
        path_words, path_bounds = self.pieces.words(path)
        path_lp = [float(cal[chosen])] + [float(log_softmax(logits[k], tau)[t]) for k, t in enumerate(tokens[i + 1 : i + 1 + limit], i + 1)]
        if path_ended and len(logits) > len(tokens):
            path_lp.append(float(log_softmax(logits[len(tokens)], tau)[self.eot]))
        others = cands[1:]
        conts = continue_with_asr(self.whisper, run.encoder(self.silence), run.prompt, tokens[:i], others, limit, tau, self.eot)
        trie = run.context.trie
        # the candidate spans by their words -> [candidate, path span text, span text, ASR log-odds, bias, from ASR, from keyterm]
        pairs: dict[tuple[str, ...], list] = {}
        for c, (cont, cont_lp, ended) in zip(others, conts):
            seq = tokens[j:i] + list(c) + cont
            words, bounds = self.pieces.words(seq)
            at = rejoin(path_words, path_ended, words, ended)
            if at is None or same_words(path_words[: at[0] + 1], words[: at[1] + 1]):
                continue
            x, y = at
            path_end = path_bounds[x + 1] if x + 1 < len(path_bounds) else len(path) + 1  # + 1: the end
            cand_end = bounds[y + 1] if y + 1 < len(bounds) else len(seq) + 1
            path_text, cand_text = self.tokenizer.decode(path[:path_end]), self.tokenizer.decode(seq[:cand_end])
            odds = float(cal[c[0]]) + sum(cont_lp[: cand_end - (i - j) - 1]) - sum(path_lp[: path_end - (i - j)])
            words_key = tuple(norm_word(w) for w in cand_text.split())
            if words_key in pairs:  # " Bas"+"le" by the ASR, " Basle" and " basle" by the keyterms: one choice, its best spelling
                kept = pairs[words_key]
                if odds > kept[3]:
                    kept[:4] = [c, path_text, cand_text, odds]
                kept[5] |= c in from_asr
                kept[6] |= c in from_keyterm
                continue
            bias = trie.count(cand_text) - trie.count(path_text) if trie else 0
            if c not in from_asr and hopeless(odds / self.calibration.span_asr_tau + self.prune_boost() * bias, h):
                continue
            pairs[words_key] = [c, path_text, cand_text, odds, bias, c in from_asr, c in from_keyterm]
        if not pairs:
            return Comparison(h, [cands[0]], [], np.zeros(1), np.zeros(1))
        rows = list(pairs.values())
        context_text = run.context.prefix_text(self.tokenizer.decode(tokens[:j]))
        texts = sorted({t for p in rows for t in (p[1], p[2])})
        self.scorer.sync(run.context.state, run.context.llm_ids(context_text))
        llm = dict(zip(texts, self.scorer.score(run.context.state, [t if context_text else t.lstrip() for t in texts])))
        return Comparison(
            h=h,
            cands=[cands[0]] + [p[0] for p in rows],
            pairs=[(p[1], p[2]) for p in rows],
            asr_lp=np.array([0.0] + [p[3] for p in rows]),
            llm_lp=np.array([0.0] + [llm[p[2]] - llm[p[1]] for p in rows]),
            context=context_text,
            from_asr=np.array([True] + [p[5] for p in rows]),
            from_keyterm=np.array([False] + [p[6] for p in rows]),
            first_prob=np.exp([float(cal[chosen])] + [float(cal[p[0][0]]) for p in rows]),
            bias=np.array([0.0] + [float(p[4]) for p in rows]),
        )

    def path_result(self, tokens: list[int], logits: list[np.ndarray], fused: list[bool], no_speech: float, calls: int) -> DecodeResult:
        """The final path with the ASR's confidence in it: avg_logprob as faster-whisper's (eot included)."""
        # avg_logprob feeds the pipeline's hallucination gate: it measures acoustic confidence, so
        # a fused token counts with the ASR's confidence in its own best token at that step
        # (otherwise every LLM correction would push the window towards rejection).
        steps = [log_softmax(logits[k]) for k in range(min(len(logits), len(tokens) + 1))]
        gate_lp = [float(steps[k].max() if f else steps[k][t]) for k, (t, f) in enumerate(zip(tokens, fused))]
        eot_lp = [float(steps[len(tokens)][self.eot])] if len(steps) > len(tokens) else []
        return DecodeResult(
            tokens=tokens,
            fused=fused,
            avg_logprob=sum(gate_lp + eot_lp) / (len(tokens) + 1),
            no_speech_prob=no_speech,
            llm_calls=calls,
        )


class ModeDecoder:
    """The TokenDecoder of one fusion mode over the shared FusionDecoder (windows decoded one by one)."""

    def __init__(self, fusion: FusionDecoder, mode: Mode):
        self.fusion = fusion
        self.mode = mode

    def new_context(self, meeting: MeetingContext = MeetingContext()) -> FusionContext:
        return self.fusion.new_context(meeting)

    def decode(self, encoder_output: np.ndarray, tasks: Sequence[DecodeTask]) -> list[DecodeResult]:
        return [
            self.fusion.decode(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(encoder_output[i : i + 1])),
                task.prompt,
                task.context,
                self.mode,
                task.max_length,
                task.prefix,
            )
            for i, task in enumerate(tasks)
        ]

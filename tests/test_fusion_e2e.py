"""End to end through the real models: tiny.en + the default LLM (Gemma 3 270M) in the streaming pipeline, uadf vs asr.

Also: in mode "asr" FusionDecoder equals plain greedy CTranslate2 decoding.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from streamer.config import load_config
from streamer.engine import Engine
from streamer.evaluate import evaluate

DATA = Path(os.environ.get("UADF_DATA", "/work/shared/data"))
NOISY = DATA / "speech-dev-noisy" / "manifest.jsonl"
LIMIT = 6  # first clips of the noisy set (pink noise 5 and 0 dB): where fusion has something to do

pytestmark = pytest.mark.skipif(not NOISY.exists(), reason="speech data not available")


@pytest.fixture(scope="module")
def engine():
    return Engine(load_config(overrides=["fusion.llm=gemma3-270m", "fusion.mode=uadf", "fusion.calibration="]))


def test_asr_mode_equals_plain_greedy(engine):
    backend, fusion = engine.backend, engine.fusion
    entry = json.loads(NOISY.read_text().splitlines()[0])
    from streamer.audio import load_audio

    audio = load_audio(str(NOISY.parent / entry["audio"]))
    enc, _ = backend.encode([audio])
    import ctranslate2

    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(enc))
    prompt = backend.prompt_tokens("")
    plain = backend.model.generate(view, [prompt], beam_size=1, max_length=200)[0].sequences_ids[0]
    res = fusion.decode(view, prompt, fusion.new_context(), "asr", 200)
    assert res.tokens == plain and res.llm_calls == 0 and not any(res.fused)
    assert len(res.token_probs) == len(res.tokens) and res.avg_logprob < 0


def test_uadf_no_worse_than_asr(engine):
    asr = evaluate(engine, [str(NOISY)], "asr", limit=LIMIT)["all"]
    uadf = evaluate(engine, [str(NOISY)], "uadf", limit=LIMIT)["all"]
    assert uadf["wer"] <= asr["wer"] + 0.01
    assert uadf["llm_calls_per_100_tokens"] > 0  # the LLM was actually consulted

"""End to end through the real models: tiny.en + the default LLM (Gemma 3 270M) in the streaming pipeline, uadf vs asr.

Also: in mode "asr" FusionDecoder equals plain greedy CTranslate2 decoding.
"""

import json
import os
from pathlib import Path

import ctranslate2
import numpy as np
import pytest

from streamer.audio import load_audio
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


def first_clip_encoding(backend) -> ctranslate2.StorageView:
    """Encoder output of the noisy set's first clip."""
    entry = json.loads(NOISY.read_text().splitlines()[0])
    enc, _ = backend.encode([load_audio(str(NOISY.parent / entry["audio"]))])
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(enc))


def test_asr_mode_equals_plain_greedy(engine):
    backend, fusion = engine.backend, engine.fusion
    view = first_clip_encoding(backend)
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


def test_calibration_records_and_labels_real_comparisons(engine):
    """The calibration observer sees the decoder's span comparisons on real audio (keeping the ASR's
    tokens) and labels some of them against the reference."""
    from whisper_normalizer.english import EnglishTextNormalizer

    from fusion.calibrate_cmd import load_manifest, record_decisions
    from fusion.offline import OfflineTranscriber

    decoder = engine.fusion
    gate = decoder.gate
    rows = load_manifest(str(NOISY))[:LIMIT]
    try:
        decisions = record_decisions(OfflineTranscriber(engine.backend, decoder), {"noisy": rows}, 0.25, EnglishTextNormalizer())
    finally:
        decoder.gate = gate
    assert decoder.observer is None
    assert len(decisions) >= 5
    for d in decisions:
        c = d.comparison
        assert c.h >= 0.25 and len(c.cands) == len(c.asr_lp) == len(c.llm_lp) == len(c.pairs) + 1
        assert all(path != span for path, span in c.pairs)
    assert any(d.correct is not None for d in decisions)


def test_forced_prefix_is_kept_and_not_fused(engine):
    """Words already final at a window's start are forced through the prompt, not decided again."""
    backend, fusion = engine.backend, engine.fusion
    view = first_clip_encoding(backend)
    prefix = backend.tokenizer.encode(" Boats full of men")
    res = fusion.decode(view, backend.prompt_tokens(""), fusion.new_context(), "uadf", 200, prefix)
    assert res.tokens[: len(prefix)] == prefix and len(res.tokens) > len(prefix) + 5
    assert not any(res.fused[: len(prefix)])

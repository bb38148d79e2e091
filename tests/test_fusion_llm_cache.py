"""KV-cache reuse of the LLM scorer equals full recomputation, and only new tokens are fed.

Uses the real SmolLM2-135M (PyPI GGUF, converted once to ~/.cache/uadf-stream/llm) in fp32:
int8 dynamic quantization rescales activations per forward call, so its scores depend on how
the input was split and cannot match a recomputation to 1e-4.
"""

import pytest
import torch

from fusion.decoder import FusionContext
from fusion.llm_loader import load_llm
from fusion.llm_scorer import LLMScorer, LLMState

CONTEXT = "And so, my fellow Americans, ask not what your country can do for you, ask what you"
CANDIDATES = [" can", " cannot do", " candidly", " Can't"]


@pytest.fixture(scope="module")
def scorer():
    torch.set_num_threads(1)
    return LLMScorer(load_llm("smollm2", "cpu", quantize=False), tau=1.3)


@torch.inference_mode()
def recompute(scorer, context, texts):
    """Reference: one uncached forward over context + text, per text."""
    out = []
    for text in texts:
        ids, cand = scorer.context_ids(context), scorer.tokenize(text)
        logits = scorer.llm.model(input_ids=torch.tensor([ids + cand])).logits[0].float()
        logp = torch.log_softmax(logits / scorer.tau, dim=-1)
        out.append(sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(cand)))
    return out


def test_cached_scores_equal_recomputation(scorer):
    state = LLMState()
    scorer.sync(state, scorer.context_ids(CONTEXT))
    assert state.fed_tokens == len(scorer.context_ids(CONTEXT))
    assert scorer.score(state, CANDIDATES) == pytest.approx(recompute(scorer, CONTEXT, CANDIDATES), abs=1e-4)
    # Scoring leaves the context cache untouched: a second scoring feeds nothing and agrees.
    fed = state.fed_tokens
    assert scorer.score(state, CANDIDATES[:2]) == pytest.approx(recompute(scorer, CONTEXT, CANDIDATES[:2]), abs=1e-4)
    assert state.fed_tokens == fed


def test_extension_feeds_only_new_tokens_and_rollback_crops(scorer):
    state = LLMState()
    scorer.sync(state, scorer.context_ids(CONTEXT))
    base = state.fed_tokens
    longer = CONTEXT + " can do for your country. And"
    scorer.sync(state, scorer.context_ids(longer))
    added = len(scorer.context_ids(longer)) - len(scorer.context_ids(CONTEXT))
    assert state.fed_tokens == base + added  # pure extension: only the new tokens
    texts = [" so", " the", " then we"]
    assert scorer.score(state, texts) == pytest.approx(recompute(scorer, longer, texts), abs=1e-4)

    # The unstable tail changes: crop back to the common prefix, re-feed one token + the new tail.
    rolled = CONTEXT + " can do for the country. So"
    ids_longer, ids_rolled = scorer.context_ids(longer), scorer.context_ids(rolled)
    common = next(i for i, (a, b) in enumerate(zip(ids_longer, ids_rolled)) if a != b)
    before = state.fed_tokens
    scorer.sync(state, ids_rolled)
    assert state.fed_tokens - before == len(ids_rolled) - common + 1
    assert state.cache.get_seq_length() == len(ids_rolled)
    assert scorer.score(state, texts) == pytest.approx(recompute(scorer, rolled, texts), abs=1e-4)


def test_session_context_is_bounded(scorer):
    ctx = FusionContext(scorer=scorer, max_tokens=60)
    for _ in range(12):
        ctx.commit("The quick brown fox jumps over the lazy dog.")
    assert 0 < len(scorer.tokenize(ctx.committed)) <= 60
    assert ctx.committed.endswith("lazy dog.")
    assert ctx.prefix_text(" and then") == ctx.committed + " and then"


def test_meeting_prefix_is_fed_once_and_kept_when_the_transcript_is_trimmed(scorer):
    """Keyterms and notes are a session prefix in the KV cache: fed once, kept while the rolling transcript
    is trimmed; a session without them feeds exactly what it fed before."""
    from core.types import MeetingContext

    meeting = MeetingContext(("Whittemore", "UADF", "Gemma"), "Weekly sync of the speech team: the Whittemore release.")
    ctx = FusionContext(scorer=scorer, max_tokens=40, meeting=meeting)
    prefix = len(ctx.llm_ids("")) - len(scorer.start_ids)
    assert prefix > 20
    fed = []
    for k in range(8):
        ctx.commit(f"Item {k}: the quick brown fox jumps over the lazy dog.")
        before = ctx.state.fed_tokens
        scorer.sync(ctx.state, ctx.llm_ids(ctx.prefix_text(" and")))
        fed.append(ctx.state.fed_tokens - before)
        assert ctx.state.ids[: len(scorer.start_ids) + prefix] == ctx.llm_ids("")[: len(scorer.start_ids) + prefix]
    assert fed[0] > prefix and all(f < prefix for f in fed[1:])  # trims re-feed the transcript, never the prefix
    plain = FusionContext(scorer=scorer)
    plain.commit(CONTEXT)
    assert plain.llm_ids(plain.prefix_text(" can")) == scorer.context_ids(plain.prefix_text(" can"))


def test_a_long_meeting_is_bounded_and_never_breaks_the_cache(scorer):
    """500 keyterms and 2,000 words of notes: the prefix is cut to MAX_PREFIX_TOKENS, and rolling a context
    longer than Gemma 3's sliding window back (which its cache cannot crop) re-feeds it instead of failing."""
    from core.types import MeetingContext
    from fusion.decoder import MAX_PREFIX_TOKENS, PREFIX_END

    ctx = FusionContext(scorer=scorer, meeting=MeetingContext(tuple(f"term{k}" for k in range(500)), "word " * 2000))
    assert len(ctx.llm_ids("")) == len(scorer.start_ids) + MAX_PREFIX_TOKENS + len(scorer.tokenize(PREFIX_END))
    long = "the quick brown fox jumps over the lazy dog " * 60
    scorer.sync(ctx.state, ctx.llm_ids(long + "and"))
    scorer.sync(ctx.state, ctx.llm_ids(long + "but"))
    assert ctx.state.ids == ctx.llm_ids(long + "but") and ctx.state.last_logits is not None

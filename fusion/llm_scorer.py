"""Score text continuations with a causal LM on top of a reused KV cache.

The context (committed transcript + accepted text) only grows at its end or is rolled back a
little when the streaming tail changes, so the cache is synced by longest common token prefix:
cropped to it, then only the new tokens are fed. Candidates are plain text, re-tokenized with the
LLM's own tokenizer, so any causal LM works whatever its vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from fusion.llm_loader import LoadedLLM


@dataclass
class LLMState:
    """KV cache of one context: the token ids it holds and the logits after the last one."""

    ids: list[int] = field(default_factory=list)
    cache: DynamicCache | None = None
    last_logits: torch.Tensor | None = None
    fed_tokens: int = 0  # tokens run through the model so far (proves reuse in tests)


class LLMScorer:
    """Log-probabilities of candidate continuations given a cached context."""

    def __init__(self, llm: LoadedLLM, tau: float = 1.0) -> None:
        self.llm = llm
        self.tau = tau
        tok = llm.tokenizer
        added = tok("", add_special_tokens=True).input_ids
        # Every context starts with a start token so that the first word has a distribution too.
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.start_ids: list[int] = list(added) if added else [start]

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenizer(text, add_special_tokens=False).input_ids)

    def context_ids(self, text: str) -> list[int]:
        return self.start_ids + self.tokenize(text)

    @torch.inference_mode()
    def sync(self, state: LLMState, ids: list[int]) -> None:
        """Make the cache hold exactly `ids`: crop to the common prefix, feed only the rest."""
        common = 0
        for a, b in zip(state.ids, ids):
            if a != b:
                break
            common += 1
        if common == len(state.ids) == len(ids):
            return
        if common == 0:
            state.cache, state.ids = DynamicCache(config=self.llm.model.config), []
        elif common < len(state.ids):
            # Roll back to common - 1 tokens and re-feed the last common one: only the logits
            # after the last token are kept, so its successor distribution must be recomputed.
            try:
                state.cache.crop(-(len(state.ids) - common + 1))
                state.ids = state.ids[: common - 1]
            except RuntimeError:  # a sliding-window layer past its window cannot roll back: feed it all again
                state.cache, state.ids = DynamicCache(config=self.llm.model.config), []
        new = ids[len(state.ids):]
        out = self.llm.model(
            input_ids=torch.tensor([new], device=self.llm.device),
            cache=state.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        state.last_logits = out.logits[0, -1].float()
        state.ids = list(ids)
        state.fed_tokens += len(new)

    @torch.inference_mode()
    def score(self, state: LLMState, texts: list[str]) -> np.ndarray:
        """Sum of temperature-scaled token log-probs of each text after the cached context.

        One batched forward on a batch-expanded view of the cache; the context cache itself is
        not modified (the batch cache concatenates into new tensors).
        """
        seqs = [self.tokenize(t) for t in texts]
        first = torch.log_softmax(state.last_logits / self.tau, dim=-1)
        scores = np.array([float(first[s[0]]) if s else 0.0 for s in seqs])
        longest = max(len(s) for s in seqs)
        if longest < 2:
            return scores
        batch = len(seqs)
        inputs = torch.zeros((batch, longest - 1), dtype=torch.long, device=self.llm.device)
        for row, s in enumerate(seqs):
            if len(s) > 1:
                inputs[row, : len(s) - 1] = torch.tensor(s[:-1])
        cache = DynamicCache(
            ddp_cache_data=[
                (layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1))
                for layer in state.cache.layers
            ],
            config=self.llm.model.config,
        )
        logits = self.llm.model(input_ids=inputs, cache=cache, use_cache=True).logits
        # A row at a time: the whole batch's log-softmax over a 262k vocabulary is a B x L x 1 MB tensor,
        # twice over (scaled, normalised), which set the daemon's peak memory with several sessions fusing.
        for row, s in enumerate(seqs):
            if len(s) < 2:
                continue
            logp = torch.log_softmax(logits[row, : len(s) - 1].float() / self.tau, dim=-1)
            for j in range(1, len(s)):
                scores[row] += float(logp[j - 1, s[j]])
        return scores

"""What decoding one window returns, with or without fusion (kept free of heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecodeResult:
    """One window's text tokens (no specials) with per-token ASR probabilities and fusion marks."""

    tokens: list[int]
    token_probs: list[float]
    fused: list[bool]
    avg_logprob: float
    no_speech_prob: float
    llm_calls: int = 0
    steps: int = 0
    llm_seconds: float = 0.0

"""Calibrated distributions, their entropy, and the UADF fusion weight."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """Temperature-scaled log-softmax over the last axis (float64 for stable entropies)."""
    z = np.asarray(logits, dtype=np.float64) / tau
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(log_scores: np.ndarray) -> np.ndarray:
    """Normalized probabilities from unnormalized log-scores."""
    return np.exp(log_softmax(log_scores))


def entropy(log_probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats; -inf log-probs (suppressed tokens) contribute 0."""
    p = np.exp(log_probs)
    return -np.where(p > 0, p * np.where(p > 0, log_probs, 0.0), 0.0).sum(axis=-1)


def fusion_weight(h: float) -> float:
    """UADF weight of the other model, sigmoid(H) - 0.5: 0 when the leader is certain, < 0.5 always."""
    return float(1.0 / (1.0 + np.exp(-h)) - 0.5)


def gate_open(h: float, gate: float) -> bool:
    """Consult the LLM at this step? A zero gate opens every step."""
    return h >= gate

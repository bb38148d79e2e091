"""Temperature scaling (Guo et al. 2017) and the calibration file the daemon loads.

The temperature tau is fitted so that the mean max-probability of softmax(logits / tau) equals
the measured token accuracy on held-out data: after that, the entropy of each model's
distribution is comparable across models and usable as a fixed uncertainty gate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fusion.uncertainty import log_softmax

TAU_RANGE = (0.05, 20.0)


def mean_max_prob(logits: np.ndarray, tau: float) -> float:
    """Mean over steps of the largest probability after temperature scaling."""
    return float(np.exp(log_softmax(logits, tau).max(axis=-1)).mean())


def fit_temperature(logits: np.ndarray, correct: np.ndarray, iterations: int = 60) -> float:
    """Binary search (in log tau) for mean max-prob == accuracy; max-prob falls as tau grows.

    `logits` is (steps, vocab); a top-M slice of each row is enough in practice (the tail holds
    negligible mass near tau = 1). Returns the bound if the accuracy is out of reach.
    """
    accuracy = float(np.mean(correct))
    lo, hi = np.log(TAU_RANGE[0]), np.log(TAU_RANGE[1])
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mean_max_prob(logits, float(np.exp(mid))) > accuracy:
            lo = mid  # over-confident: raise the temperature
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


@dataclass
class Calibration:
    """Fitted temperatures and gate, as written by `uadf-stream calibrate`."""

    asr_tau: float = 1.0
    llm_tau: float = 1.0
    span_asr_tau: float = 1.0  # on span log-odds between candidates (tools/decisions.py)
    span_llm_tau: float = 1.0
    gate: float = 0.5
    keyterm_boost: float = 0.0  # nats added to a keyterm spelling's ASR span score (tools/decisions.py)
    keyterm_min_prob: float = 0.05  # a keyterm is proposed where the ASR gives its first token this much
    llm: str = ""
    details: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        return cls(**json.loads(Path(path).read_text()))

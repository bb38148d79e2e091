"""Calibration and uncertainty: pure logic on synthetic data."""

import numpy as np
import pytest

from fusion.calibration import Calibration, fit_temperature, mean_max_prob
from fusion.uncertainty import entropy, fusion_weight, gate_open, log_softmax


@pytest.mark.parametrize("true_tau", [0.6, 1.0, 2.5])
def test_fit_recovers_known_temperature(true_tau):
    """Labels drawn from softmax(z / tau*) make argmax accuracy = E[max p_tau*]: the fit finds tau*."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(40000, 12))
    probs = np.exp(log_softmax(logits, true_tau))
    labels = (probs.cumsum(axis=1) > rng.random((len(probs), 1))).argmax(axis=1)
    correct = logits.argmax(axis=1) == labels
    tau = fit_temperature(logits, correct)
    assert tau == pytest.approx(true_tau, rel=0.05)
    assert mean_max_prob(logits, tau) == pytest.approx(correct.mean(), abs=1e-3)


def test_entropy_and_weight():
    certain = log_softmax(np.array([50.0, 0.0, 0.0, -np.inf]))
    uniform = log_softmax(np.zeros(4))
    assert entropy(certain) == pytest.approx(0.0, abs=1e-9)
    assert entropy(uniform) == pytest.approx(np.log(4))
    assert fusion_weight(0.0) == 0.0
    assert 0.0 < fusion_weight(1.0) < fusion_weight(5.0) < 0.5
    assert gate_open(0.0, 0.0) and not gate_open(0.1, 0.5)


def test_calibration_file_roundtrip(tmp_path):
    cal = Calibration(asr_tau=1.2, llm_tau=1.4, gate=0.9, llm="smollm2", details={"n": 3})
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == cal

"""Builds the fusion decoder once per daemon: calibration, LLM (never from a hub), decoder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fusion.calibration import Calibration
from fusion.decoder import FusionDecoder
from fusion.llm_loader import load_llm
from fusion.llm_scorer import LLMScorer
from fusion.options import FusionOptions
from streamer.asr_backend import WhisperBackend

log = logging.getLogger(__name__)

# Shipped calibration of tiny.en + the default LLM (written by `uadf-stream calibrate`).
DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")


def create_decoder(backend: WhisperBackend, options: FusionOptions) -> FusionDecoder:
    """Load the calibration and, when `options.llm` is set, the LLM, around the backend's Whisper."""
    path = Path(options.calibration).expanduser() if options.calibration else DEFAULT_CALIBRATION
    calibration = Calibration.load(path) if path.exists() else Calibration()
    scorer = None
    if options.llm:
        if calibration.llm != options.llm:
            log.warning("calibration %s was fitted for LLM %r, not %r: run `uadf-stream calibrate`", path, calibration.llm, options.llm)
        if options.threads > 0:
            torch.set_num_threads(options.threads)
        llm = load_llm(options.llm, options.device, options.cache_dir, options.quantize)
        scorer = LLMScorer(llm, calibration.llm_tau)
    return FusionDecoder(backend.model, backend.tokenizer, options, scorer, calibration, backend.silence[0])

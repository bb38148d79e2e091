"""Uncertainty-aware dynamic fusion (UADF) of streaming Whisper with a small causal LLM."""

from __future__ import annotations

import logging
from pathlib import Path

import ctranslate2
import numpy as np
import torch
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer

from fusion.calibration import Calibration
from fusion.decoder import DecodeResult, FusionContext, FusionDecoder
from fusion.llm_loader import load_llm
from fusion.llm_scorer import LLMScorer
from fusion.options import FusionOptions

log = logging.getLogger(__name__)

# Shipped calibration of tiny.en + the default LLM (written by `uadf-stream calibrate`).
DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")

__all__ = ["DecodeResult", "FusionContext", "FusionDecoder", "FusionOptions", "create_decoder"]


def silence_encoding(whisper: ctranslate2.models.Whisper) -> np.ndarray:
    """Encoder output of 30 s of zeros, computed like the streaming backend's."""
    feats = FeatureExtractor(feature_size=whisper.n_mels)(np.zeros(30 * 16000 + 8000, np.float32), padding=0)
    feats = feats[:, :3000]
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None]))
    return np.array(whisper.encode(view, to_cpu=True))[0]


def create_decoder(whisper: ctranslate2.models.Whisper, tokenizer: Tokenizer, options: FusionOptions) -> FusionDecoder:
    """Load the calibration and, when `options.llm` is set, the LLM (never from a hub)."""
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
    return FusionDecoder(whisper, tokenizer, options, scorer, calibration, silence_encoding(whisper))

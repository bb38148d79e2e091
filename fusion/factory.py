"""The fusion plugin: builds the fusion decoders once per daemon around the ASR backend's Whisper.

Registered under the entry-point group `uadf_stream.decoders` (pyproject.toml); the daemon loads it when
`fusion.llm` names an LLM. Calibration from `uadf-stream calibrate`; the LLM never from a hub.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from core.interfaces import AsrBackend, TokenDecoder
from core.types import FusionOptions, Mode
from fusion.calibration import Calibration
from fusion.decoder import FusionDecoder, ModeDecoder
from fusion.llm_loader import load_llm
from fusion.llm_scorer import LLMScorer

log = logging.getLogger(__name__)

# Shipped calibration of tiny.en + the default LLM (written by `uadf-stream calibrate`).
DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")


def create_fusion(backend: AsrBackend, options: FusionOptions) -> FusionDecoder:
    """Load the calibration and, when `options.llm` is set, the LLM, around the backend's Whisper."""
    path = Path(options.calibration).expanduser() if options.calibration else DEFAULT_CALIBRATION
    if not path.is_file():  # a misspelt path would otherwise fuse with uncalibrated defaults, quietly
        raise FileNotFoundError(f"fusion.calibration: no file {path} (write one with `uadf-stream calibrate`, or leave it empty for the shipped one)")
    calibration = Calibration.load(path)
    scorer = None
    if options.llm:
        if calibration.llm != options.llm:
            log.warning("calibration %s was fitted for LLM %r, not %r: run `uadf-stream calibrate`", path, calibration.llm, options.llm)
        if options.threads > 0:
            torch.set_num_threads(options.threads)
        llm = load_llm(options.llm, options.device, options.cache_dir, options.quantize)
        scorer = LLMScorer(llm, calibration.llm_tau)
    return FusionDecoder(backend.model, backend.tokenizer, options, scorer, calibration, backend.silence[0])


def create_decoders(backend: AsrBackend, options: FusionOptions) -> dict[Mode, TokenDecoder]:
    """The plugin's entry point: a decoder for every fusion mode, sharing one LLM and calibration."""
    fusion = create_fusion(backend, options)
    return {mode: ModeDecoder(fusion, mode) for mode in Mode if mode.fused}

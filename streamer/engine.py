"""The loaded models, shared by every session: the Whisper backend and, when configured, the fusion decoder."""

from __future__ import annotations

import logging

from streamer.asr_backend import WhisperBackend
from streamer.config import Config
from streamer.errors import StreamError
from streamer.processor import StreamingProcessor
from streamer.protocol import MODES

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: Config):
        self.config = config
        self.backend = WhisperBackend(config.asr)
        self.fusion = None
        if config.fusion.llm:
            from fusion.factory import create_decoder

            self.fusion = create_decoder(self.backend, config.fusion)
            self.backend.fusion = self.fusion
        log.info(
            "engine ready: %s on %s/%s, LLM %s",
            self.backend.model_name,
            self.backend.device,
            self.backend.compute_type,
            config.fusion.llm or "none",
        )

    @property
    def default_mode(self) -> str:
        return self.config.fusion.mode if self.fusion is not None else "asr"

    def check_mode(self, mode: str | None) -> str:
        mode = mode or self.default_mode
        if mode not in MODES:
            raise StreamError("bad_mode", f"mode must be one of {list(MODES)}")
        if mode != "asr" and self.fusion is None:
            raise StreamError("bad_mode", f"mode {mode!r} needs an LLM; this daemon has none configured (fusion.llm)")
        return mode

    def new_processor(self, mode: str | None = None, **resume) -> StreamingProcessor:
        """A processor for one stream; `resume` passes start_time, first_segment, context on."""
        mode = self.check_mode(mode)
        fusion_context = self.fusion.new_context() if mode != "asr" else None
        if fusion_context is not None and resume.get("context"):
            fusion_context.commit(resume["context"])
        return StreamingProcessor(self.config.streaming, mode=mode, fusion_context=fusion_context, **resume)

"""The loaded models, shared by every session: the ASR backend and a token decoder per mode.

`asr` is served by plain greedy decoding; other modes by decoder plugins (entry-point group
`uadf_stream.decoders`, e.g. fusion/), loaded when `fusion.llm` names an LLM. The daemon knows them only
through core.interfaces.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Sequence

from core.interfaces import DECODER_PLUGINS, AsrBackend, DecoderFactory, TokenDecoder
from core.types import Hypothesis, MeetingContext, Mode, WindowRequest
from streamer.config import Config
from streamer.errors import StreamError
from streamer.greedy import GreedyDecoder
from streamer.processor import StreamingProcessor
from streamer.whisper_backend import WhisperBackend

log = logging.getLogger(__name__)


def plugin_decoders(backend: AsrBackend, config: Config) -> dict[Mode, TokenDecoder]:
    """The decoders every installed plugin offers for this backend and `[fusion]` options."""
    decoders: dict[Mode, TokenDecoder] = {}
    for entry in entry_points(group=DECODER_PLUGINS):
        factory: DecoderFactory = entry.load()
        decoders.update(factory(backend, config.fusion))
    if not decoders:
        raise RuntimeError(f"fusion.llm is set but no decoder plugin is installed (entry points {DECODER_PLUGINS!r})")
    return decoders


class Engine:
    def __init__(self, config: Config, backend: AsrBackend | None = None, decoders: dict[Mode, TokenDecoder] | None = None):
        """Loads the configured backend and decoders unless given."""
        self.config = config
        self.backend: AsrBackend = backend or WhisperBackend(config.asr)
        if decoders is None:
            decoders = {Mode.ASR: GreedyDecoder(self.backend.model, self.backend.tokenizer.eot)}
            if config.fusion.llm:
                decoders |= plugin_decoders(self.backend, config)
        self.decoders = decoders
        log.info(
            "engine ready: %s on %s, modes %s, LLM %s",
            self.backend.model_name,
            self.backend.device,
            ", ".join(self.modes),
            config.fusion.llm or "none",
        )

    @property
    def modes(self) -> list[Mode]:
        return [m for m in Mode if m in self.decoders]

    @property
    def default_mode(self) -> Mode:
        return self.config.fusion.mode if self.config.fusion.mode in self.decoders else Mode.ASR

    def check_mode(self, mode: Mode | str | None) -> Mode:
        """The session's mode (the default when None); StreamError(bad_mode) when it is not served."""
        if mode is None:
            return self.default_mode
        if mode not in Mode.names():
            raise StreamError("bad_mode", f"mode must be one of {Mode.names()}")
        if Mode(mode) not in self.decoders:
            raise StreamError("bad_mode", f"mode {str(mode)!r} needs an LLM; this daemon has none configured (fusion.llm)")
        return Mode(mode)

    def decoder_for(self, mode: Mode) -> TokenDecoder:
        return self.decoders[mode]

    def transcribe(self, requests: Sequence[WindowRequest]) -> list[Hypothesis]:
        """One batch of windows through the backend, each with its mode's decoder."""
        return self.backend.transcribe(requests, self.decoder_for)

    def new_processor(
        self,
        mode: Mode | str | None = None,
        start_time: float = 0.0,
        first_segment: int = 0,
        history: str = "",
        meeting: MeetingContext = MeetingContext(),
        endpoint_silence: float | None = None,
    ) -> StreamingProcessor:
        """A processor for one stream; start_time, first_segment and history (committed text) continue a
        resumed stream; `meeting`: the session's keyterms and notes. endpoint_silence: the stream's own pause
        that ends an utterance, taken only when longer than streaming.endpoint_silence (shorter pauses would
        cut sentences into windows too short for Whisper, and API clients ask for them by default: Deepgram's
        `endpointing` is 10 ms)."""
        mode = self.check_mode(mode)
        decoder_context = self.decoders[mode].new_context(meeting)
        if decoder_context is not None and history:
            decoder_context.commit(history)
        options = self.config.streaming
        if endpoint_silence is not None and endpoint_silence > options.endpoint_silence:
            options = replace(options, endpoint_silence=endpoint_silence)
        return StreamingProcessor(options, mode, decoder_context, start_time, first_segment, history, meeting)

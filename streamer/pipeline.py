"""In-process streaming: the daemon's pipeline without a server (`uadf-stream transcribe`, eval)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from streamer.audio import SAMPLE_RATE, load_audio
from streamer.engine import Engine
from streamer.processor import StepStats, StreamingProcessor
from streamer.protocol import Final, Partial

CHUNK = 0.1  # seconds of audio a simulated client frame


@dataclass
class TranscriptResult:
    finals: list[Final]
    partials: list[Partial]
    audio_seconds: float
    decode_seconds: float
    stats: StepStats = field(default_factory=StepStats)

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.finals if f.text)

    @property
    def rtf(self) -> float:
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else 0.0


def run_stream(engine: Engine, processor: StreamingProcessor, audio: np.ndarray, on_event=None) -> TranscriptResult:
    """Feed audio in CHUNK-second frames, decoding whenever the processor asks, then flush."""
    finals: list[Final] = []
    partials: list[Partial] = []
    decode_seconds = 0.0
    step = int(CHUNK * SAMPLE_RATE)

    def drain() -> None:
        nonlocal decode_seconds
        while (request := processor.next_request()) is not None:
            t0 = time.perf_counter()
            (hyp,) = engine.backend.transcribe([request])
            decode_seconds += time.perf_counter() - t0
            for event in processor.accept_hypothesis(hyp, request):
                (finals if isinstance(event, Final) else partials).append(event)
                if on_event:
                    on_event(event)
            if not request.final:
                break

    for i in range(0, len(audio), step):
        processor.insert_audio(audio[i : i + step])
        drain()
    processor.request_finalize()
    drain()
    return TranscriptResult(finals, partials, len(audio) / SAMPLE_RATE, decode_seconds, processor.stats)


def transcribe_file(path: str, engine: Engine, mode: str | None = None, on_event=None) -> TranscriptResult:
    return run_stream(engine, engine.new_processor(mode), load_audio(path), on_event)

"""In-process streaming: the daemon's drive loop without a server (`uadf-stream transcribe`, eval).

Audio is fed in 0.1 s frames, as a real-time client sends it, and each frame is followed by the decodes it
makes due (the decoder always keeps up here, as on an idle daemon): `StreamDriver.feed`, as the daemon feeds
an uploaded file.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from core.types import SAMPLE_RATE, Hypothesis, MeetingContext, Mode, WindowRequest
from streamer.audio import load_audio
from streamer.drive import StreamDriver
from streamer.engine import Engine
from streamer.processor import StepStats, StreamingProcessor
from streamer.protocol import Final, Partial


@dataclass
class TranscriptResult:
    finals: list[Final]
    partials: list[Partial]
    audio_seconds: float
    decode_seconds: float
    stats: StepStats = field(default_factory=StepStats)
    # per final word: seconds of stream time from the word's end as sent (fitted to the speech, word_times.py)
    # to the decision point that made it final (the commit policy's delay), and that plus the decode time of its
    # window (what a real-time client waits when the decoder has no queue)
    word_waits: list[float] = field(default_factory=list)
    word_delays: list[float] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.finals if f.text)

    @property
    def rtf(self) -> float:
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else 0.0


async def stream(
    engine: Engine,
    processor: StreamingProcessor,
    audio: np.ndarray,
    on_event: Callable[[Partial | Final], None] | None = None,
    feed: Callable[[StreamDriver], Awaitable[None]] | None = None,
) -> TranscriptResult:
    """Feed audio frame by frame through the drive loop, then flush. `feed(driver)`, when given, inserts `audio` and
    pumps in its own rhythm instead (a decoder that falls behind, as under load)."""
    result = TranscriptResult([], [], len(audio) / SAMPLE_RATE, 0.0, processor.stats)
    last_decode = [0.0]

    async def decode(request: WindowRequest) -> Hypothesis:
        t0 = time.perf_counter()
        (hyp,) = engine.transcribe([request])
        last_decode[0] = time.perf_counter() - t0
        result.decode_seconds += last_decode[0]
        return hyp

    async def emit(event: Partial | Final) -> None:
        (result.finals if isinstance(event, Final) else result.partials).append(event)
        if isinstance(event, Final):
            waits = [processor.clock - w.end for w in event.words]
            result.word_waits += waits
            result.word_delays += [wait + last_decode[0] for wait in waits]
        if on_event:
            on_event(event)

    driver = StreamDriver(processor, decode, emit)
    await (feed(driver) if feed else driver.feed(audio))
    await driver.flush()
    return result


def run_stream(engine: Engine, processor: StreamingProcessor, audio: np.ndarray, on_event=None, feed=None) -> TranscriptResult:
    return asyncio.run(stream(engine, processor, audio, on_event, feed))


def transcribe_file(
    path: str, engine: Engine, mode: Mode | str | None = None, on_event=None, meeting: MeetingContext = MeetingContext()
) -> TranscriptResult:
    return run_stream(engine, engine.new_processor(mode, meeting=meeting), load_audio(path), on_event)

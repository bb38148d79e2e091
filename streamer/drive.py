"""The one loop that drives a stream's processor: next window -> decode -> accept -> messages.

The daemon's sessions (decoding through the shared scheduler) and the in-process pipeline (`transcribe`,
`eval`, decoding directly) both run this loop, so what `eval` measures is what a websocket client gets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import numpy as np

from core.types import SAMPLE_RATE, Hypothesis, WindowRequest
from streamer.processor import StreamingProcessor
from streamer.protocol import Final, Partial

log = logging.getLogger(__name__)

FLUSH_ROUNDS = 4  # an endpoint window, then at most a few leftovers
FRAME = 0.1  # seconds of audio a frame when a whole recording is fed (`feed`), as a real-time client sends it


class StreamDriver:
    """Runs a processor's windows through `decode` and hands every message to `emit`, finals first.

    `admit(request)`: may a partial (non-final) window be decoded now? (The scheduler sheds partials when
    the decoder is behind; finals always go.) `on_failure(request, exc)`: a window whose decode raised
    (the processor forgets it and the stream goes on).
    """

    def __init__(
        self,
        processor: StreamingProcessor,
        decode: Callable[[WindowRequest], Awaitable[Hypothesis]],
        emit: Callable[[Partial | Final], Awaitable[None]],
        admit: Callable[[WindowRequest], bool] = lambda request: True,
        on_failure: Callable[[WindowRequest, Exception], None] | None = None,
    ):
        self.processor = processor
        self.decode = decode
        self.emit = emit
        self.admit = admit
        self.on_failure = on_failure

    async def pump(self) -> None:
        """Decode what is due at each decision point since the last pump: at each point every endpoint
        window, then at most one running window."""
        for point, running in self.processor.decision_points(self.processor.options.max_lag):
            while (request := self.processor.next_request(point, running)) is not None:
                if not request.final and not self.admit(request):
                    break  # shed: the next point asks again
                try:
                    hyp = await self.decode(request)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self.on_failure is None:
                        raise
                    self.processor.discard(request)
                    self.on_failure(request, exc)
                    continue
                for event in self.processor.accept_hypothesis(hyp, request):
                    await self.emit(event)
                if not request.final:
                    break

    async def feed(self, audio: np.ndarray, frame: float = FRAME, stopped: Callable[[], bool] = lambda: False) -> None:
        """A recording at full speed: `frame`-second frames as a real-time client sends them, each followed by
        the decodes it makes due (the decoder keeps up, as on an idle daemon); not flushed. Yields to the event
        loop at every frame (silence makes no decodes) and stops early once `stopped()`."""
        step = int(frame * SAMPLE_RATE)
        for i in range(0, len(audio), step):
            if stopped():
                return
            self.processor.insert_audio(audio[i : i + step])
            await self.pump()
            await asyncio.sleep(0)

    async def flush(self) -> None:
        """Turn every pending sample into finals (end of audio, `stop`, a disconnect, shutdown)."""
        self.processor.request_finalize()
        for _ in range(FLUSH_ROUNDS):
            await self.pump()
            if not self.processor.finalize_requested:
                break

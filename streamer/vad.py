"""Streaming voice activity: Silero VAD (shipped with faster-whisper), each 32 ms frame run once, state kept."""

from __future__ import annotations

import numpy as np
from faster_whisper.vad import get_vad_model

from streamer.audio import SAMPLE_RATE

FRAME = 512  # samples a Silero frame (32 ms at 16 kHz)
FRAME_SECONDS = FRAME / SAMPLE_RATE
CONTEXT = 64  # samples of the previous frame Silero sees with each frame
RESET_FRAMES = 31  # a second of non-speech after which the model's state is reset


class StreamingVad:
    """Speech/non-speech per frame with hysteresis; frame probabilities are computed once, as audio arrives."""

    def __init__(self, threshold: float = 0.5, neg_threshold: float = 0.35, start_time: float = 0.0):
        self.threshold = threshold
        self.neg_threshold = neg_threshold
        self._session = get_vad_model().session
        # Silero is recurrent: its state and the last 64 samples carry over from call to call
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._speech: list[bool] = []  # one flag a frame since `_first_frame`
        self._first_frame = int(round(start_time / FRAME_SECONDS))
        self._base_frame = self._first_frame
        self._in_speech = False
        self._quiet = 0  # frames since the last speech frame

    def accept(self, audio: np.ndarray) -> None:
        """Run the model on every complete new frame."""
        self._pending = np.concatenate([self._pending, audio])
        usable = len(self._pending) // FRAME * FRAME
        if not usable:
            return
        frames = self._pending[:usable].reshape(-1, FRAME)
        self._pending = self._pending[usable:]
        contexts = np.concatenate([self._context[None], frames[:-1, -CONTEXT:]])
        self._context = frames[-1, -CONTEXT:].copy()
        probs, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([contexts, frames], axis=1), "h": self._h, "c": self._c}
        )
        for p in probs.reshape(-1):
            self._in_speech = p >= self.threshold or (self._in_speech and p >= self.neg_threshold)
            self._speech.append(bool(self._in_speech))
            self._quiet = 0 if self._in_speech else self._quiet + 1
        if self._quiet >= RESET_FRAMES:
            # Silero's recurrent state drifts over long streams: after a pause in a 52 s recording it
            # scored the next 17 s of speech below 0.01 (0.6-0.9 from a fresh state). Start afresh
            # in every pause, as it does at the start of a file.
            self._h[:] = 0
            self._c[:] = 0
            self._quiet = 0

    @property
    def processed_until(self) -> float:
        return (self._first_frame + len(self._speech)) * FRAME_SECONDS

    def time_at(self, samples: int) -> float:
        """Stream time up to which frames were complete once `samples` samples had been accepted
        (processed_until as it was then)."""
        return (self._base_frame + samples // FRAME) * FRAME_SECONDS

    def forget_before(self, t: float) -> None:
        """Drop flags of frames before stream time t (keeps memory bounded on long streams)."""
        drop = min(int(t / FRAME_SECONDS) - self._first_frame, len(self._speech))
        if drop > 0:
            del self._speech[:drop]
            self._first_frame += drop

    def _since(self, t: float) -> int:
        """Index of the frame holding stream time t."""
        return max(int(t / FRAME_SECONDS) - self._first_frame, 0)

    def _until(self, t: float | None) -> int:
        """Index past the last frame that ends by stream time t (None, or t at the end: every frame). Frame
        boundaries computed elsewhere may sit a rounding error below the boundary: they count as on it."""
        if t is None or t >= self.processed_until:
            return len(self._speech)
        return min(max(int(t / FRAME_SECONDS + 1e-9) - self._first_frame, 0), len(self._speech))

    def speech_seconds(self, start: float, end: float | None = None) -> float:
        """Seconds of speech between stream times start and end."""
        return sum(self._speech[self._since(start) : self._until(end)]) * FRAME_SECONDS

    def last_speech_end(self, since: float, until: float | None = None) -> float | None:
        """Stream time where the last speech frame between `since` and `until` ends, or None if there is none."""
        lo = self._since(since)
        for i in range(self._until(until) - 1, lo - 1, -1):
            if self._speech[i]:
                return (self._first_frame + i + 1) * FRAME_SECONDS
        return None

    def first_speech_start(self, since: float, until: float | None = None) -> float | None:
        for i in range(self._since(since), self._until(until)):
            if self._speech[i]:
                return (self._first_frame + i) * FRAME_SECONDS
        return None

"""Audio intake: client PCM in any supported format -> 16 kHz mono float32, resampled with soxr."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from streamer.errors import StreamError

SAMPLE_RATE = 16000
ENCODINGS = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 48000


@dataclass(frozen=True)
class AudioFormat:
    sample_rate: int = SAMPLE_RATE
    encoding: str = "pcm_s16le"
    channels: int = 1

    def validate(self) -> None:
        if self.encoding not in ENCODINGS:
            raise StreamError("bad_encoding", f"encoding must be one of {sorted(ENCODINGS)}, got {self.encoding!r}")
        if not isinstance(self.sample_rate, int) or not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise StreamError("bad_sample_rate", f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE}, got {self.sample_rate!r}")
        if self.channels not in (1, 2) or isinstance(self.channels, bool):
            raise StreamError("bad_channels", f"channels must be 1 or 2, got {self.channels!r}")

    @property
    def frame_bytes(self) -> int:
        return ENCODINGS[self.encoding].itemsize * self.channels


class AudioConverter:
    """Decodes binary frames and resamples them as one continuous stream (soxr keeps filter state)."""

    def __init__(self, fmt: AudioFormat):
        fmt.validate()
        self.fmt = fmt
        self._resampler = (
            soxr.ResampleStream(fmt.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if fmt.sample_rate != SAMPLE_RATE
            else None
        )
        self._flushed = False

    def decode(self, data: bytes) -> np.ndarray:
        """One binary frame -> 16 kHz mono float32. Raises StreamError(bad_audio) on a malformed frame."""
        if len(data) % self.fmt.frame_bytes:
            raise StreamError(
                "bad_audio",
                f"frame of {len(data)} bytes is not a whole number of {self.fmt.frame_bytes}-byte "
                f"{self.fmt.encoding} x {self.fmt.channels}-channel frames",
            )
        samples = np.frombuffer(data, dtype=ENCODINGS[self.fmt.encoding])
        if self.fmt.encoding == "pcm_s16le":
            audio = samples.astype(np.float32) / 32768.0
        else:
            audio = samples.astype(np.float32)
            if not np.isfinite(audio).all():
                raise StreamError("bad_audio", "pcm_f32le frame holds NaN or infinite samples")
            np.clip(audio, -1.0, 1.0, out=audio)
        if self.fmt.channels == 2:
            audio = audio.reshape(-1, 2).mean(axis=1)
        return self._resample(audio, last=False)

    def flush(self) -> np.ndarray:
        """The resampler's delayed tail, at end of stream; later calls return nothing."""
        if self._flushed:
            return np.zeros(0, np.float32)
        self._flushed = True
        return self._resample(np.zeros(0, np.float32), last=True)

    def _resample(self, audio: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return audio
        out = self._resampler.resample_chunk(audio, last=last).astype(np.float32, copy=False)
        return np.clip(out, -1.0, 1.0, out=out)  # the filter rings past full scale on clipped input


def load_audio(path: str) -> np.ndarray:
    """Read a WAV/FLAC file as 16 kHz mono float32."""
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return audio


class SampleBuffer:
    """A growing window of float32 samples: appending a frame and dropping the front cost O(frame),
    not a copy of the whole buffer (a flood of tiny frames must not cost a full copy each)."""

    def __init__(self, capacity: int = 30 * SAMPLE_RATE):
        self._data = np.zeros(capacity, np.float32)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def append(self, samples: np.ndarray) -> None:
        n = len(samples)
        if self._end + n > len(self._data):
            live = self._data[self._start : self._end]
            if len(live) + n > len(self._data) // 2:  # grow by doubling, else just move the live part to the front
                grown = np.zeros(max(2 * len(self._data), len(live) + n), np.float32)
                grown[: len(live)] = live
                self._data = grown
            else:
                self._data[: len(live)] = live
            self._start, self._end = 0, len(live)
        self._data[self._end : self._end + n] = samples
        self._end += n

    def drop_front(self, n: int) -> None:
        self._start += min(max(n, 0), len(self))

    def head(self, n: int) -> np.ndarray:
        """A copy of the first n samples."""
        return self.samples(0, n)

    def samples(self, i: int, j: int) -> np.ndarray:
        """A copy of samples i to j (clipped to what the buffer holds)."""
        i, j = min(max(i, 0), len(self)), min(max(j, 0), len(self))
        return self._data[self._start + i : self._start + max(i, j)].copy()

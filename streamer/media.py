"""Audio files of any common container and codec (WAV, FLAC, MP3, OGG/Opus, WebM, M4A/AAC, ...) -> 16 kHz mono
float32, decoded by FFmpeg through PyAV and resampled with soxr like live audio (streamer.audio)."""

from __future__ import annotations

import io

import av
import numpy as np
import soxr

from streamer.audio import SAMPLE_RATE


class MediaError(ValueError):
    """The upload is not audio this server can decode, or breaks a limit; the message says which."""


def decode_audio(data: bytes, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream of an in-memory file. Channels are averaged (as live stereo is).
    Raises MediaError for undecodable input, no audio stream, no samples, or more than `max_seconds`."""
    if not data:
        raise MediaError("the file is empty")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise MediaError(f"not an audio file FFmpeg can read: {_reason(exc)}") from None
    with container:
        stream = next(iter(container.streams.audio), None)
        if stream is None:
            raise MediaError("the file has no audio stream")
        to_float = av.AudioResampler(format="fltp")  # planar float, the file's own rate and channels
        resampler: soxr.ResampleStream | None = None
        rate = 0
        chunks: list[np.ndarray] = []
        limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
        total = 0
        try:
            for frame in container.decode(stream):
                for planar in to_float.resample(frame):
                    if resampler is None:
                        rate = planar.sample_rate
                        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ") if rate != SAMPLE_RATE else None
                        rate = rate or SAMPLE_RATE
                    mono = planar.to_ndarray().mean(axis=0, dtype=np.float32)
                    out = resampler.resample_chunk(mono) if resampler is not None else mono
                    chunks.append(out)
                    total += len(out)
                    if limit is not None and total > limit:
                        raise MediaError(f"the audio is longer than the limit of {max_seconds:g} s")
        except av.error.FFmpegError as exc:
            raise MediaError(f"the audio stream is corrupt: {_reason(exc)}") from None
        if resampler is not None:
            chunks.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if not len(audio):
        raise MediaError("the file holds no audio samples")
    if not np.isfinite(audio).all():
        raise MediaError("the audio holds NaN or infinite samples")
    return np.clip(audio, -1.0, 1.0, out=audio)


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)

"""Uploaded-file decoding: a speech-dev clip encoded (with PyAV) into each container and codec the transcription
API takes, decoded back to 16 kHz mono; undecodable input gets a clear error."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from conftest import manifest
from streamer.audio import load_audio
from streamer.media import MediaError, decode_audio


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return load_audio(manifest("speech-dev")[0]["path"])


def encode(audio: np.ndarray, container: str, codec: str, rate: int, layout: str = "mono") -> bytes:
    """16 kHz mono float32 -> a file in `container`/`codec` at `rate`, mono or the same audio on both channels."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        planes = np.tile(audio, (2, 1)) if layout == "stereo" else audio[None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes, dtype=np.float32), format="fltp", layout=layout)
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
        for f in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return buf.getvalue()


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 2000) -> tuple[int, float]:
    """The lag (samples b lags a) and normalised correlation where they match best: codecs add priming delay."""
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    size = 1 << (2 * n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.r_[0 : max_lag + 1, -max_lag:0]
    i = int(np.argmax(xc[lags]))
    return int(lags[i]), float(xc[lags][i] / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize(
    "container, codec, rate, layout, min_corr",
    [
        ("wav", "pcm_s16le", 44100, "stereo", 0.999),  # resampled and mixed down
        ("flac", "flac", 16000, "mono", 0.999),
        ("mp3", "libmp3lame", 22050, "mono", 0.97),
        ("ogg", "libopus", 48000, "mono", 0.97),
        ("webm", "libopus", 48000, "stereo", 0.97),
        ("ipod", "aac", 44100, "mono", 0.9),  # M4A
    ],
)
def test_each_format_decodes_to_the_clip(clip, container, codec, rate, layout, min_corr):
    decoded = decode_audio(encode(clip, container, codec, rate, layout))
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - len(clip)) < 0.05 * 16000  # AAC adds its priming (23 ms) when no edit list trims it
    lag, corr = best_correlation(clip, decoded)
    assert abs(lag) < 0.05 * 16000 and corr > min_corr, (lag, corr)


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"", "empty"),
        (b"definitely not an audio file, just text", "not an audio file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "not an audio file"),  # a WAV header cut short
        (np.zeros(4096, np.uint8).tobytes(), "not an audio file"),
    ],
)
def test_undecodable_input_gets_a_clear_error(data, needle):
    with pytest.raises(MediaError, match=needle):
        decode_audio(data)


def test_video_without_audio_is_refused():
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(MediaError, match="no audio stream"):
        decode_audio(buf.getvalue())


def test_duration_limit(clip):
    flac = encode(clip, "flac", "flac", 16000)
    assert len(decode_audio(flac, max_seconds=len(clip) / 16000 + 0.5)) == len(clip)
    with pytest.raises(MediaError, match="longer than the limit of 1 s"):
        decode_audio(flac, max_seconds=1)

"""Raw encodings the wire APIs carry (32-bit PCM, G.711) into the session's own formats."""

from __future__ import annotations

import av
import numpy as np
import pytest

from streamer.errors import StreamError
from streamer.wire.transcode import RawFormat, Transcoder


def g711(encoding: str, samples: np.ndarray) -> bytes:
    """s16 samples -> G.711 bytes by FFmpeg's encoder (independent of the decoder under test)."""
    codec = av.CodecContext.create(encoding, "w")
    codec.sample_rate, codec.layout, codec.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))


@pytest.mark.parametrize("encoding", ["pcm_mulaw", "pcm_alaw"])
def test_g711_round_trip(encoding):
    t = np.arange(8000) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)
    data = g711(encoding, tone)
    transcoder = Transcoder(RawFormat(encoding, 8000, 1))
    assert transcoder.fmt.session_format.encoding == "pcm_s16le"
    pcm = np.concatenate([np.frombuffer(transcoder.convert(data[i : i + 160]), "<i2") for i in range(0, len(data), 160)])
    assert len(pcm) == len(tone) and np.corrcoef(pcm, tone)[0, 1] > 0.999
    assert np.abs(pcm.astype(int) - tone).max() < 12000 * 0.05  # G.711 is 8-bit logarithmic: a few % of the peak


def test_mulaw_reference_values():
    out = np.frombuffer(Transcoder(RawFormat("pcm_mulaw", 8000, 1)).convert(bytes([0x00, 0xFF, 0x80, 0x7F])), "<i2")
    assert out.tolist() == [-32124, 0, 32124, 0]  # ITU-T G.711 (as audioop.ulaw2lin)


def test_linear32_becomes_float():
    t = Transcoder(RawFormat("pcm_s32le", 16000, 2))
    assert t.fmt.session_format.encoding == "pcm_f32le"
    out = np.frombuffer(t.convert(np.array([2**30, -(2**31), 0, 2**31 - 1], "<i4").tobytes()), "<f4")
    assert out.tolist() == pytest.approx([0.5, -1.0, 0.0, 1.0])
    with pytest.raises(StreamError) as err:
        t.convert(b"\x00" * 6)
    assert err.value.code == "bad_audio"


def test_native_encodings_pass_through_and_bad_ones_are_refused():
    data = b"\x01\x02\x03\x04"
    assert Transcoder(RawFormat("pcm_s16le", 24000, 1)).convert(data) is data
    with pytest.raises(StreamError) as err:
        Transcoder(RawFormat("opus", 48000, 1))
    assert err.value.code == "bad_encoding"
    with pytest.raises(StreamError) as err:
        Transcoder(RawFormat("pcm_mulaw", 4000, 1))
    assert err.value.code == "bad_sample_rate"

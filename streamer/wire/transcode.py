"""Raw client encodings the session does not take itself (32-bit integer PCM, G.711 mu-law and A-law), turned
into one it does (pcm_s16le / pcm_f32le) frame by frame. G.711 is decoded by FFmpeg's codecs (PyAV)."""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from streamer.audio import ENCODINGS, AudioFormat
from streamer.errors import StreamError

G711 = {"pcm_mulaw": "pcm_mulaw", "pcm_alaw": "pcm_alaw"}  # FFmpeg decoder names
RAW_ENCODINGS = (*ENCODINGS, "pcm_s32le", *G711)


@dataclass(frozen=True)
class RawFormat:
    """What the client sends: a raw encoding from RAW_ENCODINGS, its rate and channel count."""

    encoding: str
    sample_rate: int
    channels: int

    @property
    def session_format(self) -> AudioFormat:
        """The format the session is started with (what `Transcoder.convert` hands it)."""
        target = "pcm_f32le" if self.encoding == "pcm_s32le" else self.encoding if self.encoding in ENCODINGS else "pcm_s16le"
        return AudioFormat(sample_rate=self.sample_rate, encoding=target, channels=self.channels)


class Transcoder:
    """Converts each client frame to the session's format; the identity for pcm_s16le and pcm_f32le."""

    def __init__(self, fmt: RawFormat):
        if fmt.encoding not in RAW_ENCODINGS:
            raise StreamError("bad_encoding", f"encoding must be one of {list(RAW_ENCODINGS)}, got {fmt.encoding!r}")
        fmt.session_format.validate()
        self.fmt = fmt
        self._codec = None
        if fmt.encoding in G711:
            self._codec = av.CodecContext.create(G711[fmt.encoding], "r")
            self._codec.sample_rate = fmt.sample_rate
            self._codec.layout = "mono" if fmt.channels == 1 else "stereo"

    def convert(self, data: bytes) -> bytes:
        width = 4 if self.fmt.encoding == "pcm_s32le" else 1 if self._codec else 0
        if not width:
            return data
        if len(data) % (width * self.fmt.channels):
            raise StreamError("bad_audio", f"frame of {len(data)} bytes is not a whole number of {self.fmt.encoding} frames")
        if self._codec is None:
            return (np.frombuffer(data, "<i4").astype(np.float32) / 2**31).astype("<f4").tobytes()
        if not data:
            return b""
        return b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in self._codec.decode(av.Packet(data)))

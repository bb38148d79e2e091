"""Which 10 ms frames of a piece of audio hold speech, by energy against the loudest frame near them.

Cheap and model-free: the speaker encoder cuts pauses with it (Resemblyzer cuts them with webrtcvad), the
speaker contexts start where it shows speech resuming, and final words are fitted to the speech it shows."""

from __future__ import annotations

import numpy as np

FRAME = 160  # 10 ms at 16 kHz
QUIET_DB = 40.0  # a 10 ms frame this far below the loudest of its piece is a pause, not speech


def frame_energy(audio: np.ndarray) -> np.ndarray:
    """Mean square of each whole 10 ms frame."""
    n = len(audio) // FRAME
    return np.square(audio[: n * FRAME].reshape(n, FRAME), dtype=np.float64).mean(axis=1)


def speech_floor(loudest: float, quiet_db: float = QUIET_DB) -> float:
    """The frame energy above which a frame holds speech, against the loudest frame near it."""
    return loudest * 10 ** (-quiet_db / 10) + 1e-12


def voiced(audio: np.ndarray, quiet_db: float = QUIET_DB) -> np.ndarray:
    """Which 10 ms frames hold speech, by energy against the piece's loudest frame."""
    energy = frame_energy(audio)
    return energy > speech_floor(energy.max(initial=0.0), quiet_db)

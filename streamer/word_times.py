"""Word times fitted to the speech they cover.

Whisper's word timestamps (cross-attention alignment, tiny.en) stretch a word over the pause after it, or start
it in the silence before it: 'ask' 9.06-10.02 s where JFK says it in 0.4 s and pauses. A final's words are
trimmed to the 10 ms frames that hold speech (`loudness.voiced`, against the loudest frame within `AROUND`
seconds of the word), so captions, subtitle cues, Deepgram word times and speaker turns end where the speech
does. A word none of whose frames shows speech, and the words of a recording whose pauses stay within
`QUIET_DB` of its speech (bus noise), keep Whisper's times. Only finals' words are fitted: the decoder and the
commit policy keep Whisper's own times, so commits are unchanged."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from core.types import SAMPLE_RATE, Word
from streamer.loudness import FRAME, QUIET_DB, frame_energy, speech_floor

AROUND = 1.5  # seconds each side of a word whose loudest frame sets what counts as quiet
STEP = FRAME / SAMPLE_RATE


def fit_to_speech(words: Sequence[Word], audio: np.ndarray, origin: float, quiet_db: float = QUIET_DB) -> list[Word]:
    """`words` with start and end moved inward to the first and last frame of speech inside them; `audio` the
    16 kHz samples from stream time `origin` (what is not there is not used)."""
    energy = frame_energy(audio)
    out = []
    for w in words:
        a, b = round((w.start - origin) / STEP), round((w.end - origin) / STEP)
        lo, hi = max(a - round(AROUND / STEP), 0), min(b + round(AROUND / STEP), len(energy))
        a, b = max(a, 0), min(b, len(energy))
        if a >= b:
            out.append(w)
            continue
        speech = np.flatnonzero(energy[a:b] > speech_floor(energy[lo:hi].max(), quiet_db))
        if not len(speech):
            out.append(w)
            continue
        start = origin + (a + speech[0]) * STEP
        end = origin + (a + speech[-1] + 1) * STEP
        out.append(replace(w, start=round(float(max(start, w.start)), 3), end=round(float(min(end, w.end)), 3)))
    return out

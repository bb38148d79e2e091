"""Who is speaking: speaker embeddings of committed speech, clustered online per session.

The stage runs after a final is committed, on the audio around its words; the decoder never waits for it. One
`SpeakerEncoder` is loaded per daemon and shared (streamer/ge2e.py, the only part that needs torch); each session
gets an `OnlineDiarizer`. A label, once given, is never changed: later speech only moves the speakers'
centroids, which decides where new speech goes. streamer/speaker_labels.py runs it for the daemon's sessions.
"""

from __future__ import annotations

import collections
import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from streamer.audio import SAMPLE_RATE


FRAME = 160  # 10 ms
QUIET_DB = 40.0  # a 10 ms frame this far below the loudest of its piece is a pause, not speech


def voiced(audio: np.ndarray) -> np.ndarray:
    """Which 10 ms frames hold speech, by energy against the piece's loudest frame. Resemblyzer trims pauses
    (webrtcvad) before embedding; a context here often holds a pause, or the silence after a turn."""
    n = len(audio) // FRAME
    energy = np.square(audio[: n * FRAME].reshape(n, FRAME), dtype=np.float64).mean(axis=1)
    return energy > (energy.max(initial=0.0) * 10 ** (-QUIET_DB / 10) if n else 0.0) + 1e-12


class Timed(Protocol):
    """A word with stream times (`core.types.Word`)."""

    start: float
    end: float


class SpeakerEncoder(Protocol):
    """Audio pieces -> one L2-normalised speaker embedding each (rows of the returned matrix)."""

    dim: int

    def embed(self, pieces: Sequence[np.ndarray]) -> np.ndarray: ...


def resemblyzer_weights() -> Path:
    """`pretrained.pt` inside the installed `resemblyzer` wheel, found without importing the package.

    Importing `resemblyzer` pulls librosa, webrtcvad and scipy.ndimage for its file loading, resampling and
    silence trimming, which the daemon does not need; the network itself is 3 LSTM layers and a linear layer."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("speaker labels need the `resemblyzer` package (pip install --no-deps resemblyzer)")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.exists():
        raise RuntimeError(f"resemblyzer's weights are missing: {path}")
    return path


@dataclass
class DiarizerOptions:
    """Per-session options.

    `threshold`: cosine similarity between a piece's embedding and a speaker's centroid at which the piece
    joins that speaker; below it a new speaker starts (while fewer than `max_speakers` exist)."""

    max_speakers: int = 8
    threshold: float = 0.675
    context: float = 2.0  # seconds of the run's audio embedded to label a piece, ending `lookahead` after it
    lookahead: float = 0.8  # audio after the piece's last word, where it has arrived (finals lag the audio)
    pause: float = 0.3  # a pause between words at least this long ends a run (turns change at pauses)
    min_context: float = 1.0  # a context with less speech cannot start a speaker or move a centroid
    recheck: float = 1.0  # inside a run, embed again only once this much new speech has come (CPU)
    history: float = 30.0  # seconds of audio kept for context (a final's words are at most this old)


@dataclass
class _Speaker:
    total: np.ndarray  # duration-weighted sum of the embeddings given to this speaker
    seconds: float  # speech behind `total`; 0 for a speaker started on too little speech to trust

    @property
    def centroid(self) -> np.ndarray:
        return self.total / max(float(np.linalg.norm(self.total)), 1e-9)


class OnlineDiarizer:
    """One session's speakers: labels the words of each final with 0, 1, ... in order of first appearance
    (`first_label`, 1, ...: a session resumed after a daemon restart does not reuse the labels it had).

    Feed it the session's 16 kHz audio as it arrives (`accept`) and call `label` with each final's words.
    Finals are short in agreement mode (often one word), so a piece is judged by `context` seconds of audio
    around it: back to the start of its run of speech (never across a pause, where the speaker may change)
    and `lookahead` ahead. A run keeps its speaker while the audio still matches it, even if another matches
    better; otherwise the best match at `threshold` or above, else a new speaker.

    `accept` may run on another thread than `label` (the daemon's event loop and its speaker worker): the audio
    is kept as the chunks it came in, never copied or changed in place, behind a lock. One `label` at a time."""

    def __init__(self, encoder: SpeakerEncoder, options: DiarizerOptions | None = None, start_time: float = 0.0, first_label: int = 0):
        self.encoder = encoder
        self.options = options or DiarizerOptions()
        self.first_label = first_label
        self.speakers: list[_Speaker] = []
        self._chunks: collections.deque[tuple[int, np.ndarray]] = collections.deque()  # (first sample, audio)
        self._origin = start_time  # stream time of sample 0
        self._samples = 0  # samples received since the origin
        self._lock = threading.Lock()
        self._last_end: float | None = None  # end of the last labelled word
        self._run_start = start_time
        self._run_speaker: int | None = None
        self._checked_until = start_time  # end of the last piece that was embedded

    def accept(self, audio: np.ndarray) -> None:
        """Stream audio in order, 16 kHz mono float32 (kept, not copied: never change it afterwards); at least
        the last `history` seconds are kept."""
        audio = np.asarray(audio, dtype=np.float32)
        with self._lock:
            self._chunks.append((self._samples, audio))
            self._samples += len(audio)
            keep_from = self._samples - int(self.options.history * SAMPLE_RATE)
            while len(self._chunks) > 1 and self._chunks[0][0] + len(self._chunks[0][1]) <= keep_from:
                self._chunks.popleft()

    def restart_audio(self, start_time: float) -> None:
        """The stream goes on at `start_time` (a resumed session): the audio kept so far is dropped, the speakers stay."""
        with self._lock:
            self._chunks.clear()
            self._origin, self._samples = start_time, 0

    @property
    def audio_end(self) -> float:
        return self._origin + self._samples / SAMPLE_RATE

    def label(self, words: Sequence[Timed], until: float | None = None) -> list[int]:
        """Speaker of each word of one final, in commit order; labels given are never revised. `until`: the
        stream time the session's audio had reached at the final (audio accepted beyond it is not used)."""
        if not words:
            return []
        o = self.options
        with self._lock:  # the audio as it stands: the chunks are never changed, the deque may be
            chunks, origin = list(self._chunks), self._origin
            end = self.audio_end
        if until is not None:
            end = min(end, until)
        first = origin + chunks[0][0] / SAMPLE_RATE if chunks else end
        spans = self.pieces(words)
        plans: list[tuple[int, int, bool, np.ndarray | None]] = []  # word range, starts a run, context audio
        last_end, run_start, checked = self._last_end, self._run_start, self._checked_until
        for a, b in spans:
            ps, pe = words[a].start, words[b - 1].end
            new_run = last_end is None or ps - last_end >= o.pause
            if new_run:
                run_start = ps
            clip = None
            if new_run or pe - checked >= o.recheck:
                hi = min(end, pe + o.lookahead)
                lo = max(run_start, first, min(ps, hi - o.context))
                clip = _clip(chunks, origin, lo, max(hi, lo + 0.01))
                checked = pe
            plans.append((a, b, new_run, clip))
            last_end = pe
        clips = [c for *_, c in plans if c is not None]
        embeddings = iter(self.encoder.embed(clips) if clips else [])
        labels: list[int] = []
        for a, b, new_run, clip in plans:
            if new_run:
                self._run_start, self._run_speaker = words[a].start, None
            if clip is None:  # too little new speech since the run's last check: same speaker
                speaker = self._run_speaker
            else:
                # speech in the whole context counts: after a turn's first word the same voice usually goes on
                reliable = voiced(clip).sum() * FRAME / SAMPLE_RATE >= o.min_context
                speaker = self._assign(next(embeddings), reliable, words[b - 1].end - words[a].start)
                self._checked_until = words[b - 1].end
            self._run_speaker = speaker
            self._last_end = words[b - 1].end
            labels.extend([self.first_label + speaker] * (b - a))
        return labels

    def pieces(self, words: Sequence[Timed]) -> list[tuple[int, int]]:
        """Word index ranges [a, b): cut at pauses >= `pause`, then evenly into pieces of about `context` s
        (a final holding a whole utterance may change speaker inside)."""
        runs: list[tuple[int, int]] = []
        a = 0
        for i in range(1, len(words)):
            if words[i].start - words[i - 1].end >= self.options.pause:
                runs.append((a, i))
                a = i
        runs.append((a, len(words)))
        spans: list[tuple[int, int]] = []
        for a, b in runs:
            length = words[b - 1].end - words[a].start
            n = max(1, round(length / self.options.context))
            bounds = [a]
            for k in range(1, n):  # the word boundary nearest to each k/n of the run
                t = words[a].start + length * k / n
                j = min(range(bounds[-1] + 1, b), key=lambda j: abs(words[j].start - t), default=b)
                if j < b:
                    bounds.append(j)
            bounds.append(b)
            spans.extend(zip(bounds, bounds[1:]))
        return spans

    def _assign(self, embedding: np.ndarray, reliable: bool, seconds: float) -> int:
        o = self.options
        sims = [float(embedding @ sp.centroid) for sp in self.speakers]
        run = self._run_speaker
        if not reliable:  # too little speech to tell: the run's speaker, else the nearest one (or a first one)
            if run is not None:
                return run
            return int(np.argmax(sims)) if sims else self._new(embedding, 0.0)
        if run is not None and (self.speakers[run].seconds == 0 or sims[run] >= o.threshold):
            best = run  # a run keeps its speaker while it matches (a speaker started on too little speech: at once)
        elif sims and (max(sims) >= o.threshold or len(sims) >= o.max_speakers):
            best = int(np.argmax(sims))
        else:
            return self._new(embedding, seconds)
        sp = self.speakers[best]
        sp.total = (sp.total if sp.seconds else 0) + embedding * seconds
        sp.seconds += seconds
        return best

    def _new(self, embedding: np.ndarray, seconds: float) -> int:
        self.speakers.append(_Speaker(embedding * max(seconds, 1e-3), seconds))
        return len(self.speakers) - 1


def _clip(chunks: Sequence[tuple[int, np.ndarray]], origin: float, lo: float, hi: float) -> np.ndarray:
    """Stream time [lo, hi) from audio kept as (first sample, samples) chunks whose sample 0 is at `origin`."""
    i = max(int((lo - origin) * SAMPLE_RATE), 0)
    j = max(math.ceil((hi - origin) * SAMPLE_RATE), i)
    parts = [audio[max(i - s, 0) : j - s] for s, audio in chunks if s < j and s + len(audio) > i]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)

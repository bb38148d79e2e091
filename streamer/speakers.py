"""Who is speaking: speaker embeddings of committed speech, clustered online per session.

The session's audio is embedded as it arrives, in contexts that end on a grid of stream time; a final is
labelled from those already made (a lookup), so labels add nothing to its latency. One `SpeakerEncoder` is
loaded per daemon and shared (streamer/ge2e.py, the only part that needs torch); each session gets an
`OnlineDiarizer`. A label, once given, is never changed: later speech only moves the speakers'
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
from streamer.loudness import FRAME, QUIET_DB, voiced


TURN_DB = 25.0  # a context may also start after a pause this far below the loudest (a noisy room's pauses stay within 40 dB)


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
    recheck: float = 1.0  # inside a run, judge the speaker again once this much new speech has come
    confirm: float = 4.0  # a speaker with less speech is young: its run moves to a known speaker it comes to match
    slack: float = 0.2  # a run's context may start this much before its first word (where speech resumed)
    grid: float = 0.5  # contexts end on this grid of stream time: embedded as the audio arrives, before any final
    history: float = 30.0  # seconds of audio kept for context (a final's words are at most this old); also how far
    # `prepare` runs ahead of the last final (an upload gives all its audio at once)


@dataclass
class _Speaker:
    total: np.ndarray  # duration-weighted sum of the embeddings given to this speaker
    seconds: float  # speech behind `total`; 0 for a speaker started on too little speech to trust
    retired: bool = False  # found to be another speaker's voice: never chosen again (its labels stay as given)

    @property
    def centroid(self) -> np.ndarray:
        return self.total / max(float(np.linalg.norm(self.total)), 1e-9)


@dataclass(frozen=True)
class _Window:
    """An embedded context and how many seconds of speech it held (`min_context` decides on it)."""

    embedding: np.ndarray
    speech: float


class OnlineDiarizer:
    """One session's speakers: labels the words of each final with 0, 1, ... in order of first appearance
    (`first_label`, 1, ...: a session resumed after a daemon restart does not reuse the labels it had).

    Feed it the session's 16 kHz audio as it arrives (`accept`), let `prepare` embed it ahead (the speaker
    worker does, as audio comes) and call `label` with each final's words. Finals are short in agreement mode
    (often one word), so a piece is judged by up to `context` seconds of audio around it: back to the start of
    its run of speech (never across a pause, where the speaker may change) and `lookahead` ahead. Contexts end
    on a `grid` of stream time and start either `context` before it or where speech resumed after a pause, so
    they can be embedded before the words are known; a final takes the longest one that stays inside its run,
    a lookup. A run keeps its speaker while the audio still matches it, even if another matches better (a young
    speaker's run moves to a known speaker that matches it better: `confirm`); otherwise the best match at
    `threshold` or above, else a new speaker.

    `accept` may run on another thread than `prepare` and `label` (the daemon's event loop and its speaker
    worker): the audio is kept as the chunks it came in, never copied or changed in place, behind a lock; so
    are the embeddings. One `label` at a time; one `prepare` at a time."""

    def __init__(self, encoder: SpeakerEncoder, options: DiarizerOptions | None = None, start_time: float = 0.0, first_label: int = 0):
        self.encoder = encoder
        self.options = options or DiarizerOptions()
        self.first_label = first_label
        self.speakers: list[_Speaker] = []
        self.embedded_on_label = 0  # contexts `label` had to embed itself (not prepared ahead)
        self._chunks: collections.deque[tuple[int, np.ndarray]] = collections.deque()  # (first sample, audio)
        self._origin = start_time  # stream time of sample 0
        self._samples = 0  # samples received since the origin
        self._lock = threading.Lock()
        self._windows: dict[tuple[int, int], _Window] = {}  # (grid point, first sample) -> embedded context
        self._prepared = self._last_point(start_time)  # last grid point embedded
        self._generation = 0  # audio restarts (a resume): a `prepare` of the old audio stores nothing
        self._labelled_until = start_time  # `until` of the last final: `prepare` goes at most `history` past it
        self._last_end = -math.inf  # end of the last labelled word
        self._run_start = start_time
        self._run_after = -math.inf  # end of the last word of the run before this one: its contexts start after it
        self._run_speaker: int | None = None
        self._run_born = False  # a new speaker started inside this run, after its first piece
        self._checked_until = start_time  # end of the last piece that was judged

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
            self._windows.clear()
            self._origin, self._samples, self._prepared = start_time, 0, self._last_point(start_time)
            self._generation += 1
            self._labelled_until = start_time

    @property
    def audio_end(self) -> float:
        return self._origin + self._samples / SAMPLE_RATE

    @property
    def unprepared(self) -> bool:
        """Whether a grid point has audio that `prepare` has not embedded yet (within its reach)."""
        return self._last_point(self._limit()) > self._prepared

    def prepare(self) -> int:
        """Embed the contexts of every grid point the audio has reached, at most `history` past the last final
        (an upload's audio comes all at once); the number embedded. Runs on the speaker worker, as audio comes."""
        generation, audio = self._generation, self._audio()
        points = range(self._prepared + 1, self._last_point(self._limit()) + 1)
        if not points:
            return 0
        keys, clips = [], []
        for k in points:
            for key, lo, hi in self._candidates(audio, k):
                keys.append(key)
                clips.append(_clip(audio[0], audio[1], lo, hi))
        embeddings = self.encoder.embed(clips) if clips else []
        with self._lock:
            if generation != self._generation:
                return 0
            for key, clip, e in zip(keys, clips, embeddings):
                self._windows[key] = _Window(e, _speech(clip))
            self._prepared = points[-1]
            oldest = round((self._labelled_until - self.options.history) / self.options.grid)
            for key in [key for key in self._windows if key[0] < oldest]:
                del self._windows[key]
        return len(clips)

    def label(self, words: Sequence[Timed], until: float | None = None, compute: bool = True) -> list[int] | None:
        """Speaker of each word of one final, in commit order; labels given are never revised. `until`: the
        stream time the session's audio had reached at the final (audio accepted beyond it is not used).
        A context not prepared yet is embedded here, unless `compute` is false: then None, and nothing changed."""
        if not words:
            return []
        o = self.options
        audio = self._audio()
        end = self.audio_end if until is None else min(self.audio_end, until)
        plans: list[tuple[int, int, bool, tuple | None]] = []  # word range, starts a run, context (key, lo, hi)
        last_end, run_start, after, checked = self._last_end, self._run_start, self._run_after, self._checked_until
        for a, b in self.pieces(words):
            ps, pe = words[a].start, words[b - 1].end
            new_run = ps - last_end >= o.pause  # always for the first words (-inf)
            if new_run:
                run_start, after = ps, last_end
            context = None
            if new_run or pe - checked >= o.recheck:
                context = self._context(audio, min(end, pe + o.lookahead), run_start, after)
                checked = pe
            plans.append((a, b, new_run, context))
            last_end = pe
        with self._lock:
            found = {c[0]: self._windows.get(c[0]) for *_, c in plans if c is not None}
        missing = [c for *_, c in plans if c is not None and found[c[0]] is None]
        if missing and not compute:
            return None
        if missing:
            clips = [_clip(audio[0], audio[1], lo, hi) for _, lo, hi in missing]
            for (key, *_), clip, e in zip(missing, clips, self.encoder.embed(clips)):
                found[key] = _Window(e, _speech(clip))
            self.embedded_on_label += len(missing)
        labels: list[int] = []
        for a, b, new_run, context in plans:
            if new_run:
                self._run_start, self._run_speaker = words[a].start, None
                self._run_born = False
                self._run_after = self._last_end
            if context is None:  # too little new speech since the run's last check: same speaker
                speaker = self._run_speaker
            else:
                # speech in the whole context counts: after a turn's first word the same voice usually goes on
                window = found[context[0]]
                speaker = self._assign(window.embedding, window.speech >= o.min_context, words[b - 1].end - words[a].start)
                self._checked_until = words[b - 1].end
            self._run_speaker = speaker
            self._last_end = words[b - 1].end
            labels.extend([self.first_label + speaker] * (b - a))
        self._labelled_until = max(self._labelled_until, end)
        return labels

    def _candidates(self, audio: tuple[list, float, float], k: int) -> list[tuple[tuple[int, int], float, float]]:
        """Contexts ending at grid point `k`: the last `context` seconds, and from each point where speech
        resumed after a pause of at least `pause` inside them (`QUIET_DB` below the loudest, or `TURN_DB` for a
        noisy recording): a run's start, seen in the audio. The same audio gives the same contexts, whether embedded ahead or at a final."""
        o = self.options
        chunks, origin, first = audio
        hi = k * o.grid
        lo = max(hi - o.context, first)
        starts = [lo]
        scan = max(lo - o.pause, first)
        clip = _clip(chunks, origin, scan, hi)
        need = round(o.pause * SAMPLE_RATE / FRAME)
        for quiet_db in (QUIET_DB, TURN_DB):
            frames = voiced(clip, quiet_db)
            if len(frames) > need:
                silent = np.concatenate([[0], np.cumsum(~frames)])
                i = np.arange(need, len(frames))
                resumed = i[frames[need:] & (silent[i] - silent[i - need] == need)]
                starts += [scan + j * FRAME / SAMPLE_RATE for j in resumed]
        starts = sorted({s for s in starts if lo <= s <= hi - 0.2})
        return [((k, round((s - origin) * SAMPLE_RATE)), s, hi) for s in starts]

    def _context(self, audio: tuple[list, float, float], hi: float, run_start: float, after: float) -> tuple:
        """The context of a piece that wants audio up to `hi`: the last grid point at or before it (never later:
        past `hi` lies the next turn, or audio not arrived), and the longest of its contexts that starts where
        speech resumed up to `slack` before the run's first word (word times are approximate). Not earlier: the
        audio before a run's first word may hold words the ASR left out, of the speaker before. Where the audio
        shows no such start (breath or room noise in the pause the words show), the shortest that still starts
        after the last word of the run before (`after`): prepared ahead, so the final does not wait for it (4 in
        10 of those finals on dev streams 1-12, no label score changed). Else the run's own last `context`
        seconds, embedded at the final."""
        o = self.options
        k = self._last_point(hi)
        if k * o.grid <= run_start:
            return self._own_context(audio, hi, run_start)
        candidates = self._candidates(audio, k)
        inside = [c for c in candidates if c[1] >= max(run_start - o.slack, after)]
        if inside:
            return inside[0]
        between = [c for c in candidates if c[1] >= after]
        return between[-1] if between else self._own_context(audio, hi, run_start)

    def _own_context(self, audio: tuple[list, float, float], hi: float, run_start: float) -> tuple:
        """The run's last `context` seconds up to `hi` (not on the grid: embedded when a final needs it)."""
        o = self.options
        lo = max(run_start, audio[2], hi - o.context)
        return ((-1, round((lo - audio[1]) * SAMPLE_RATE), round((hi - audio[1]) * SAMPLE_RATE)), lo, max(hi, lo + 0.01))

    def _audio(self) -> tuple[list[tuple[int, np.ndarray]], float, float]:
        """The audio as it stands (the chunks are never changed, the deque may be): chunks, origin, first time."""
        with self._lock:
            chunks, origin = list(self._chunks), self._origin
        return chunks, origin, origin + chunks[0][0] / SAMPLE_RATE if chunks else self.audio_end

    def _limit(self) -> float:
        return min(self.audio_end, self._labelled_until + self.options.history)

    def _last_point(self, t: float) -> int:
        return math.floor(t / self.options.grid + 1e-9)

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
        sims = [-1.0 if sp.retired else float(embedding @ sp.centroid) for sp in self.speakers]
        run = self._run_speaker
        if not reliable:  # too little speech to tell: the run's speaker, else the nearest one (or a first one)
            if run is not None:
                return run
            return int(np.argmax(sims)) if sims else self._new(embedding, 0.0)
        if run is not None and (self.speakers[run].seconds == 0 or sims[run] >= o.threshold):
            best = run  # a run keeps its speaker while it matches (a speaker started on too little speech: at once)
            if self.speakers[run].seconds < o.confirm:
                # a young speaker whose run now matches a known one: its first context was unlike the voice
                known = [i for i, sp in enumerate(self.speakers) if i != run and not sp.retired and sp.seconds >= o.confirm]
                j = max(known, key=sims.__getitem__, default=None)
                if j is not None and sims[j] >= max(o.threshold, sims[run]):
                    self.speakers[run].retired = True
                    best = j
        elif sims and (max(sims) >= o.threshold or len(sims) >= o.max_speakers):
            best = int(np.argmax(sims))
        elif run is not None and self._run_born:
            best = run  # one new voice per run: a second would be the young one's speech coming out unlike its first context
        else:
            self._run_born = run is not None
            return self._new(embedding, seconds)
        sp = self.speakers[best]
        sp.total = (sp.total if sp.seconds else 0) + embedding * seconds
        sp.seconds += seconds
        return best

    def _new(self, embedding: np.ndarray, seconds: float) -> int:
        self.speakers.append(_Speaker(embedding * max(seconds, 1e-3), seconds))
        return len(self.speakers) - 1


def _speech(audio: np.ndarray) -> float:
    """Seconds of speech in a piece (its pauses left out)."""
    return float(voiced(audio).sum()) * FRAME / SAMPLE_RATE


def _clip(chunks: Sequence[tuple[int, np.ndarray]], origin: float, lo: float, hi: float) -> np.ndarray:
    """Stream time [lo, hi) from audio kept as (first sample, samples) chunks whose sample 0 is at `origin`."""
    i = max(int((lo - origin) * SAMPLE_RATE), 0)
    j = max(math.ceil((hi - origin) * SAMPLE_RATE), i)
    parts = [audio[max(i - s, 0) : j - s] for s, audio in chunks if s < j and s + len(audio) > i]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)

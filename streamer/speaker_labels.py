"""Speaker labels on a session's finals (issue 17): the session's options, the daemon's speaker stage, and
each session's labeller.

Nothing here imports torch. The encoder (streamer/ge2e.py) is imported and loaded on the stage's worker thread,
once per process, when the first session that asks for labels opens: a daemon whose sessions never ask loads
nothing. Every embedding is computed on the stage's threads, never on the event loop or the decode thread, with
one torch thread, as the session's audio arrives (`OnlineDiarizer.prepare`, on the worker). A final carries its
labels, so it waits for them: a lookup among the embeddings made ahead, on the event loop (well under a
millisecond); only when its context is not embedded yet (an upload's first final, a worker that lags) does it
wait for one embedding, made on a thread of its own (`held`), not queued behind every session's embeddings of
new audio on the worker.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from core.types import SAMPLE_RATE
from streamer.config import SpeakerOptions
from streamer.errors import StreamError
from streamer.protocol import Final, Start
from streamer.speakers import DiarizerOptions, OnlineDiarizer, Timed, resemblyzer_weights

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10  # the worker's CPU priority below the decode threads'


def diarizer_options(defaults: SpeakerOptions, start: Start | None = None) -> DiarizerOptions | None:
    """A session's speaker options: its start's, else `[speakers]`; None when it labels no speakers."""
    diarize, max_speakers, threshold = (start.diarize, start.max_speakers, start.speaker_threshold) if start else (None, None, None)
    if not (defaults.diarize if diarize is None else diarize):
        return None
    return DiarizerOptions(
        max_speakers=max_speakers or defaults.max_speakers,
        threshold=defaults.threshold if threshold is None else threshold,
    )


def labelled(final: Final, speakers: Sequence[int]) -> Final:
    """The final with a speaker on each word; its own `speaker` is the first word's, `speaker_change` marks a
    final whose words change speaker inside (finals are not split: their numbering is the processor's)."""
    if not speakers:
        return final
    words = [replace(w, speaker=s) for w, s in zip(final.words, speakers)]
    return replace(final, words=words, speaker=speakers[0], speaker_change=any(s != speakers[0] for s in speakers))


def _judged(final: Final) -> Sequence[Timed]:
    """The words the labeller judges: with Whisper's own times where the final has them. Its rules (runs cut at
    0.3 s pauses, rechecks, contexts) were chosen on those times; on the fitted ones every comma pause starts a
    run, and a session's first voice, still young, split in two on the LJSpeech/JFK test stream (5 runs in 20)."""
    return final.aligned or final.words


def _one_torch_thread() -> None:
    """The stage's torch runs on one intra-op thread (per thread with OpenMP: the LLM's setting is untouched);
    with two, one embedding costs 4-6x the CPU on a 2-core machine."""
    import torch

    torch.set_num_threads(1)


def _background_thread() -> None:
    """The worker: one torch thread, and on Linux a lower CPU priority (nice +10) for this thread alone, so the
    embeddings made ahead take the cores between decodes instead of slowing them (it needs a few percent of a
    core; if it falls behind, a final's context is made on the held thread, at normal priority)."""
    _one_torch_thread()
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


class SpeakerStage:
    """The process's speaker stage: the shared encoder (loaded on first use, on the worker), the worker thread
    that embeds every session's audio as it comes, the thread that labels finals held for an embedding, and the
    diarizers of ended connections, so that a resumed session keeps its speakers (the last `KEEP` sessions;
    their audio is dropped)."""

    KEEP = 256
    dim = 256

    def __init__(self) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._encoder = None
        self._loading = threading.Lock()
        self._kept: collections.OrderedDict[str, OnlineDiarizer] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the encoder has been loaded (never, in a daemon whose sessions do not label speakers)."""
        return self._encoder is not None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The worker: every session's embeddings of new audio, one job at a time."""
        return self._thread("speakers", _background_thread)

    @property
    def held(self) -> ThreadPoolExecutor:
        """Finals held for an embedding: a thread of their own, at normal priority, so one waits for its own
        embedding only (the encoder takes passes from both threads at once: no lock to wait on behind the
        worker, which runs at a lower priority)."""
        return self._thread("speakers-held", _one_torch_thread)

    def _thread(self, name: str, initializer: Callable[[], None]) -> ThreadPoolExecutor:
        with self._lock:
            if name not in self._executors:
                self._executors[name] = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=initializer)
            return self._executors[name]

    def embed(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        """The `SpeakerEncoder` of every session's diarizer; runs on the stage's two threads only."""
        return self._model().embed(pieces)

    def _model(self):
        with self._loading:  # the worker and the held thread: loaded once
            if self._encoder is None:
                from streamer.ge2e import Ge2eEncoder

                started = time.perf_counter()
                self._encoder = Ge2eEncoder()
                log.info("speaker encoder loaded (Resemblyzer GE2E) in %.1f s", time.perf_counter() - started)
        return self._encoder

    def open(self, session_id: str | None, options: DiarizerOptions, start_time: float, previous: Sequence[Final] = ()) -> "SessionSpeakers":
        """A session's labeller. A resumed session goes on with its diarizer where this process still has it;
        otherwise (a restarted daemon) its new speakers are numbered after the labels in `previous`.
        Raises StreamError(bad_speakers) where the encoder's weights are not installed."""
        try:
            resemblyzer_weights()
        except RuntimeError as exc:
            raise StreamError("bad_speakers", f"this server cannot label speakers: {exc}", fatal=True) from None
        with self._lock:
            diarizer = self._kept.pop(session_id, None) if session_id else None
        if diarizer is None:
            first = 1 + max((w.speaker for f in previous for w in f.words if w.speaker is not None), default=-1)
            diarizer = OnlineDiarizer(self, options, start_time, first_label=first)
        else:
            diarizer.options = options
            diarizer.restart_audio(start_time)
        if not self.loaded:
            self.executor.submit(self._model)  # loads while the session starts, ahead of its first final
        return SessionSpeakers(self, session_id, diarizer)

    def keep(self, session_id: str | None, diarizer: OnlineDiarizer) -> None:
        """An ended connection's diarizer, without its audio, for the session's resume."""
        if not session_id:
            return
        diarizer.restart_audio(diarizer.audio_end)
        with self._lock:
            self._kept[session_id] = diarizer
            while len(self._kept) > self.KEEP:
                self._kept.popitem(last=False)


STAGE = SpeakerStage()  # one per process: the daemon's sessions, or an in-process command, share the encoder


@dataclass
class LabelStats:
    """What labelling cost one session: worker CPU, how long each final waited for its labels, and how many
    finals waited for the worker (a context not embedded ahead)."""

    audio_seconds: float = 0.0
    cpu_seconds: float = 0.0
    waits: list[float] = field(default_factory=list)
    held: int = 0

    def summary(self) -> str:
        waits = sorted(self.waits) or [0.0]
        per_second = self.cpu_seconds / self.audio_seconds if self.audio_seconds else 0.0
        return (f"{len(self.waits)} finals labelled, CPU {self.cpu_seconds:.3f} s ({per_second:.4f} s per audio s), "
                f"wait per final p50 {1000 * waits[len(waits) // 2]:.2f} ms, p90 {1000 * waits[int(len(waits) * 0.9)]:.2f} ms, "
                f"max {1000 * waits[-1]:.1f} ms, {self.held} held for an embedding")


class SessionSpeakers:
    """One session's labeller: `accept` every chunk its processor gets (on the event loop; the worker embeds
    it ahead), `label` each final (a lookup), `close` when the connection ends."""

    def __init__(self, stage: SpeakerStage, session_id: str | None, diarizer: OnlineDiarizer):
        self.stage = stage
        self.session_id = session_id
        self.diarizer = diarizer
        self.stats = LabelStats()
        self._preparing = False  # an embedding of new audio is queued or running on the worker

    def accept(self, audio: np.ndarray) -> None:
        self.diarizer.accept(audio)
        self.stats.audio_seconds += len(audio) / SAMPLE_RATE
        self._prepare_ahead()

    def _prepare_ahead(self) -> None:
        """Queue the embedding of the audio that has come; one at a time (a queued one takes all that came)."""
        if not self._preparing and self.diarizer.unprepared:
            self._preparing = True
            self.stage.executor.submit(self._prepare)

    def _prepare(self) -> None:
        started = time.thread_time()
        try:
            self.diarizer.prepare()
        except Exception:
            log.exception("session %s: speaker embeddings failed", self.session_id)
        finally:
            self.stats.cpu_seconds += time.thread_time() - started
            self._preparing = False

    async def label(self, final: Final, until: float) -> Final:
        """The final with its speakers (`until`: the stream time the session's audio had reached when it was
        committed): a lookup here, or on the worker where a context was not embedded yet. A failure of the
        speaker stage is logged and the final goes on without labels."""
        if not final.words:
            return final
        started = time.perf_counter()
        try:
            speakers = self.diarizer.label(_judged(final), until, compute=False)
            if speakers is None:
                self.stats.held += 1
                speakers, cpu = await asyncio.get_running_loop().run_in_executor(self.stage.held, self._label, _judged(final), until)
                self.stats.cpu_seconds += cpu
        except Exception:
            log.exception("session %s: speaker labels failed; final %d goes without them", self.session_id, final.segment)
            return final
        self.stats.waits.append(time.perf_counter() - started)
        self._prepare_ahead()  # an upload's audio came at once: embed the next part while the decoder goes on
        return labelled(final, speakers)

    def label_now(self, final: Final, until: float) -> Final:
        """`label` for an in-process command (no event loop of its own to keep free): on the worker, waited for."""
        if not final.words:
            return final
        speakers, cpu = self.stage.executor.submit(self._label, _judged(final), until, True).result()
        self.stats.cpu_seconds += cpu
        return labelled(final, speakers)

    def _label(self, words: Sequence[Timed], until: float, ahead: bool = False) -> tuple[list[int], float]:
        started = time.thread_time()
        if ahead:
            self.diarizer.prepare()
        speakers = self.diarizer.label(words, until)
        return speakers, time.thread_time() - started

    def close(self) -> None:
        if self.stats.waits:
            log.info("session %s: speakers: %s", self.session_id, self.stats.summary())
        self.stage.keep(self.session_id, self.diarizer)


def open_speakers(session_id: str | None, start: Start | None, defaults: SpeakerOptions, start_time: float = 0.0,
                  previous: Sequence[Final] = ()) -> SessionSpeakers | None:
    """The session's labeller (`start` None: an in-process command's, from `[speakers]` alone), or None when it
    labels no speakers (then nothing is loaded)."""
    options = diarizer_options(defaults, start)
    return None if options is None else STAGE.open(session_id, options, start_time, previous)

"""Streaming processor: a session's audio buffer, when to decode, and what becomes partial or final.

Knows nothing of models or sockets: it hands out WindowRequests and takes back Hypotheses, so the
same object runs under the daemon's scheduler and in-process (`uadf-stream transcribe`, eval).

Decisions are made at decision points in stream time (the end of each inserted frame), not at the
wall-clock moment they are evaluated: a daemon whose decoder was busy while frames arrived replays
the points it missed, so it decodes the same windows as the in-process pipeline (the drive loop).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Sequence

import numpy as np

from core.types import SAMPLE_RATE, Hypothesis, MeetingContext, Mode, SpanVerdicts, WindowRequest, Word
from streamer.audio import SampleBuffer
from streamer.commit import make_policy, strip_committed
from streamer.config import FusedWindows, StreamingOptions
from streamer.keyterm_prompt import KeytermSelector
from streamer.protocol import Final, Partial
from streamer.vad import StreamingVad
from streamer.word_times import AROUND, fit_to_speech

log = logging.getLogger(__name__)

PRE_ROLL = 0.4  # seconds kept before detected speech, so onsets are not clipped
FINAL_TAIL = 0.3  # seconds kept after the last speech frame in an endpoint window
MIN_SPEECH = 0.1  # seconds of VAD speech before a window is worth decoding
IGNORED_SPEECH = 1.0  # seconds of speech after the committed words that a hypothesis may not skip


@dataclass
class StepStats:
    """What a stream's decodes did, for eval and logs."""

    decodes: int = 0
    rejected: int = 0  # hypotheses dropped by the hallucination gate
    context_drops: int = 0  # committed context dropped because Whisper skipped new speech after it
    llm_calls: int = 0
    tokens: int = 0
    fused_tokens: int = 0  # tokens the LLM chose over the ASR


def join_words(words: list[Word]) -> str:
    """Whisper's words carry their leading space ("181", ".8"): join them as spoken text."""
    return "".join(w.word for w in words).strip()


class StreamingProcessor:
    """A commit policy over a sliding buffer, with VAD endpointing and the hallucination gate."""

    def __init__(
        self,
        options: StreamingOptions,
        mode: Mode = Mode.ASR,
        decoder_context: Any = None,
        start_time: float = 0.0,
        first_segment: int = 0,
        history: str = "",
        meeting: MeetingContext = MeetingContext(),
    ):
        """decoder_context: the mode's per-stream decoder state (fusion: the LLM context), told every
        committed final. start_time, first_segment and history (committed text) continue a resumed
        session's stream; `meeting`'s keyterms spelled close to words heard go with each window (the backend respells
        look-alikes of them, or puts them in Whisper's prompt)."""
        self.options = options
        self.mode = mode
        self.decoder_context = decoder_context
        self.vad = StreamingVad(options.vad_threshold, options.vad_neg_threshold, start_time)
        self.policy = make_policy(options)
        self.buffer = SampleBuffer()
        self.buffer_start = start_time  # stream time of buffer[0]
        self.committed_in_buffer: list[Word] = []
        self.context_words: list[str] = history.split()[-options.prompt_words :]  # committed, out of the buffer
        self.meeting = meeting
        self._keyterms = self._keyterm_selector()
        self._window_keyterms: tuple[str, ...] = ()  # the keyterms the next window may spell (keyterm_prompt)
        self._verdicts = SpanVerdicts()
        self.uncommitted: list[Word] = []
        self.segment = first_segment
        self.last_decode_end = start_time
        self.flushed_until = start_time  # end of the last endpoint window: speech before it is handled
        self.finalize_requested = False
        self._finalize_at = 0  # the sample count when it was requested: earlier decision points decode as usual
        self.utterance_open = False  # finals were sent since the last endpoint
        self.partial_key: tuple[int, str] = (first_segment, "")
        self.stats = StepStats()
        self.samples_in = 0  # samples inserted since the stream (or its resume) started
        self._points: deque[int] = deque(maxlen=4096)  # decision points not taken yet, as samples_in values
        self._clock = 0  # the decision point in effect (samples_in at that point)

    # -- intake --------------------------------------------------------------------------------
    @property
    def stream_time(self) -> float:
        """Stream time of the end of the audio received."""
        return self.buffer_start + len(self.buffer) / SAMPLE_RATE

    @property
    def clock(self) -> float:
        """Stream time of the decision point in effect (the end of the audio received by then)."""
        return self.buffer_start + (len(self.buffer) - (self.samples_in - self._clock)) / SAMPLE_RATE

    def insert_audio(self, audio: np.ndarray) -> None:
        self.buffer.append(audio)
        self.vad.accept(audio)
        self.samples_in += len(audio)
        self._points.append(self.samples_in)

    def decision_points(self, max_lag: float) -> list[tuple[int, bool]]:
        """The decision points not taken yet, oldest first, each with whether a running window may be decided
        there: only at the newest when the oldest lags it by more than `max_lag` seconds (a decoder that cannot
        keep up skips stale running windows). Every point may still end an utterance, so endpoint windows close
        at the pause they follow: taken only at the newest point, a lagging decoder missed short pauses and ran
        utterances together (dev-concat with decisions 0.8 s apart: WER 10.8 -> 13.2%, "the company said" lost).
        A finalize with no new audio decides at the end of what was received."""
        points = list(self._points)
        self._points.clear()
        if not points and self.finalize_requested:
            points = [self.samples_in]
        lagging = bool(points) and points[-1] - points[0] > max_lag * SAMPLE_RATE
        return [(point, not lagging or point == points[-1]) for point in points]

    def set_meeting(self, meeting: MeetingContext) -> None:
        """Replace the session's keyterms and notes (a mid-stream `context` message)."""
        self.meeting = meeting
        self._keyterms = self._keyterm_selector()
        self._window_keyterms = ()
        self._verdicts = SpanVerdicts()
        if self.decoder_context is not None:
            self.decoder_context.set_meeting(meeting)

    def _keyterm_selector(self) -> KeytermSelector:
        return KeytermSelector(self.meeting.keyterms, self.options.keyterm_similarity, self.options.keyterm_terms)

    def _keyterms_heard(self, before: tuple[str, ...], words: Sequence[str]) -> tuple[str, ...]:
        """The keyterms a window's `words` may spell, selected as for the prompt: over the committed words before
        the window (`before`) and the window's own, so the first window of a stream (a file sent at once: its
        only one) has them too (selected from the previous hypothesis, it had none)."""
        return self._keyterms.select([*before, *words])

    def request_finalize(self) -> None:
        """Commit everything received so far (a client `finalize`, `stop`, or end of file), at the first decision
        point that holds all of it: a daemon still replaying earlier points decodes those as usual first (a
        finalize taken at the oldest pending point would close the utterance there and leave the audio after
        it pending)."""
        self.finalize_requested = True
        self._finalize_at = self.samples_in

    # -- scheduling ----------------------------------------------------------------------------
    def _committed_end(self) -> float:
        return self.committed_in_buffer[-1].end if self.committed_in_buffer else self.buffer_start

    def next_request(self, at: int | None = None, running: bool = True) -> WindowRequest | None:
        """The window due at decision point `at` (default: the end of the audio received), or None; only an
        endpoint window unless `running`."""
        self._clock = self.samples_in if at is None else at
        now = self.vad.time_at(self._clock)  # the end of the VAD frames complete at that point
        finalizing = self.finalize_requested and self._at_finalize_point
        pending_from = max(self._committed_end(), self.flushed_until)
        speech_start = self.vad.first_speech_start(pending_from, now)
        if speech_start is None or self.vad.speech_seconds(pending_from, now) < MIN_SPEECH:
            if finalizing and self.uncommitted:
                return self._request(now, final=True)
            if finalizing:
                self.finalize_requested = False
            if not self.uncommitted:
                self._drop_silence(now)
            return None
        speech_end = self.vad.last_speech_end(pending_from, now) or now
        too_long = now - self.buffer_start >= self.options.max_window * 1.5
        if finalizing or too_long or now - speech_end >= self.options.endpoint_silence:
            return self._request(now if too_long else min(now, speech_end + FINAL_TAIL), final=True)
        if running and now - self.last_decode_end >= self.options.step and now - speech_start >= self.options.min_window:
            return self._request(now, final=False, commit=self._may_commit(now, speech_start))
        return None

    def _may_commit(self, now: float, speech_start: float) -> bool:
        """Whether the running window ending at `now` may commit words: the policy's call, once the utterance
        has `commit_after` seconds of audio (Whisper guesses an utterance's first words badly from a short
        window: "It's out up" for "It set up" with 2 s of audio after the words; the whole utterance fixes it)."""
        utterance_start = self.vad.first_speech_start(self.flushed_until, now)
        if utterance_start is not None and now - utterance_start < self.options.commit_after:
            return False
        return self.policy.commit_window(now, speech_start)

    def _drop_silence(self, now: float) -> None:
        """Nothing pending and no new speech: keep the committed words' audio as context, within
        max_window, and a short pre-roll; drop the silence before it once the buffer grows long."""
        if self.committed_in_buffer and now - self.buffer_start <= self.options.max_window:
            return
        self._retire_committed()
        self._trim_to(max(now - PRE_ROLL, self.buffer_start))

    def _request(self, end: float, final: bool, commit: bool = False) -> WindowRequest:
        n = max(int(round((end - self.buffer_start) * SAMPLE_RATE)), 0)
        self.last_decode_end = end
        prompt = " ".join(self.context_words[-self.options.prompt_words :])
        # The endpoint window, which decides the utterance's words not yet final over all of its audio, is
        # decoded in the session's mode (fused in the fusion modes); running windows are plain ASR. Fusing the
        # running windows that commit words lost to plain ASR (speech-dev-noisy, speech-long, speech-meeting:
        # 126 errors against 121; fusing only the endpoint window: 111; see README, Fusion). Calibration observes
        # the committing windows too (fused_windows = committing): the same kind of uncertain steps, ten times more.
        fused = final or (commit and self.options.fused_windows is FusedWindows.COMMITTING)
        mode = self.mode if fused else Mode.ASR
        return WindowRequest(
            audio=self.buffer.head(n),
            offset=self.buffer_start,
            end=end,
            prompt=prompt,
            keyterms=self._window_keyterms,
            keyterms_for=partial(self._keyterms_heard, tuple(self.context_words)) if self.meeting.keyterms else None,
            mode=mode,
            context=self.decoder_context if mode.fused else None,
            prefix=join_words(self.committed_in_buffer) if mode.fused or self.options.force_committed else "",
            final=final,
            commits=final or commit,
            settled=self._committed_end(),
            verdicts=self._verdicts,
        )

    # -- results -------------------------------------------------------------------------------
    def accept_hypothesis(self, hyp: Hypothesis, request: WindowRequest) -> list[Partial | Final]:
        """Apply a decoded window; return the messages it produces, finals first."""
        self.stats.decodes += 1
        self.stats.llm_calls += hyp.llm_calls
        self.stats.tokens += hyp.tokens
        self.stats.fused_tokens += hyp.fused_tokens
        words = hyp.words
        rejected = self._rejected(hyp)
        if words and log.isEnabledFor(logging.DEBUG):  # its arguments cost a join per hypothesis
            log.debug(
                "window %.2f-%.2f %s final=%s: %r no_speech=%.2f logprob=%.2f word_p=%s rejected=%s", request.offset,
                request.end, request.mode, request.final, join_words(words), hyp.no_speech_prob, hyp.avg_logprob,
                [round(w.probability, 2) for w in words], rejected,
            )
        if rejected:
            self.stats.rejected += 1
            words = []
        if self.meeting.keyterms and words:
            heard = self.context_words + [w.word for w in self.committed_in_buffer + words]  # context_words: the prompt's
            self._window_keyterms = self._keyterms.select(heard)
        new = strip_committed(words, self.committed_in_buffer, self._committed_end())
        if not new and self.committed_in_buffer and self._speech_ignored(request):
            # Whisper sometimes transcribes the committed context and stops, skipping the new
            # speech after a pause: drop the context, so the next window holds the new speech only.
            self.stats.context_drops += 1
            cut = min(max(self._committed_end(), self.flushed_until), request.end)
            self._retire_committed()
            self._trim_to(cut)
            self.last_decode_end = self.buffer_start
            return []
        events: list[Partial | Final] = []
        if request.final:
            self._finalize_done()
            self.flushed_until = request.end
            if new:
                events.append(self._commit(new, endpoint=True, at=request.end))
            elif self.utterance_open:  # its words are all final already: close it with an empty final
                events.append(self._commit([], endpoint=True, at=request.end))
            self.policy.reset()
            self.uncommitted = []
        else:
            done = self.policy.update(new, request.end) if request.commits else []
            if done:
                events.append(self._commit(done, endpoint=False, at=request.end))
            self.uncommitted = new[len(done) :]
        self._maybe_trim()
        partial = join_words(self.uncommitted)
        if (self.segment, partial) != self.partial_key:
            self.partial_key = (self.segment, partial)
            start = self.uncommitted[0].start if self.uncommitted else self.clock
            end = self.uncommitted[-1].end if self.uncommitted else self.clock
            events.append(Partial(segment=self.segment, text=partial, start=start, end=end))
        return events

    @property
    def _at_finalize_point(self) -> bool:
        """The decision point being decided holds all the audio a pending finalize covers."""
        return self._clock >= self._finalize_at

    def _finalize_done(self) -> None:
        """An endpoint window was decoded: a pending finalize is done if the window holds the audio it covers."""
        if self._at_finalize_point:
            self.finalize_requested = False

    def _speech_ignored(self, request: WindowRequest) -> bool:
        since = max(self._committed_end(), self.flushed_until)
        return self.vad.speech_seconds(since, request.end) >= IGNORED_SPEECH

    def discard(self, request: WindowRequest) -> None:
        """A window whose decode failed: forget it (an endpoint window counts as flushed)."""
        if request.final:
            self._finalize_done()
            self.flushed_until = request.end

    def _rejected(self, hyp: Hypothesis) -> bool:
        """The one hallucination gate: silence-like, a guess nearly nobody would make, or a decoder stuck
        repeating itself."""
        o = self.options
        if hyp.compression_ratio > o.compression_ratio_threshold:
            return True
        mean_p = sum(w.probability for w in hyp.words) / len(hyp.words) if hyp.words else 1.0
        # A lone "You" on a tone scores word probabilities of 0.03-0.15 (no_speech_prob 0.74-0.90 where logged; one
        # CI run let one through the rule below); on speech (speech-dev-noisy, -hard, the call) no endpoint
        # window's mean was below 0.25.
        if mean_p < o.min_word_probability:
            return True
        if hyp.no_speech_prob <= o.no_speech_threshold:
            return False
        # Whisper's own rule, and a short unsure guess where Whisper itself hears no speech: a one-word
        # "you" on a tone scores a fair log-prob (-0.2 to -0.5) only because it is short.
        return hyp.avg_logprob < o.logprob_threshold or mean_p < o.unsure_word_probability

    def _commit(self, words: list[Word], endpoint: bool, at: float) -> Final:
        """A final of `words`, decided by the window that ends at `at`: their times fitted to the speech in the
        buffer up to there (the same audio live or uploaded); the processor keeps Whisper's own times, and so does
        the final, in `aligned`."""
        aligned = shown = [replace(w, word=w.word.strip()) for w in words]
        if shown:
            first = int((shown[0].start - AROUND - self.buffer_start) * SAMPLE_RATE)
            last = int((min(shown[-1].end + AROUND, at) - self.buffer_start) * SAMPLE_RATE)
            origin = self.buffer_start + max(first, 0) / SAMPLE_RATE
            shown = fit_to_speech(shown, self.buffer.samples(first, last), origin)
        final = Final(
            segment=self.segment,
            text=join_words(words),
            start=shown[0].start if shown else at,
            end=shown[-1].end if shown else at,
            endpoint=endpoint,
            words=shown,
            aligned=aligned,
        )
        self.segment += 1
        self.utterance_open = not endpoint
        self.committed_in_buffer.extend(words)
        if self.decoder_context is not None and words:
            self.decoder_context.commit(final.text)
        return final

    def _maybe_trim(self) -> None:
        """Keep decode cost bounded: once the buffer is long, cut it after the last committed word."""
        if self.clock - self.buffer_start <= self.options.max_window or not self.committed_in_buffer:
            return
        cut = self.committed_in_buffer[-1].end
        if self.uncommitted:
            cut = min(max(cut, (cut + self.uncommitted[0].start) / 2), self.uncommitted[0].start)
        self._retire_committed()
        self._trim_to(cut)

    def _retire_committed(self) -> None:
        """Committed words leave the window: from now on they reach Whisper as the prompt."""
        self.context_words = (self.context_words + join_words(self.committed_in_buffer).split())[-self.options.prompt_words :]
        self.committed_in_buffer = []

    def _trim_to(self, t: float) -> None:
        drop = min(int(round((t - self.buffer_start) * SAMPLE_RATE)), len(self.buffer))
        if drop <= 0:
            return
        self.buffer.drop_front(drop)
        self.buffer_start += drop / SAMPLE_RATE
        self.vad.forget_before(self.buffer_start)

"""Commit policies: which words of a running window become final. Pure logic, no model, no I/O.

A policy says which running (non-final) windows may commit words (those are decoded in the session's
mode, fused in the fusion modes; the others are plain ASR partials), and from such a window's words not
committed yet returns the leading ones that are final now. An endpoint window (a pause, `finalize`, a
full buffer) commits everything in every policy. Policies are chosen by `streaming.commit` (POLICIES).
"""

from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence

from core.types import Word

_PUNCT = re.compile(r"[^\w']+")
MAX_NGRAM = 5  # committed words looked for when a hypothesis rewrites the committed part
NEAR = 1.0  # seconds: how far word timings may drift between hypotheses


def normalize(word: str) -> str:
    """Key for comparing words across hypotheses: case and punctuation do not count."""
    return _PUNCT.sub("", word.lower())


def starts_word(words: Sequence[Word], i: int) -> bool:
    """Whether a commit may end before words[i]: not inside a written word such as "181" ".8"."""
    return i >= len(words) or words[i].word.startswith(" ")


def common_prefix(a: Sequence[Word], b: Sequence[Word]) -> int:
    """Number of leading words on which two hypotheses agree."""
    n = 0
    for x, y in zip(a, b):
        if normalize(x.word) != normalize(y.word):
            break
        n += 1
    return n


def past_committed(start: float, end: float, committed_end: float) -> bool:
    """A word lying mostly after `committed_end` (its midpoint, with 0.1 s of timing slack): not committed yet."""
    return (start + end) / 2 >= committed_end - 0.1


def strip_committed(hypothesis: Sequence[Word], committed: Sequence[Word], committed_end: float) -> list[Word]:
    """The part of a window's hypothesis that is not committed yet.

    The window still holds the audio of `committed` (words final since the buffer was last trimmed).
    When the hypothesis repeats them word for word they are cut by count. When it has changed its
    mind about them, the last committed words are looked for near `committed_end` (longest run
    first, as whisper_streaming's n-gram check does) and the hypothesis is cut after them, less any word
    that lies mostly inside the committed audio (a one-word match on "the" can sit a word early: "the suit
    to the" committed, then "the suit's image" re-decoded over the same audio); failing that, by time.
    """
    if not committed:
        return list(hypothesis)
    if common_prefix(hypothesis, committed) == len(committed):
        return list(hypothesis[len(committed) :])
    keys = [normalize(w.word) for w in hypothesis]
    tail = [normalize(w.word) for w in committed[-MAX_NGRAM:]]
    for k in range(len(tail), 0, -1):
        for j in range(len(hypothesis), k - 1, -1):
            if keys[j - k : j] == tail[-k:] and abs(hypothesis[j - 1].end - committed_end) <= NEAR:
                return [w for w in hypothesis[j:] if past_committed(w.start, w.end, committed_end)]
    return [w for w in hypothesis if w.start >= committed_end - 0.1]


class CommitPolicy(Protocol):
    def commit_window(self, now: float, speech_start: float) -> bool:
        """May the running window ending at `now` commit words (so it is decoded in the session's mode)?
        `speech_start`: where the speech not committed yet starts."""

    def update(self, uncommitted: list[Word], window_end: float) -> list[Word]:
        """A committing window's uncommitted words: return the leading ones that are final now."""

    def reset(self) -> None:
        """The utterance ended (an endpoint window committed the rest)."""


def ripe(words: list[Word], until: float, unsure_until: float, confidence: float) -> int:
    """How many leading words end by `until` (a word less sure than `confidence`: by `unsure_until`), without
    cutting a written word ("181" ".8")."""
    n = 0
    while n < len(words) and words[n].end <= (until if words[n].probability >= confidence else unsure_until):
        n += 1
    while n and not starts_word(words, n):
        n -= 1
    return n


class LocalAgreement:
    """`agreement`: a prefix that `n` consecutive hypotheses agree on is final (whisper_streaming's policy),
    once its words end `margin` seconds before the window's end, up to its first word Whisper is less sure of
    than `confidence` (two short windows agree on a confident guess; an unsure one waits for more audio)."""

    def __init__(self, n: int = 2, margin: float = 0.0, confidence: float = 0.0):
        self.n = n
        self.margin = margin
        self.confidence = confidence
        self._history: list[list[Word]] = []

    def update(self, uncommitted: list[Word], window_end: float = float("inf")) -> list[Word]:
        """Add the newest uncommitted hypothesis; return the words that become final now.

        Words near the window's end are often cut short or guessed from too little audio, and two
        guesses can agree by chance: only words ending by window_end - margin may be committed.
        """
        self._history = (self._history + [uncommitted])[-self.n :]
        if len(self._history) < self.n:
            return []
        agreed = min(common_prefix(self._history[-1], h) for h in self._history[:-1])
        agreed = next((i for i, w in enumerate(uncommitted[:agreed]) if w.probability < self.confidence), agreed)
        while agreed and (uncommitted[agreed - 1].end > window_end - self.margin or not starts_word(uncommitted, agreed)):
            agreed -= 1
        self.drop(agreed)
        return uncommitted[:agreed]

    def drop(self, n: int) -> None:
        """n leading words were committed: the hypotheses' remembered tails start after them."""
        self._history = [h[n:] for h in self._history]

    def reset(self) -> None:
        self._history = []

    def commit_window(self, now: float, speech_start: float) -> bool:
        return True


class EndpointOnly:
    """`endpoint`: nothing is final before the utterance's endpoint, where one decode of the whole
    utterance commits it (what fusion was calibrated on)."""

    def commit_window(self, now: float, speech_start: float) -> bool:
        return False

    def update(self, uncommitted: list[Word], window_end: float) -> list[Word]:
        return []

    def reset(self) -> None:
        pass


class Lookahead:
    """`lookahead`: a word is final once a window decoded `delay` seconds past its end holds it, so every
    word is decided with that much right context and waits about that long (plus a step), pause or not.
    A word Whisper gives less probability than `confidence` waits `unsure_delay` instead: more right context
    where a guess is most likely to change."""

    def __init__(self, delay: float, unsure_delay: float = 0.0, confidence: float = 0.0):
        self.delay = delay
        self.unsure_delay = max(unsure_delay, delay)
        self.confidence = confidence

    def commit_window(self, now: float, speech_start: float) -> bool:
        return now - speech_start >= self.delay

    def ripe(self, uncommitted: list[Word], window_end: float) -> int:
        return ripe(uncommitted, window_end - self.delay, window_end - self.unsure_delay, self.confidence)

    def update(self, uncommitted: list[Word], window_end: float) -> list[Word]:
        return uncommitted[: self.ripe(uncommitted, window_end)]

    def reset(self) -> None:
        pass


class PolicyOptions(Protocol):
    """The `[streaming]` options the policies read (streamer.config.StreamingOptions)."""

    commit: str
    commit_margin: float
    commit_confidence: float
    commit_delay: float
    commit_unsure_delay: float


class AgreementOrLookahead(Lookahead):
    """`hybrid`: words two consecutive committing windows agree on are final once they end `margin` before the
    window's end (LocalAgreement-2); any word is final at the latest once `delay` of audio follows it (`unsure_delay`
    for a word less sure than `confidence`, which agreement does not commit either)."""

    def __init__(self, margin: float, delay: float, confidence: float = 0.0, unsure_delay: float = 0.0):
        super().__init__(delay, unsure_delay, confidence)
        self.agreement = LocalAgreement(2, margin, confidence)

    def commit_window(self, now: float, speech_start: float) -> bool:
        return True

    def update(self, uncommitted: list[Word], window_end: float) -> list[Word]:
        agreed = len(self.agreement.update(uncommitted, window_end))
        n = max(agreed, self.ripe(uncommitted, window_end))
        self.agreement.drop(n - agreed)  # the lookahead committed past the agreed prefix
        return uncommitted[:n]

    def reset(self) -> None:
        self.agreement.reset()


POLICIES: dict[str, Callable[[PolicyOptions], CommitPolicy]] = {
    "agreement": lambda o: LocalAgreement(2, o.commit_margin, o.commit_confidence),
    "endpoint": lambda o: EndpointOnly(),
    "lookahead": lambda o: Lookahead(o.commit_delay, o.commit_unsure_delay, o.commit_confidence),
    "hybrid": lambda o: AgreementOrLookahead(o.commit_margin, o.commit_delay, o.commit_confidence, o.commit_unsure_delay),
}


def make_policy(options: PolicyOptions) -> CommitPolicy:
    """The session's policy, the same in every mode (running windows are plain ASR in every mode; fusion
    decides the words left at the utterance's endpoint)."""
    return POLICIES[options.commit](options)

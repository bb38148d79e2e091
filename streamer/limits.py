"""Per-session rate limits: audio seconds, frames and finalizes per second, each with an allowance.

Token buckets that refill at their rate: a client may run ahead of its rate by the bucket's size (network
jitter, a reconnect's backlog) and no further, however long it was idle. Audio: 10 s of audio ahead of
`max_rate` x real time; frames and finalizes: 10 seconds' worth of their rate. The registry keeps a
session's buckets across its resumes: reconnecting does not refill them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from streamer.config import ServerOptions
from streamer.errors import StreamError

ALLOWANCE = 10.0  # seconds of each rate a client may spend ahead


@dataclass
class TokenBucket:
    rate: float  # per second; 0 disables the bucket
    capacity: float
    stamp: float
    level: float = -1.0  # starts full

    def __post_init__(self) -> None:
        if self.level < 0:
            self.level = self.capacity

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Spend `amount` if the bucket holds it (a disabled bucket always does)."""
        if self.rate <= 0:
            return True
        self.refill(now)
        if amount > self.level:
            return False
        self.level -= amount
        return True

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.rate <= 0 or self.level >= self.capacity


class RateLimits:
    """One session's allowances (server.max_rate, max_frames_per_second, max_finalizes_per_second)."""

    def __init__(self, options: ServerOptions, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        now = clock()
        self.buckets = {
            "audio": TokenBucket(options.max_rate, ALLOWANCE, now),
            "frames": TokenBucket(options.max_frames_per_second, options.max_frames_per_second * ALLOWANCE, now),
            "finalizes": TokenBucket(options.max_finalizes_per_second, options.max_finalizes_per_second * ALLOWANCE, now),
        }

    def _take(self, name: str, amount: float, what: str) -> None:
        bucket = self.buckets[name]
        if not bucket.take(amount, self.clock()):
            raise StreamError("rate_limited", f"{what.format(bucket.rate)} (after a {ALLOWANCE:g} s allowance)", fatal=True)

    def audio(self, seconds: float) -> None:
        """Seconds of audio received (its rate: times real time)."""
        self._take("audio", seconds, "audio arrives faster than {:g}x real time")

    def frame(self) -> None:
        """One frame received, audio or text."""
        self._take("frames", 1.0, "more than {:g} frames a second")

    def finalize(self) -> None:
        self._take("finalizes", 1.0, "more than {:g} finalize messages a second")

    def full(self) -> bool:
        """Every allowance refilled: the same as new limits, so the registry may forget these."""
        now = self.clock()
        return all(b.full(now) for b in self.buckets.values())

"""The live sessions of one daemon: admission, resume, take-over, ending, and the shutdown drain.

Transport-agnostic: a connection asks for a session with a `Start` and hands a callback that closes it
when another connection takes the session over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from streamer.config import ServerOptions
from streamer.engine import Engine
from streamer.errors import StreamError
from streamer.metrics import Metrics
from streamer.protocol import End, Final, Start
from streamer.scheduler import DecodeScheduler
from streamer.session import Session
from streamer.store import TranscriptStore

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0  # seconds to wait for a session's last messages to be sent


async def drain(session: Session, timeout: float = DRAIN_TIMEOUT, until: Callable[[], bool] = lambda: False) -> None:
    """Wait until the session's queued messages are sent (or `until()` holds, or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while len(session.outbox) and not until() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


class SessionRegistry:
    def __init__(self, engine: Engine, scheduler: DecodeScheduler, store: TranscriptStore, options: ServerOptions, metrics: Metrics):
        self.engine = engine
        self.scheduler = scheduler
        self.store = store
        self.options = options
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self._closers: dict[str, Callable[[], Awaitable[None]]] = {}  # session id -> closes its connection
        self._background: set[asyncio.Task] = set()
        self.accepting = True

    def __len__(self) -> int:
        return len(self.sessions)

    def _check_room(self) -> None:
        if len(self.sessions) >= self.options.max_sessions:
            raise StreamError("busy", f"all {self.options.max_sessions} sessions are in use; try again later", fatal=True)

    async def open(self, start: Start, close_connection: Callable[[], Awaitable[None]]) -> tuple[Session, list[Final]]:
        """A new session, or the resumed one (taking it over from a connection that still holds it).
        Returns it with the finals its client has not acknowledged (from `resume_from` on)."""
        if not self.accepting:
            raise StreamError("busy", "the daemon is shutting down", fatal=True)
        previous: list[Final] = []
        resume_at = None
        session_id = start.session_id
        if session_id:
            if not self.store.exists(session_id):
                raise StreamError("unknown_session", f"no session {session_id!r} to resume", fatal=True)
            old = self.sessions.get(session_id)
            if old is not None:  # the client reconnected before we noticed it left: the new connection wins
                await self._take_over(old)
            else:
                self._check_room()
            previous = self.store.read(session_id)
            resume_at = self.store.stream_end(session_id)
        else:
            self._check_room()
        session = Session(
            session_id or Session.new_id(), start, self.engine, self.scheduler, self.store, self.options, self.metrics, previous,
            resume_at,
        )
        self.sessions[session.id] = session
        self._closers[session.id] = close_connection
        self.metrics.sessions_total.inc()
        self.metrics.sessions.set(len(self.sessions))
        log.info("session %s %s (%s)", session.id, "resumed" if session_id else "started", session.mode)
        return session, previous[start.resume_from :]

    async def _take_over(self, old: Session) -> None:
        """A resume of a session that is still live: finish the old one (its audio becomes finals on disk)
        and close its connection, so the new connection owns the session."""
        closer = self._closers.get(old.id)
        await self.end(old)
        if closer is not None:
            task = asyncio.create_task(closer())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def end(self, session: Session) -> None:
        """Connection gone (or taken over): pending audio still becomes finals on disk, the transcript file is
        closed and the slot freed. Messages already queued stay in the outbox for the connection to send."""
        try:
            await session.flush()
        finally:
            if self.sessions.get(session.id) is session:
                del self.sessions[session.id]
                self._closers.pop(session.id, None)
            self.metrics.sessions.set(len(self.sessions))
            if not session.closed:
                await session.close()
                log.info("session %s ended: %d finals, %.1f s of audio", session.id, session.finals, session.audio_seconds)

    async def shutdown(self) -> None:
        """Stop accepting; every session's pending audio becomes finals, then `end`, sent within the drain timeout."""
        self.accepting = False
        sessions = list(self.sessions.values())
        for session in sessions:
            session.stopping = True  # audio that still arrives is not taken (its finals could not be sent)
        await asyncio.gather(*(self._finish(s) for s in sessions), return_exceptions=True)

    async def _finish(self, session: Session) -> None:
        await session.flush()
        session.outbox.put(End(session_id=session.id, finals=session.finals, audio_seconds=session.audio_seconds), force=True)
        await drain(session, until=lambda: session.closed)

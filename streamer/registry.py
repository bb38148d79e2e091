"""The live sessions of one daemon: admission, resume, take-over, ending, and the shutdown drain.

Transport-agnostic: a connection asks for a session with a `Start` and hands a callback that closes it
when another connection takes the session over.

With a shared store (Redis, several daemons) exactly one node owns a live session: opening its writer makes
this node the owner (the store's owner key with a lease, renewed while the session lives; every append is
fenced by it). A resume of a session live on another node asks that node, through the store, to let it go:
the old owner flushes it (its pending audio becomes finals in the store) and closes its connection with 1008,
as a take-over on one node does; only then are the finals read and re-sent. Resumes of one session are
served one at a time on a node (the second takes the session over from the first); on two nodes at once,
the second is refused with `resume_conflict`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from streamer.config import ServerOptions
from streamer.engine import Engine
from streamer.errors import StreamError
from streamer.limits import RateLimits
from streamer.metrics import Metrics
from streamer.protocol import End, Final, Start
from streamer.scheduler import DecodeScheduler
from streamer.session import Session, open_transcript
from streamer.store import ResumeConflict, Store, StoreUnavailable, secret_matches

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0  # seconds to wait for a session's last messages to be sent


async def drain(session: Session, timeout: float = DRAIN_TIMEOUT, until: Callable[[], bool] = lambda: False) -> None:
    """Wait until the session's queued messages are sent (or `until()` holds, or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while session.outbox.unsent and not until() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


class SessionRegistry:
    def __init__(self, engine: Engine, scheduler: DecodeScheduler, store: Store, options: ServerOptions, metrics: Metrics):
        self.engine = engine
        self.scheduler = scheduler
        self.store = store
        self.options = options
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self._closers: dict[str, Callable[[], Awaitable[None]]] = {}  # session id -> closes its connection
        self._opening: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # session id -> (its lock, how many hold or wait)
        self._limits: dict[str, RateLimits] = {}  # ended sessions' allowances, until they have refilled
        self._reserved = 0  # slots held by sessions being opened
        self._background: set[asyncio.Task] = set()
        self.accepting = True

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def reserved(self) -> int:
        """Slots held by sessions being opened."""
        return self._reserved

    def _check_room(self) -> None:
        if len(self.sessions) + self._reserved >= self.options.max_sessions:
            raise StreamError("busy", f"all {self.options.max_sessions} sessions are in use; try again later", fatal=True)

    async def open(self, start: Start, close_connection: Callable[[], Awaitable[None]]) -> tuple[Session, list[Final]]:
        """A new session, or the resumed one (taking it over from a connection that still holds it).
        Returns it with the finals its client has not acknowledged (from `resume_from` on).

        Everything about the start is checked before a live session is touched; resumes of one id are
        served one at a time (the second takes the session over from the first)."""
        if not self.accepting:
            raise StreamError("busy", "the daemon is shutting down", fatal=True)
        start.mode = self.engine.check_mode(start.mode)
        session_id = start.session_id
        if not session_id:
            self._check_room()
            session, _ = await self._register(Session.new_id(), start, Session.new_secret(), RateLimits(self.options), close_connection)
            return session, []
        lock, holders = self._opening.setdefault(session_id, (asyncio.Lock(), [0]))
        holders[0] += 1
        try:
            async with lock:
                return await self._resume(session_id, start, close_connection)
        finally:
            holders[0] -= 1
            if not holders[0]:
                del self._opening[session_id]

    async def _resume(self, session_id: str, start: Start, close_connection) -> tuple[Session, list[Final]]:
        try:
            # the same answer for an unknown id and a wrong secret: no oracle for which ids exist
            if not await self.store.exists(session_id) or not secret_matches(start.resume_token, await self.store.secret(session_id)):
                raise StreamError("unknown_session", "no such session to resume (or not its resume_token)", fatal=True)
            async with self.store.resuming(session_id):
                known = len(await self.store.read(session_id))
                if start.resume_from > known:
                    raise StreamError("bad_resume", f"resume_from {start.resume_from} is past the {known} finals of this session", fatal=True)
                old = self.sessions.get(session_id)
                limits = old.limits if old is not None else self._limits.pop(session_id, None) or RateLimits(self.options)
                if old is not None:  # the client reconnected before we noticed it left: the new connection wins
                    await self._take_over(old)
                else:
                    self._check_room()
                session, previous = await self._register(session_id, start, start.resume_token, limits, close_connection, known)
        except ResumeConflict:
            raise StreamError("resume_conflict", "another connection is resuming this session right now", fatal=True) from None
        except StoreUnavailable:
            raise StreamError("storage_unavailable", "the transcript store is unavailable; try again later", fatal=True) from None
        return session, previous[start.resume_from :]

    async def _register(self, session_id, start, secret, limits, close_connection, known: int | None = None) -> tuple[Session, list[Final]]:
        """Open the transcript (its slot reserved meanwhile; with a shared store this node becomes the owner,
        after a live owner elsewhere has flushed) and make the session live, with the finals stored before it.
        `known`: a resume's count of finals when it came (None: a new session)."""
        resumed = known is not None
        self._reserved += 1
        try:
            writer = await open_transcript(self.store, session_id, start, known or 0, None if resumed else secret)
        finally:
            self._reserved -= 1
        try:
            previous = await self.store.read(session_id) if resumed else None
            resume_at = await self.store.stream_end(session_id) if resumed else None
        except BaseException:
            await writer.close()
            raise
        try:
            session = Session(
                session_id, start, self.engine, self.scheduler, writer, self.options, self.metrics, limits, secret, previous or (),
                resume_at,
            )
        except BaseException:
            await writer.close()
            raise
        self.sessions[session.id] = session
        self._closers[session.id] = close_connection
        self.metrics.sessions_total.inc()
        self.metrics.sessions.set(len(self.sessions))
        log.info("session %s %s (%s)", session.id, "resumed" if previous is not None else "started", session.mode)
        return session, previous or []

    async def _take_over(self, old: Session) -> None:
        """A resume of a session that is still live: finish the old one (its audio becomes finals on disk)
        and close its connection, so the new connection owns the session."""
        closer = self._closers.get(old.id)
        await self.end(old)
        if closer is not None:
            task = asyncio.create_task(closer())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def release(self, session_id: str) -> None:
        """The store asks this node to let a live session go (it is being resumed on another node, or this node
        lost its lease): the session is flushed into the store and its connection closed, as in a take-over."""
        session = self.sessions.get(session_id)
        if session is not None:
            log.info("session %s: handed over to another node", session_id)
            await self._take_over(session)

    async def end(self, session: Session) -> None:
        """Connection gone (or taken over): pending audio still becomes finals on disk, the transcript file is
        closed and the slot freed. Messages already queued stay in the outbox for the connection to send."""
        try:
            await session.flush()
        finally:
            ending = not session.closed
            try:
                # closed while still listed: a resume that comes meanwhile takes it over, so waits for the close
                await session.close()
            finally:
                if self.sessions.get(session.id) is session:
                    del self.sessions[session.id]
                    self._closers.pop(session.id, None)
                    self._keep_limits(session)
                self.metrics.sessions.set(len(self.sessions))
            if ending:
                log.info("session %s ended: %d finals, %.1f s of audio", session.id, session.finals, session.audio_seconds)

    def _keep_limits(self, session: Session) -> None:
        """Keep an ended session's allowances for its resumes, until they have refilled (then a resume's new
        ones are the same); forget those that have."""
        for sid in [sid for sid, limits in self._limits.items() if limits.full()]:
            del self._limits[sid]
        if not session.limits.full():
            self._limits[session.id] = session.limits

    async def shutdown(self) -> None:
        """Stop accepting; every session's pending audio becomes finals, then `end`, sent within the drain timeout."""
        self.accepting = False
        sessions = list(self.sessions.values())
        for session in sessions:
            session.stopping = True  # audio that still arrives is not taken (its finals could not be sent)
        await asyncio.gather(*(self._finish(s) for s in sessions), return_exceptions=True)

    async def _finish(self, session: Session) -> None:
        await session.flush()
        if session.failure.done():
            return  # its connection reports the failure
        session.outbox.put(End(session_id=session.id, finals=session.finals, audio_seconds=session.audio_seconds), force=True)
        await drain(session, until=lambda: session.closed)

"""Transcripts in Redis, shared by several daemons: any node reads a session's finals and can resume it, and
exactly one node owns a live session.

Keys of one session share a hash tag (one Redis Cluster slot): `uadf:{ID}:meta` (a hash: the SHA-256 of the
resume secret, mode, format, `stream_end` where the last connection ended cleanly), `uadf:{ID}:finals` (a
stream, one entry per final with ID `0-(segment+1)`, the final's JSON with its stream clock), `uadf:{ID}:owner`
("NODE TOKEN" of the node that owns the live session, with a lease of `server.lease_seconds`, renewed while
it lives) and `uadf:{ID}:claim` (a resume under way). Every append is one Lua script that checks the owner
key and the segment number, so a node that lost the session cannot add a final and no segment is stored
twice or skipped, and Redis acknowledges it (after its AOF write, see docs/deployment.md) before the final
is sent.

A node asks the owner of a live session to let it go by publishing on the owner's channel (`uadf:node:NODE`):
the owner flushes the session into Redis, closes its connection and deletes the owner key. Nobody
subscribed there means that node is gone (its connection to Redis closed with it), so its claim is void at
once; a node that neither answers nor renews loses the session when its lease runs out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamer.protocol import Final, final_from_dict, to_dict
from streamer.store import Release, ResumeConflict, StoreUnavailable, secret_digest

log = logging.getLogger(__name__)

POLL = 0.05  # seconds between looks at an owner key being released
# A live owner asked to let a session go flushes it first (decoding its pending audio: seconds on a busy node);
# one that hangs stops renewing and loses the key after one lease. Past this many leases of waiting, the
# session is taken anyway (fenced appends keep the store consistent).
TAKEOVER_LEASES = 4

# KEYS: owner, finals; ARGV: owner value, segment, final JSON, lease ms. Appends only as the owner (a lease that
# ran out with nobody else taking it is taken again), only the next segment; a retried append that was applied
# (its reply lost) succeeds again without a second entry.
APPEND = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return redis.error_reply('NOTOWNER the session is owned by another node now') end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4]) end
local n = redis.call('XLEN', KEYS[2])
local segment = tonumber(ARGV[2])
if n == segment + 1 then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if last[1][2][2] == ARGV[3] then return n end
end
if n ~= segment then return redis.error_reply('SEGMENT the store has ' .. n .. ' finals, not ' .. segment) end
redis.call('XADD', KEYS[2], '0-' .. (segment + 1), 'final', ARGV[3])
return n + 1
"""

# KEYS: owner; ARGV: new value, lease ms, the value it may replace ('' none). 1, or the owner's value.
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return cur
"""

# KEYS: owner; ARGV: value, lease ms. 1: renewed (or taken again after it ran out), 0: another node owns it.
RENEW = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: owner, meta; ARGV: value, stream time ('' none). Deletes the key if it holds the value (and records
# where the connection's audio ended: only the owner may move the session's clock).
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'stream_end', ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""


def key(session_id: str, part: str) -> str:
    return f"uadf:{{{session_id}}}:{part}"


def channel(node: str) -> str:
    return f"uadf:node:{node}"


def node_name() -> str:
    """Unique per process: a restarted daemon is a new node (the old one's claims are void)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@asynccontextmanager
async def reachable() -> AsyncIterator[None]:
    """Redis that cannot be reached (down, restarting, loading its AOF) is StoreUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis: {exc}") from exc


class RedisStore:
    def __init__(self, url: str, lease: float = 5.0, node: str | None = None):
        # short timeouts and two quick retries: a store that is down must refuse sessions at once, not hang them
        self.redis = aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=5,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
        )
        self.lease = lease
        self.lease_ms = int(lease * 1000)
        self.node = node or node_name()
        self.writers: dict[str, RedisWriter] = {}  # the live sessions this node owns
        self._append = self.redis.register_script(APPEND)
        self._acquire = self.redis.register_script(ACQUIRE)
        self._renew = self.redis.register_script(RENEW)
        self._release = self.redis.register_script(RELEASE)
        self._release_session: Release | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- reading ---------------------------------------------------------------------------------
    async def exists(self, session_id: str) -> bool:
        async with reachable():
            return bool(await self.redis.exists(key(session_id, "meta")))

    async def secret(self, session_id: str) -> str | None:
        async with reachable():
            return await self.redis.hget(key(session_id, "meta"), "secret")

    async def read(self, session_id: str) -> list[Final]:
        async with reachable():
            entries = await self.redis.xrange(key(session_id, "finals"))
        return [final_from_dict(json.loads(fields["final"])) for _, fields in entries]

    async def stream_end(self, session_id: str) -> float | None:
        async with reachable():
            value = await self.redis.hget(key(session_id, "meta"), "stream_end")
        return float(value) if value is not None else None

    # -- owning a live session -------------------------------------------------------------------
    async def open(self, session_id: str, info: dict, secret: str | None = None) -> "RedisWriter":
        """This node becomes the session's owner (a live owner elsewhere is asked to let go first); a new
        session (`secret`) gets its record."""
        value = f"{self.node} {secrets.token_hex(8)}"
        async with reachable():
            await self._own(session_id, value)
            record = {"node": self.node, "time": time.time(), "mode": str(info.get("mode")), "format": json.dumps(info.get("format"))}
            if secret is not None:
                record["secret"] = secret_digest(secret)
            await self.redis.hset(key(session_id, "meta"), mapping=record)
        writer = RedisWriter(self, session_id, value)
        self.writers[session_id] = writer
        return writer

    async def _own(self, session_id: str, value: str) -> None:
        owner_key = key(session_id, "owner")
        deadline = time.monotonic() + TAKEOVER_LEASES * self.lease
        replace, asked = "", None
        while (current := await self._acquire(keys=[owner_key], args=[value, self.lease_ms, replace])) != 1:
            node = current.split(" ")[0]
            if node == self.node and session_id not in self.writers:
                replace = current  # ours, left behind (its release failed while the store was down)
            elif current != asked:
                asked = current
                if not await self.redis.publish(channel(node), json.dumps({"session": session_id, "owner": current})):
                    log.info("session %s: its owner %s is gone; taking it over", session_id, node)
                    replace = current
            elif time.monotonic() > deadline:
                log.warning("session %s: its owner %s did not let it go in %.0f s; taking it over", session_id, node, TAKEOVER_LEASES * self.lease)
                replace = current
            else:
                await asyncio.sleep(POLL)

    @asynccontextmanager
    async def resuming(self, session_id: str) -> AsyncIterator[None]:
        """One resume of a session at a time, cluster-wide: ResumeConflict while another is under way."""
        claim_key, token = key(session_id, "claim"), f"{self.node} {secrets.token_hex(8)}"
        async with reachable():
            if not await self.redis.set(claim_key, token, nx=True, px=(TAKEOVER_LEASES + 1) * self.lease_ms + 1000):
                raise ResumeConflict(session_id)
        try:
            yield
        finally:
            try:
                await self._release(keys=[claim_key, key(session_id, "meta")], args=[token, ""])
            except RedisError:
                pass  # it expires

    # -- background: take-over requests and leases -----------------------------------------------
    async def start(self, release: Release) -> None:
        """Listen for take-over requests and renew the leases of this node's sessions, until `stop`; works on
        while Redis is down (and reconnects when it returns)."""
        self._release_session = release
        for job in (self._listen(), self._keep_leases()):
            self._spawn(job)

    def _spawn(self, job) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self) -> None:
        down = False
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(channel(self.node))
                if down:
                    log.info("transcript store reachable again")
                down = False
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._spawn(self._let_go(json.loads(message["data"])))
            except (RedisError, OSError) as exc:
                if not down:
                    log.warning("transcript store unreachable (%s); retrying", exc)
                down = True
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()

    async def _let_go(self, request: dict) -> None:
        """Another node resumes a session whose owner key names this node: end it if it is live here (its
        writer's close releases the key), else the key is a stale one of ours: delete it."""
        session_id, owner = request.get("session"), request.get("owner")
        writer = self.writers.get(session_id)
        try:
            if writer is not None and writer.value == owner and self._release_session is not None:
                await self._release_session(session_id)
            else:
                await self._release(keys=[key(session_id, "owner"), key(session_id, "meta")], args=[owner, ""])
        except Exception:
            log.exception("session %s: letting it go failed", session_id)

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            for session_id, writer in list(self.writers.items()):
                try:
                    kept = await self._renew(keys=[key(session_id, "owner")], args=[writer.value, self.lease_ms])
                except (RedisError, OSError):
                    break  # down: appends fail meanwhile; the leases are renewed when it returns
                if not kept and self.writers.get(session_id) is writer and self._release_session is not None:
                    log.warning("session %s: another node owns it now", session_id)
                    self._spawn(self._release_session(session_id))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()


class RedisWriter:
    """Appends a live session's finals as its owner (fenced by the owner key's value)."""

    def __init__(self, store: RedisStore, session_id: str, value: str):
        self.store, self.session_id, self.value = store, session_id, value
        self.keys = [key(session_id, "owner"), key(session_id, "finals")]

    async def append(self, final: Final) -> None:
        """Acknowledged by Redis when this returns. OSError (StoreUnavailable when Redis is down) otherwise."""
        record = json.dumps(to_dict(final), ensure_ascii=False)
        try:
            async with reachable():
                await self.store._append(keys=self.keys, args=[self.value, final.segment, record, self.store.lease_ms])
        except ResponseError as exc:  # not the owner any more, or not the next segment: never sent
            raise OSError(f"redis: {exc}") from exc

    async def close(self, stream_time: float | None = None) -> None:
        if self.store.writers.get(self.session_id) is self:
            del self.store.writers[self.session_id]
        clock = "" if stream_time is None else str(round(stream_time, 3))
        try:
            await self.store._release(keys=[self.keys[0], key(self.session_id, "meta")], args=[self.value, clock])
        except (RedisError, OSError) as exc:  # the lease runs out by itself
            log.warning("session %s: releasing it in the store failed: %s", self.session_id, exc)

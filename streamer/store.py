"""Per-session transcripts: every final is written (and fsynced, server.fsync) before it is sent.

The daemon uses a store only through the async `Store` interface: `open` (a writer with `append` and
`close`), `read`, `exists`, `stream_end`, `secret`, and for several daemons sharing one store `resuming`
(one resume of a session at a time, cluster-wide) and `start` (take-over requests from other nodes).
`FileStore` serves it from local files (one daemon; `server.store = "file"`), `redis_store.RedisStore` from
Redis (`server.store = "redis://..."`, any node can resume). Files are JSON lines, 0600 in a 0700 folder: one
`session` line at each (re)start (the first holds the hash of the session's resume secret), the finals as
sent, a `closed` line when a connection ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator, Protocol

from streamer.protocol import Final, final_from_dict, to_dict

Release = Callable[[str], Awaitable[None]]  # asked by the store to end a live session (another node takes it over)


class StoreUnavailable(OSError):
    """The store cannot be reached now (a shared store that is down): try again later."""


class ResumeConflict(Exception):
    """Another connection (on another node) is resuming this session right now."""


class Writer(Protocol):
    async def append(self, final: Final) -> None:
        """Stored (and acknowledged by the store) when this returns; OSError when it could not be."""

    async def close(self, stream_time: float | None = None) -> None:
        """`stream_time`: where this connection's audio ended, so a resume continues the clock. Never raises."""


class Store(Protocol):
    async def exists(self, session_id: str) -> bool: ...

    async def secret(self, session_id: str) -> str | None: ...

    async def read(self, session_id: str) -> list[Final]: ...

    async def stream_end(self, session_id: str) -> float | None: ...

    async def open(self, session_id: str, info: dict, secret: str | None = None) -> Writer:
        """The session's writer; with a shared store this makes this node the session's one owner."""

    def resuming(self, session_id: str):
        """Async context around a resume: ResumeConflict when one is under way on another node."""

    async def start(self, release: Release) -> None:
        """Serve the store's background work (leases, take-over requests); `release(id)` ends a live session."""

    async def stop(self) -> None: ...


def secret_digest(secret: str) -> str:
    """What is stored of a resume secret: its SHA-256 (a leaked data folder does not leak the secrets)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def secret_matches(given: str | None, digest: str | None) -> bool:
    """Constant-time check of a resume secret against a stored digest."""
    return bool(given) and digest is not None and hmac.compare_digest(secret_digest(given), digest)


class TranscriptStore:
    def __init__(self, data_dir: str | os.PathLike, fsync: bool = True):
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        self.fsync = fsync

    def path(self, session_id: str) -> Path:
        return self.root / f"{session_id}.jsonl"

    def exists(self, session_id: str) -> bool:
        try:
            return self.path(session_id).is_file()
        except (OSError, ValueError):  # a name too long for the file system, a NUL
            return False

    def _records(self, session_id: str) -> Iterator[dict]:
        with open(self.path(session_id), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a crash or a full disk mid-write
                    continue
                if isinstance(obj, dict):
                    yield obj

    def read(self, session_id: str) -> list[Final]:
        return [final_from_dict(obj) for obj in self._records(session_id) if obj.get("type") == "final"]

    def stream_end(self, session_id: str) -> float | None:
        """Stream time at which the session's last connection ended cleanly (None after a crash)."""
        end = None
        for obj in self._records(session_id):
            if obj.get("type") == "closed" and isinstance(obj.get("stream_time"), (int, float)):
                end = float(obj["stream_time"])
        return end

    def secret(self, session_id: str) -> str | None:
        """The digest of the session's resume secret (None: a session without one)."""
        for obj in self._records(session_id):
            if obj.get("type") == "session" and isinstance(obj.get("secret"), str):
                return obj["secret"]
        return None

    def open(self, session_id: str, info: dict, secret: str | None = None) -> "TranscriptWriter":
        """A writer appending to the session's transcript; `secret` (a new session's): its digest is stored."""
        record = {"type": "session", "time": time.time(), **info}
        if secret is not None:
            record["secret"] = secret_digest(secret)
        return TranscriptWriter(self.path(session_id), record, self.fsync)


class TranscriptWriter:
    """Appends JSON lines with os.write (no buffer left behind a failure), each fsynced when `fsync`.

    A write that fails (a full disk) raises OSError and leaves the writer broken: it writes nothing more,
    so a torn line is never followed by another on this connection (readers skip torn lines). Appends may run
    on a worker thread (an fsync can take tens of milliseconds): a lock keeps `close` from closing the file
    under a write."""

    def __init__(self, path: Path, record: dict, fsync: bool):
        self.fsync = fsync
        self.broken = False
        self._lock = threading.Lock()
        new = not path.exists()
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)  # read: the last byte
        try:
            if new and fsync:  # the file's directory entry must survive a power loss too
                folder = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
            size = os.fstat(self._fd).st_size
            torn = size and os.pread(self._fd, 1, size - 1) != b"\n"
            self._write(record, prefix=b"\n" if torn else b"")  # a line cut off by a crash: start on a fresh line
        except OSError:
            self.close()
            raise

    def _write(self, obj: dict, prefix: bytes = b"") -> None:
        if self.broken or self._fd is None:
            raise OSError("the transcript could not be written before; it takes no more")
        data = memoryview(prefix + (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
            if self.fsync:
                os.fsync(self._fd)  # on the disk: survives a power loss
        except OSError:
            self.broken = True
            raise

    def append(self, final: Final) -> None:
        with self._lock:
            self._write(to_dict(final))

    def close(self, stream_time: float | None = None) -> None:
        """`stream_time`: where this connection's audio ended, so a resume continues the clock. Never raises."""
        with self._lock:
            if self._fd is None:
                return
            if stream_time is not None and not self.broken:
                try:
                    self._write({"type": "closed", "time": time.time(), "stream_time": round(stream_time, 3)})
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = None


class FileStore:
    """The `Store` on local files (TranscriptStore), their I/O on worker threads. One daemon: ownership of a
    live session is the registry's alone, so there is nothing to claim, lease or release."""

    def __init__(self, data_dir: str | os.PathLike, fsync: bool = True):
        self.files = TranscriptStore(data_dir, fsync)

    async def exists(self, session_id: str) -> bool:
        return await asyncio.to_thread(self.files.exists, session_id)

    async def secret(self, session_id: str) -> str | None:
        return await asyncio.to_thread(self.files.secret, session_id)

    async def read(self, session_id: str) -> list[Final]:
        return await asyncio.to_thread(self.files.read, session_id)

    async def stream_end(self, session_id: str) -> float | None:
        return await asyncio.to_thread(self.files.stream_end, session_id)

    async def open(self, session_id: str, info: dict, secret: str | None = None) -> "FileWriter":
        return FileWriter(await asyncio.to_thread(self.files.open, session_id, info, secret))

    @asynccontextmanager
    async def resuming(self, session_id: str) -> AsyncIterator[None]:
        yield

    async def start(self, release: Release) -> None:
        pass

    async def stop(self) -> None:
        pass


class FileWriter:
    """A TranscriptWriter's appends and close off the event loop (an fsync can take tens of milliseconds)."""

    def __init__(self, writer: TranscriptWriter):
        self.writer = writer

    async def append(self, final: Final) -> None:
        await asyncio.to_thread(self.writer.append, final)

    async def close(self, stream_time: float | None = None) -> None:
        await asyncio.to_thread(self.writer.close, stream_time)

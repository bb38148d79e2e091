"""Per-session transcript files: every final is appended and flushed before it is sent."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO

from streamer.protocol import Final, final_from_dict, to_dict


class TranscriptStore:
    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, session_id: str) -> Path:
        return self.root / f"{session_id}.jsonl"

    def exists(self, session_id: str) -> bool:
        return self.path(session_id).exists()

    def read(self, session_id: str) -> list[Final]:
        finals = []
        with open(self.path(session_id), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a crash mid-write
                    continue
                if obj.get("type") == "final":
                    finals.append(final_from_dict(obj))
        return finals

    def stream_end(self, session_id: str) -> float | None:
        """Stream time at which the session's last connection ended cleanly (None after a crash)."""
        end = None
        with open(self.path(session_id), encoding="utf-8") as f:
            for line in f:
                if '"closed"' not in line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if obj.get("type") == "closed" and isinstance(obj.get("stream_time"), (int, float)):
                    end = float(obj["stream_time"])
        return end

    def open(self, session_id: str, info: dict) -> "TranscriptWriter":
        return TranscriptWriter(self.path(session_id), info)


class TranscriptWriter:
    def __init__(self, path: Path, info: dict):
        torn = False
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:  # a line cut off by a crash: start on a fresh line
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        if torn:
            self._file.write("\n")
        self._write({"type": "session", "time": time.time(), **info})

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()  # in the kernel's hands: survives kill -9 of the daemon

    def append(self, final: Final) -> None:
        self._write(to_dict(final))

    def close(self, stream_time: float | None = None) -> None:
        """`stream_time`: where this connection's audio ended, so a resume continues the clock."""
        if self._file.closed:
            return
        if stream_time is not None:
            self._write({"type": "closed", "time": time.time(), "stream_time": round(stream_time, 3)})
        self._file.close()

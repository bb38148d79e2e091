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

    def open(self, session_id: str, info: dict) -> "TranscriptWriter":
        return TranscriptWriter(self.path(session_id), info)


class TranscriptWriter:
    def __init__(self, path: Path, info: dict):
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        self._write({"type": "session", "time": time.time(), **info})

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()  # in the kernel's hands: survives kill -9 of the daemon

    def append(self, final: Final) -> None:
        self._write(to_dict(final))

    def close(self) -> None:
        self._file.close()

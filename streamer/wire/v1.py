"""Protocol v1 (docs/protocol.md): JSON text frames as in streamer/protocol.py, PCM in binary frames."""

from __future__ import annotations

import json

from streamer.errors import StreamError
from streamer.protocol import Audio, ClientMessage, Error, ServerMessage, Start, parse_client_message, to_json


def _message_type(data: str) -> str | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj.get("type") if isinstance(obj, dict) else None


class V1Adapter:
    def __init__(self, max_text_bytes: int):
        self.max_text_bytes = max_text_bytes

    def opening_start(self) -> Start | None:
        return None  # v1 clients send a start message

    def parse(self, data: str, started: bool) -> ClientMessage:
        """Anything malformed is a per-frame StreamError, never `internal`. After the start, a second start
        is `already_started` whatever it holds (its validation errors, fatal before a session, must not end this one)."""
        try:
            return self._parse(data)
        except StreamError as exc:
            if not started:
                raise
            if exc.code != "frame_too_large" and _message_type(data) == "start":
                raise StreamError("already_started", "this session has started already") from None
            raise StreamError(exc.code, exc.message, fatal=False) from None

    def _parse(self, data: str) -> ClientMessage:
        size = len(data) if len(data) * 4 <= self.max_text_bytes else len(data.encode("utf-8", "surrogatepass"))
        if size > self.max_text_bytes:
            raise StreamError("frame_too_large", f"text frame of {size} bytes exceeds {self.max_text_bytes} bytes")
        try:
            return parse_client_message(data)
        except StreamError:
            raise
        except (ValueError, TypeError, RecursionError) as exc:  # e.g. an integer past Python's 4300-digit limit
            raise StreamError("bad_message", f"text frames must be JSON: {str(exc)[:80]}") from None

    def binary(self, data: bytes) -> Audio:
        return Audio(data)

    def render(self, message: ServerMessage) -> list[str]:
        return [to_json(message)]

    def render_error(self, error: StreamError) -> str:
        return to_json(Error(code=error.code, message=error.message))

    def close_frame(self, error: StreamError, code: int) -> tuple[int, bytes]:
        return code, error.code.encode()

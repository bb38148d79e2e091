"""Wire adapters: how one API writes a session's conversation on a websocket.

Every adapter drives the same sessions through the same connection state machine
(streamer/connection.py); an adapter only turns frames into client messages and session messages into
frames. Protocol v1 is `v1.py`; the APIs existing clients speak are `deepgram.py` (Deepgram live),
`openai_realtime.py` and `openai_transcriptions.py` (OpenAI), with `auth.py` (credentials wherever a client
puts them) and `transcode.py` (their audio encodings). Another API is another module here plus one route
in streamer/app.py.
"""

from __future__ import annotations

from typing import Protocol

from streamer.errors import StreamError
from streamer.protocol import ClientMessage, ServerMessage, Start


class WireAdapter(Protocol):
    """One connection's codec (instantiated per connection: an adapter may keep state, e.g. utterance timing)."""

    def opening_start(self) -> Start | None:
        """The session's start taken from the upgrade request itself (its query), or None: wait for a start message."""

    def parse(self, data: str, started: bool) -> ClientMessage:
        """A text frame -> a client message. Raises StreamError (fatal before the session starts where the
        code says so; the state machine makes errors after the start non-fatal)."""

    def audio(self, data: bytes) -> bytes:
        """A binary frame -> the session's PCM bytes."""

    def render(self, message: ServerMessage) -> list[str]:
        """A session message -> the text frames to send (none, one or several)."""

    def render_error(self, error: StreamError) -> str | None:
        """The frame that reports an error to the client (None: the close code and reason say it)."""

"""Wire adapters: how one API writes a session's conversation on a websocket.

Every adapter drives the same sessions through the same connection state machine
(streamer/connection.py); an adapter turns frames into client messages and session messages into frames.
Protocol v1 is `v1.py`; the APIs existing clients speak are Deepgram live (`deepgram.py`, pure, and its
adapter `deepgram_adapter.py`), OpenAI Realtime (`openai_realtime.py`, `realtime_adapter.py`) and OpenAI
transcriptions (`openai_transcriptions.py`, served over HTTP by streamer/transcriptions.py), with `auth.py`
(credentials wherever a client puts them) and `transcode.py` (their audio encodings). Another API is another
module here plus one route in streamer/app.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from streamer.errors import StreamError
from streamer.protocol import ClientMessage, ServerMessage, Start

if TYPE_CHECKING:  # the pure API modules here stay free of the model stack at run time
    from streamer.session import Session


@dataclass
class Reply:
    """An adapter's own answer to a client frame (Deepgram's ConfigureSuccess, Realtime's session.updated or an
    error in its API's shape), sent in order with the session's messages. `render` runs when the writer reaches
    it, so it may depend on (or change) the rendering state of the messages before it; it may return no frames."""

    render: Callable[[], list[str]]
    error: str | None = None  # the error code it reports, for the error metric

    @classmethod
    def frames(cls, *frames: str, error: str | None = None) -> "Reply":
        return cls(lambda: list(frames), error)


# What an adapter makes of one frame: a client message, a Reply, a message of its own API (see `handle`), or a
# list of them in order (one Realtime append may carry more audio than one session frame may hold).
Parsed = ClientMessage | Reply | list


class WireAdapter(Protocol):
    """One connection's codec (instantiated per connection: an adapter may keep state, e.g. utterance timing)."""

    def opening_start(self) -> Start | None:
        """The session's start taken from the upgrade request itself (its query), or None: wait for a start message."""

    def parse(self, data: str, started: bool) -> Parsed:
        """A text frame -> a client message, a `Reply`, or a list of them in order (before the start, messages
        after a `Start` in the list are handled once the session is open). Raises StreamError (fatal before the
        session starts where the code says so; the state machine makes errors after the start non-fatal)."""

    def binary(self, data: bytes) -> Parsed:
        """A binary frame -> a client message (audio in the session's format, or a control: Deepgram's empty frame
        is CloseStream)."""

    def render(self, message: ServerMessage | Reply) -> list[str]:
        """A session message -> the text frames to send (none, one or several); a Reply -> its frames."""

    def render_error(self, error: StreamError) -> str | None:
        """The frame that reports an error to the client (None: the close code and reason say it)."""

    def close_frame(self, error: StreamError, code: int) -> tuple[int, bytes]:
        """The close code and reason after a fatal error (`code`: the daemon's close code for it)."""

    async def handle(self, session: "Session", message: object) -> bool:
        """A message of the adapter's own that the connection's dispatch table does not know, acting on the
        session (only adapters whose `parse` returns such messages need it: OpenAI Realtime's commit and clear).
        True ends the connection."""

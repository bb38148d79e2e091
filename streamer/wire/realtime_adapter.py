"""OpenAI Realtime transcription sessions on the daemon's sockets: the handshake and the `WireAdapter` that runs a
Realtime session as a daemon session.

`session.created` goes out on connect; `session.update` is answered by the adapter itself (a `Reply`); the
daemon session starts with the first `input_audio_buffer.append` (the audio format and model are known by
then), whose audio is cut into session frames. A commit finalizes the session's pending audio and waits for its
finals (`Session.commit`) before the item is closed; every daemon message is rendered by the pure
`openai_realtime.Renderer`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamer.errors import StreamError
from streamer.protocol import Audio, Error, ServerMessage, Start
from streamer.wire import Parsed, Reply
from streamer.wire import openai_realtime as rt
from streamer.wire import openai_transcriptions as ot
from streamer.wire.auth import credentials, offered_subprotocols, token_matches
from streamer.wire.transcode import Transcoder

if TYPE_CHECKING:
    from streamer.session import Session

BETA_PROTOCOL = "openai-beta.realtime-v1"  # what browsers offer instead of the OpenAI-Beta header


@dataclass
class Handshake:
    adapter: "RealtimeAdapter"
    subprotocol: str | None


def handshake(query: Mapping[str, str], headers: Mapping[str, str], token: str, max_frame_bytes: int) -> Handshake:
    """Check the key; the beta event shapes for clients that ask for them. Raises openai_transcriptions.APIError(401)."""
    cred = credentials(headers, query)
    if not token_matches(cred.token, token):
        raise ot.unauthorized(cred.token)
    beta = "realtime=v1" in headers.get("OpenAI-Beta", "") or BETA_PROTOCOL in offered_subprotocols(headers)
    return Handshake(RealtimeAdapter(beta, max_frame_bytes), cred.subprotocol)


def _dumps(events: list[dict]) -> list[str]:
    return [json.dumps(e, ensure_ascii=False) for e in events]


class RealtimeAdapter:
    def __init__(self, beta: bool, max_frame_bytes: int):
        self.beta = beta
        self.max_frame_bytes = max_frame_bytes
        self.renderer = rt.Renderer(rt.SessionConfig(), f"sess_{uuid.uuid4().hex}")
        self.transcoder: Transcoder | None = None  # from the first append on: the daemon session runs

    @property
    def config(self) -> rt.SessionConfig:
        return self.renderer.config

    def created(self) -> str:
        """The first event, sent on connect."""
        return json.dumps(self.renderer.created(self.beta))

    def opening_start(self) -> None:
        return None  # the session starts with the first append

    def parse(self, data: str, started: bool) -> Parsed:
        try:
            event = rt.parse_client_event(data)
            if isinstance(event, rt.SessionUpdate):
                self.renderer.config = rt.apply_update(self.config, event, audio_started=self.transcoder is not None)
                return Reply.frames(json.dumps(self.renderer.updated(event.beta)))
            if isinstance(event, rt.Append):
                return self._append(event)
            if started:
                return event  # commit, clear: `handle`, with the session
            if isinstance(event, rt.Commit):  # nothing appended yet: refused as too short
                self.renderer.commit_requested(event.event_id)
                return Reply.frames(*_dumps(self.renderer.commit_done(0.0)))
            return Reply.frames(*_dumps(self.renderer.clear(0.0)))
        except rt.RealtimeError as err:
            return Reply.frames(json.dumps(self.renderer.error(err)), error=err.code)

    def _append(self, event: rt.Append) -> list:
        """The audio in session frames (at most max_frame_bytes each), after the session's start if it is the first."""
        transcoder = self.transcoder or Transcoder(self.config.raw)
        fmt = self.config.raw.session_format
        pcm = transcoder.convert(event.audio)
        if len(pcm) % fmt.frame_bytes:
            raise rt.RealtimeError("invalid_value", f"'audio' must hold whole {fmt.frame_bytes}-byte samples.", "audio", event.event_id)
        messages: list = []
        if self.transcoder is None:
            self.transcoder = transcoder
            silence = self.config.silence_ms
            messages.append(
                Start(
                    format=fmt,
                    mode=self.config.mode,
                    language=self.config.language,
                    keyterms=list(self.config.keyterms),
                    context=self.config.prompt or None,
                    endpoint_silence=None if silence is None else silence / 1000,
                )
            )
        self.renderer.appended(len(pcm) / (fmt.frame_bytes * fmt.sample_rate))
        step = self.max_frame_bytes - self.max_frame_bytes % fmt.frame_bytes
        messages += [Audio(pcm[i : i + step]) for i in range(0, len(pcm), step)]
        return messages

    async def handle(self, session: "Session", message: rt.Commit | rt.Clear) -> bool:
        """Commit and clear, in order with the session's messages: a commit finalizes the pending audio and
        closes the item once its finals were rendered; a clear drops the open item and what was said before it."""
        if isinstance(message, rt.Commit):
            session.outbox.put(Reply(lambda: self._commit_requested(message.event_id)))
            await session.commit()
            stream_time = session.processor.stream_time
            session.outbox.put(Reply(lambda: self._commit_done(stream_time)))
        else:
            stream_time = session.processor.stream_time
            session.outbox.put(Reply(lambda: _dumps(self.renderer.clear(stream_time))))
        return False

    def _commit_requested(self, event_id: str | None) -> list[str]:
        self.renderer.commit_requested(event_id)
        return []

    def _commit_done(self, stream_time: float) -> list[str]:
        try:
            return _dumps(self.renderer.commit_done(stream_time))
        except rt.RealtimeError as err:
            return [json.dumps(self.renderer.error(err))]

    def binary(self, data: bytes) -> Reply:
        err = rt.RealtimeError("invalid_value", "Binary frames are not events: send input_audio_buffer.append with base64 audio.")
        return Reply.frames(json.dumps(self.renderer.error(err)), error=err.code)

    def render(self, message: ServerMessage | Reply) -> list[str]:
        if isinstance(message, Reply):
            return message.render()
        return _dumps(self.renderer.render(message))

    def render_error(self, error: StreamError) -> str:
        return json.dumps(self.renderer.render(Error(code=error.code, message=error.message))[0])

    def close_frame(self, error: StreamError, code: int) -> tuple[int, bytes]:
        return code, error.code.encode()

"""Deepgram live streaming on the daemon's sockets: the handshake (credentials and query, refused in Deepgram's
REST error shape before the upgrade) and the `WireAdapter` that runs a Deepgram stream as a daemon session.

The session starts with the upgrade (its options are in the query); binary frames are audio in the announced
encoding, transcoded frame by frame; every daemon message is rendered by the pure `deepgram.Renderer`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamer.errors import StreamError
from streamer.protocol import Audio, Context, Error, Finalize, Ready, ServerMessage, Start, Stop, parse_meeting
from streamer.wire import Parsed, Reply
from streamer.wire import deepgram as dg
from streamer.wire.auth import credentials, token_matches
from streamer.wire.transcode import Transcoder

if TYPE_CHECKING:
    from streamer.session import Session

log = logging.getLogger(__name__)


class FinalizeRequest:
    """Deepgram's Finalize, handled by the adapter (it waits for the decode to answer it)."""


@dataclass
class Handshake:
    """An accepted upgrade: the adapter, and the subprotocol to select (browsers send the key as one)."""

    adapter: "DeepgramAdapter"
    subprotocol: str | None


def handshake(query, headers: Mapping[str, str], token: str, model_name: str, max_text_bytes: int) -> Handshake:
    """Check the key and the query (`query`: aiohttp's MultiDict, repeated keys kept). Raises
    deepgram.HandshakeError (401 for a wrong or missing key, 400 for a query the daemon cannot honour)."""
    cred = credentials(headers, query)
    if not token_matches(cred.token, token):
        raise dg.UNAUTHORIZED
    options = dg.parse_query(query.items())
    for warning in options.warnings:
        log.info("deepgram stream: %s", warning)
    request_id = str(uuid.uuid4())  # until the session opens; then the session id, to fetch its transcript
    return Handshake(DeepgramAdapter(options, dg.Renderer(options, request_id, model_name), max_text_bytes), cred.subprotocol)


def refusal(error: dg.HandshakeError) -> tuple[dict, int, dict[str, str]]:
    """A refused upgrade as (JSON body, status, headers)."""
    request_id = str(uuid.uuid4())
    return error.body(request_id), error.status, error.headers(request_id)


class DeepgramAdapter:
    def __init__(self, options: dg.Options, renderer: dg.Renderer, max_text_bytes: int):
        self.options = options
        self.renderer = renderer
        self.max_text_bytes = max_text_bytes
        self.transcoder = Transcoder(options.raw)

    def opening_start(self) -> Start:
        endpointing = self.options.endpointing_ms
        return Start(
            format=self.options.raw.session_format,
            mode=self.options.mode,
            keyterms=list(self.options.keyterms),
            endpoint_silence=None if endpointing is None else endpointing / 1000,
            diarize=self.options.diarize,
        )

    def parse(self, data: str, started: bool) -> Parsed:
        if len(data) > self.max_text_bytes:
            return self._error("frame_too_large", f"text frame of {len(data)} characters exceeds {self.max_text_bytes}", data)
        try:
            message = dg.parse_client_message(data)
        except dg.SchemaError as err:
            return Reply.frames(json.dumps(err.message), error="bad_message")
        if isinstance(message, dg.Configure):
            return self._configure(message)
        if isinstance(message, Finalize):
            return FinalizeRequest()
        return message

    def _configure(self, message: dg.Configure) -> Parsed:
        """New keyterms replace the session's (protocol v1's `context` message, validated alike: Whisper's prompt
        and the fusion LLM take them from the next window on); the answer goes when the writer gets there, so
        later Results follow it."""
        answer = Reply(lambda: [json.dumps(self.renderer.configure(message))])
        if message.keyterms is None:
            return answer
        try:
            keyterms, _ = parse_meeting({"keyterms": message.keyterms})
        except StreamError as exc:
            return Reply.frames(json.dumps(self.renderer.configure_failure(exc.message)), error=exc.code)
        return [Context(keyterms=keyterms), answer]

    async def handle(self, session: "Session", message: "FinalizeRequest") -> bool:
        """Finalize: the pending audio is decoded to finals, the endpoint it brings marked `from_finalize` (in
        order, after the Results already queued); when nothing was pending, Deepgram still answers with an empty
        final `from_finalize` Results, so a client waiting for it is not left hanging."""
        try:
            session.limits.finalize()  # each forces a decode: bounded like protocol v1's finalize
        except StreamError as exc:
            if exc.fatal:
                raise
            session.send_error(exc)
            return False
        session.outbox.put(Reply(self._mark_finalize))
        await session.commit()
        session.outbox.put(Reply(self._finalize_done))
        return False

    def _mark_finalize(self) -> list[str]:
        self.renderer.finalize_requested()
        return []

    def _finalize_done(self) -> list[str]:
        return [json.dumps(m, ensure_ascii=False) for m in self.renderer.finalize_done()]

    def _error(self, variant: str, description: str, data: str) -> Reply:
        frame = {"type": "Error", "variant": variant, "description": description, "message": data[:1000]}
        return Reply.frames(json.dumps(frame), error=variant)

    def binary(self, data: bytes) -> Audio | Stop:
        if dg.is_close_frame(data):  # Deepgram's deprecated CloseStream
            return Stop()
        self.renderer.observe_audio(data)
        return Audio(self.transcoder.convert(data))

    def render(self, message: ServerMessage | Reply) -> list[str]:
        if isinstance(message, Reply):
            return message.render()
        if isinstance(message, Ready):  # Deepgram's request_id is the session id: its transcript is kept under it
            self.renderer.request_id = message.session_id
        return [json.dumps(m, ensure_ascii=False) for m in self.renderer.render(message)]

    def render_error(self, error: StreamError) -> str:
        return json.dumps(self.renderer.render(Error(code=error.code, message=error.message))[0], ensure_ascii=False)

    def close_frame(self, error: StreamError, code: int) -> tuple[int, bytes]:
        code, reason = dg.close_for(Error(code=error.code, message=error.message), code)
        return code, reason.encode()

"""OpenAI's `POST /v1/audio/transcriptions` and `GET /v1/models` on the daemon.

An upload is a daemon session like any other (admission by `max_sessions`, metrics, a transcript file under its
id, the `X-Session-Id` header): the decoded file runs through the session's drive loop and the shared decode
scheduler at full speed (`Session.transcribe`, not rate-limited), so its text is what a live client streaming
the same audio gets. The finals are rendered in the requested `response_format`, or sent as server-sent events
as they come (`stream=true`). Request fields and response shapes: streamer/wire/openai_transcriptions.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np
from aiohttp import BodyPartReader, web

from core.types import SAMPLE_RATE
from streamer.audio import AudioFormat
from streamer.config import ServerOptions
from streamer.engine import Engine
from streamer.errors import StreamError
from streamer.media import MediaError, decode_audio
from streamer.metrics import Metrics
from streamer.protocol import Error, Final, Start
from streamer.registry import SessionRegistry
from streamer.session import Session
from streamer.wire import openai_transcriptions as ot
from streamer.wire.auth import credentials, token_matches

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Session-Id"  # the upload's session id: GET /v1/sessions/{id}/transcript serves it again ...
RESUME_HEADER = "X-Resume-Token"  # ... with its secret
MAX_FIELD_BYTES = 64 * 1024  # a text field (a long prompt fits)
MAX_FIELDS = 64
FORM_OVERHEAD = 64 * 1024  # a form's bytes besides the file: boundaries, part headers, text fields
RETRY_AFTER = 2.0  # seconds a client is told to wait when every session is in use
UPLOAD_FORMAT = AudioFormat(SAMPLE_RATE, "pcm_f32le", 1)  # what decode_audio gives
ERROR_CODES = {401: "unauthorized", 429: "busy"}  # the daemon's codes of these statuses, for the error metric


async def _read_part(part: BodyPartReader, limit: int, error: Callable[[], ot.APIError]) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > limit:
            raise error()
        chunks.append(chunk)
    return b"".join(chunks)


class Transcriptions:
    def __init__(self, registry: SessionRegistry, engine: Engine, options: ServerOptions, metrics: Metrics):
        self.registry = registry
        self.engine = engine
        self.options = options
        self.metrics = metrics
        self.created = int(time.time())

    # -- routes ------------------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except ot.APIError as err:
            return self._error(err)
        return web.json_response(ot.models(self.engine.backend.model_name, [str(m) for m in self.engine.modes], self.created))

    async def create(self, request: web.Request) -> web.StreamResponse:
        try:
            self._authorize(request)
            fields, data = await self._read_form(request)
            req = ot.parse_fields(fields)
            if data is None:
                raise ot.APIError(400, "you must provide a file", param="file")
            for warning in req.warnings:
                log.info("transcription request: %s", warning)
            session = await self._open(req)  # admission first: a full daemon spends nothing on decoding the file
        except ot.APIError as err:
            return self._error(err)
        try:
            audio = await self._decode(data)
        except ot.APIError as err:
            await self.registry.end(session)
            return self._error(err, {SESSION_HEADER: session.id, RESUME_HEADER: session.secret})
        if req.stream:
            return await self._stream(request, req, session, audio)
        finals, error = await self._run(request, session, audio)
        if error is not None:
            return self._error(error, {SESSION_HEADER: session.id, RESUME_HEADER: session.secret})
        body, content_type = ot.render(req, finals, len(audio) / SAMPLE_RATE)
        return web.Response(text=body, content_type=content_type, headers={SESSION_HEADER: session.id, RESUME_HEADER: session.secret})

    # -- steps -------------------------------------------------------------------------------------------
    def _error(self, err: ot.APIError, headers: dict[str, str] | None = None) -> web.Response:
        """OpenAI's error body; counted under the daemon's error codes where there is one."""
        self.metrics.errors.labels(ERROR_CODES.get(err.status) or err.code or "bad_request").inc()
        return web.json_response(err.body(), status=err.status, headers={**err.headers(), **(headers or {})})

    def _authorize(self, request: web.Request) -> None:
        given = credentials(request.headers, request.query).token
        if not token_matches(given, self.options.token):
            raise ot.unauthorized(given)

    async def _read_form(self, request: web.Request) -> tuple[list[tuple[str, str]], bytes | None]:
        """The form's text fields in order, and the file's bytes; within the upload limit (413 past it)."""
        limit = self.options.max_upload_bytes

        def too_large() -> ot.APIError:
            return ot.APIError(413, f"the file is larger than the limit of {limit} bytes", param="file", code="file_too_large")

        if request.content_length is not None and request.content_length > limit + FORM_OVERHEAD:
            raise too_large()
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            raise ot.APIError(400, "the request must be multipart/form-data with a file") from None
        fields: list[tuple[str, str]] = []
        data = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or len(fields) >= MAX_FIELDS:
                raise ot.APIError(400, "the form must be flat, with at most a few dozen fields")
            if part.name == "file":
                data = await _read_part(part, limit, too_large)
            else:
                value = await _read_part(part, MAX_FIELD_BYTES, lambda: ot.APIError(400, f"field {part.name!r} is too long", param=part.name))
                fields.append((part.name or "", value.decode("utf-8", errors="replace")))
        return fields, data

    async def _decode(self, data: bytes) -> np.ndarray:
        """The file's audio at 16 kHz (FFmpeg in a thread: the event loop serves the live streams meanwhile)."""
        try:
            return await asyncio.to_thread(decode_audio, data, self.options.max_upload_seconds)
        except MediaError as exc:
            raise ot.APIError(400, f"Invalid file: {exc}", param="file", code="invalid_value") from None

    async def _open(self, req: ot.TranscriptionRequest) -> Session:
        start = Start(format=UPLOAD_FORMAT, mode=req.mode, language=req.language, keyterms=req.keyterms, context=req.prompt,
                      diarize=True if req.diarize else None)  # else the daemon's [speakers] setting
        try:
            session, _ = await self.registry.open(start, _never_taken_over)
        except StreamError as exc:
            if exc.code == "busy":
                raise ot.busy(RETRY_AFTER) from None
            if exc.code == "bad_mode":
                raise ot.APIError(400, exc.message, param="model", code="model_not_found") from None
            if exc.code == "bad_speakers":
                raise ot.APIError(400, exc.message, param="response_format", code="unsupported_value") from None
            status = 503 if exc.code == "storage_unavailable" else 500  # a shared store that is down: try again later
            raise ot.APIError(status, exc.message, code=exc.code) from None
        return session

    async def _run(
        self, request: web.Request, session: Session, audio: np.ndarray, on_final: Callable[[Final], Awaitable[None]] | None = None
    ) -> tuple[list[Final], ot.APIError | None]:
        """The audio through the session; its finals (each handed to `on_final` as it comes) and the error that
        spoiled the transcript, if any. The session ends here, its transcript on disk."""
        finals: list[Final] = []
        errors: list[Error] = []

        async def collect() -> None:
            while (message := await session.outbox.get()) is not None:
                if isinstance(message, Final):
                    finals.append(message)
                    if on_final is not None:
                        await on_final(message)
                elif isinstance(message, Error):
                    errors.append(message)

        collector = asyncio.create_task(collect(), name=f"upload-{session.id}")
        gone = lambda: request.transport is None or request.transport.is_closing() or collector.done()  # noqa: E731
        try:
            await session.transcribe(audio, stopped=gone)
        except StreamError as exc:
            errors.append(Error(code=exc.code, message=exc.message))
        finally:
            stopping = session.stopping
            await self.registry.end(session)
            session.outbox.put(None, force=True)
            await asyncio.gather(collector, return_exceptions=True)
        if stopping:
            return finals, ot.APIError(503, "the server is shutting down; the transcript is incomplete", code="server_shutting_down")
        if errors:
            return finals, ot.APIError(500, f"the transcript is incomplete: {errors[0].message}", code=errors[0].code)
        return finals, None

    async def _stream(self, request: web.Request, req: ot.TranscriptionRequest, session: Session, audio: np.ndarray) -> web.StreamResponse:
        """`stream=true`: a delta event per final as it is decoded, then the done event (or an error event)."""
        response = web.StreamResponse(headers={"Content-Type": ot.EventStream.content_type, "Cache-Control": "no-cache", SESSION_HEADER: session.id, RESUME_HEADER: session.secret})
        events = ot.EventStream(req)
        try:
            await response.prepare(request)
        except ConnectionError:
            await self.registry.end(session)
            return response

        async def send(final: Final) -> None:
            if delta := events.delta(final):
                await response.write(delta)

        _, error = await self._run(request, session, audio, send)
        try:
            await response.write(events.done() if error is None else events.error(error))
            await response.write_eof()
        except ConnectionError:
            pass  # the client left
        return response


async def _never_taken_over() -> None:
    """Uploads have no session id to resume, so no other connection can take one over."""

"""OpenAI transcription wire adapter: form fields, every response format, streaming, errors and models,
checked with the official openai package against a loopback stand-in (real decoding, scripted finals)."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest
import srt
import webvtt
from aiohttp import web
from openai import OpenAI
from openai.types.audio import Transcription, TranscriptionVerbose

from streamer.media import MediaError, decode_audio
from streamer.protocol import Final
from streamer.wire import openai_transcriptions as ot
from streamer.wire.auth import credentials, token_matches
from wire_harness import script, serve

TOKEN = "sk-test-key-123456"
FINALS = [e for e in script() if isinstance(e, Final)]
CLIP = "/work/shared/data/speech-dev/206o0103.wav"


def transcriptions_app(log: list) -> web.Application:
    """A stand-in for the daemon's route: the pure adapter, the real decoder, scripted finals as the transcript."""

    def error(err: ot.APIError, headers: dict | None = None) -> web.Response:
        return web.json_response(err.body(), status=err.status, headers={**err.headers(), **(headers or {})})

    async def transcribe(request: web.Request) -> web.StreamResponse:
        cred = credentials(request.headers, request.query)
        if not token_matches(cred.token, TOKEN):
            return error(ot.unauthorized(cred.token))
        fields, upload = [], b""
        async for part in await request.multipart():
            if part.name == "file":
                upload = await part.read()
            else:
                fields.append((part.name, await part.text()))
        log.append(fields)
        try:
            req = ot.parse_fields(fields)
            audio = decode_audio(upload, max_seconds=60)
        except ot.APIError as err:
            return error(err)
        except MediaError as err:
            return error(ot.APIError(400, str(err), param="file"))
        duration = len(audio) / 16000
        if req.stream:
            events = ot.EventStream(req)
            resp = web.StreamResponse(headers={"Content-Type": events.content_type})
            await resp.prepare(request)
            for final in FINALS:
                await resp.write(events.delta(final))
            await resp.write(events.done())
            await resp.write_eof()
            return resp
        body, content_type = ot.render(req, FINALS, duration)
        return web.Response(text=body, content_type=content_type)

    async def models(request: web.Request) -> web.Response:
        return web.json_response(ot.models("tiny.en", ["asr"], int(time.time())))

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post(ot.PATH, transcribe)
    app.router.add_get(ot.MODELS_PATH, models)
    return app


@pytest.fixture(scope="module")
def client():
    log: list = []
    with serve(transcriptions_app(log)) as address:
        c = OpenAI(base_url=f"http://{address}/v1", api_key=TOKEN, max_retries=0)
        c.log = log
        yield c


@pytest.fixture(scope="module")
def wav() -> bytes:
    return open(CLIP, "rb").read()


def test_json(client, wav):
    r = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", wav), language="en", prompt="UADF")
    assert isinstance(r, Transcription) and r.text == "Hello world, how are you? Fine, thanks."
    assert r.usage.type == "duration" and r.usage.seconds == 3  # ceil of the clip's 2.7 s
    assert client.log[-1] == [("model", "whisper-1"), ("language", "en"), ("prompt", "UADF")]


def test_text(client, wav):
    assert client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), response_format="text") == "Hello world, how are you? Fine, thanks.\n"


def test_srt_is_valid_subrip(client, wav):
    body = client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), response_format="srt")
    subs = list(srt.parse(body))
    assert [s.content for s in subs] == ["Hello world, how are you?", "Fine, thanks."]
    assert subs[0].start.total_seconds() == 0.2 and subs[0].end.total_seconds() == 1.65 and subs[1].start > subs[0].end


def test_vtt_is_valid_webvtt(client, wav):
    body = client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), response_format="vtt")
    cues = list(webvtt.from_buffer(io.StringIO(body)))
    assert [(c.start, c.end, c.text) for c in cues] == [("00:00:00.200", "00:00:01.650", "Hello world, how are you?"), ("00:00:02.500", "00:00:03.050", "Fine, thanks.")]


def test_verbose_json_with_segments_and_words(client, wav):
    r = client.audio.transcriptions.create(
        model="whisper-1", file=("c.wav", wav), response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert isinstance(r, TranscriptionVerbose) and r.language == "english" and r.duration == pytest.approx(2.7, abs=0.01)
    TranscriptionVerbose.model_validate(r.model_dump())  # strict: every required field present and typed
    assert [w.word for w in r.words] == ["Hello", "world", "how", "are", "you", "Fine", "thanks"]
    assert all(a.end <= b.start for a, b in zip(r.words, r.words[1:]))
    assert [(s.id, s.start, s.end, s.text) for s in r.segments] == [(0, 0.2, 1.65, " Hello world, how are you?"), (1, 2.5, 3.05, " Fine, thanks.")]
    assert -1 < r.segments[0].avg_logprob < 0
    assert client.log[-1][-2:] == [("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment")]


def test_verbose_json_granularities(client, wav):
    words_only = client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), response_format="verbose_json", timestamp_granularities=["word"])
    assert words_only.words and words_only.segments is None
    default = client.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav), response_format="verbose_json")
    assert default.segments and default.words is None


def test_stream_sends_deltas_then_done(client, wav):
    events = list(client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("c.wav", wav), stream=True, include=["logprobs"]))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TranscriptionTextDeltaEvent"] * 3 + ["TranscriptionTextDoneEvent"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == "Hello world, how are you? Fine, thanks."
    assert events[0].logprobs[0].token == "Hello" and events[0].logprobs[0].logprob < 0


def test_wrong_key_gets_openais_401(client, wav):
    bad = client.with_options(api_key="sk-wrong-key-000000")
    with pytest.raises(openai.AuthenticationError) as err:
        bad.audio.transcriptions.create(model="whisper-1", file=("c.wav", wav))
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key" and err.value.type == "invalid_request_error"
    assert "sk-...0000" in err.value.message


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"response_format": "diarized_xml"}, "response_format"),
        ({"language": "fr"}, "language"),
        ({"stream": True, "response_format": "srt"}, "stream"),
        ({"timestamp_granularities": ["word"]}, "timestamp_granularities"),
        ({"file": ("notes.txt", b"not audio at all")}, "file"),
    ],
)
def test_bad_requests_get_openais_400(client, wav, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(**{"model": "whisper-1", "file": ("c.wav", wav), **kwargs})
    assert err.value.status_code == 400 and err.value.param == param


def test_models_list(client):
    assert [m.id for m in client.models.list()] == ["tiny.en", "asr"]


# -- pure parsing ------------------------------------------------------------------------------------------------
def test_fields_map_to_a_request():
    req = ot.parse_fields([
        ("model", "uadf"), ("chunking_strategy[type]", "server_vad"), ("chunking_strategy[silence_duration_ms]", "300"),
        ("include[]", "logprobs"), ("keywords[]", "UADF"), ("keywords[]", "Gemma"), ("temperature", "0.2"), ("prompt", "meeting about UADF"),
    ])  # as openai 3.57 sends them
    assert (req.mode, req.logprobs, req.keyterms, req.prompt) == ("uadf", True, ["UADF", "Gemma"], "meeting about UADF")
    assert any("chunking_strategy" in w for w in req.warnings) and any("temperature" in w for w in req.warnings)
    assert len([w for w in req.warnings if "chunking_strategy" in w]) == 1
    assert ot.parse_fields([("model", "whisper-1")]).mode is None


@pytest.mark.parametrize("fields, param", [([], "model"), ([("model", "m"), ("stream", "maybe")], "stream"), ([("model", "m"), ("temperature", "2")], "temperature")])
def test_bad_fields(fields, param):
    with pytest.raises(ot.APIError) as err:
        ot.parse_fields(fields)
    assert err.value.param == param and err.value.body()["error"]["type"] == "invalid_request_error"


def test_busy_is_a_retryable_429():
    err = ot.busy(2.2)
    assert err.status == 429 and err.headers() == {"retry-after": "3"}
    assert ot.unauthorized(None).headers() == {"x-should-retry": "false"}


def test_stream_error_event_is_raised_by_the_sdk_shape():
    event = json.loads(ot.EventStream.error(ot.APIError(500, "decoding failed"))[len(b"data: "):])
    assert event["error"]["type"] == "server_error"  # the SDK raises APIError for an event with `error`

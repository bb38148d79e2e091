"""OpenAI Realtime transcription wire adapter: client events, session configuration, and the daemon's events as
Realtime server events, checked against the openai package's models and its Realtime client over loopback."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp import WSMsgType, web
from openai import OpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from streamer.protocol import Error, Final, Partial
from streamer.wire import openai_realtime as rt
from streamer.wire.auth import credentials, token_matches
from streamer.wire.transcode import Transcoder
from wire_harness import script, serve, words

TOKEN = "sk-rt-key"
SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
GA_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "UADF"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 600},
        }},
    },
}  # as openai 3.57's `conn.session.update(session=...)` sends it


def validated(events: list[dict]) -> list[dict]:
    """Each event validates strictly against the SDK's server-event union (discriminated by `type`)."""
    for e in events:
        parsed = SERVER_EVENT.validate_python(json.loads(json.dumps(e)))
        assert parsed.type == e["type"]
    return events


def config(**update) -> rt.SessionConfig:
    return rt.apply_update(rt.SessionConfig(), rt.SessionUpdate(update, beta=False), audio_started=False)


# -- client events and configuration ---------------------------------------------------------------------------------
def test_client_events():
    update = rt.parse_client_event(json.dumps(GA_UPDATE))
    assert isinstance(update, rt.SessionUpdate) and not update.beta
    append = rt.parse_client_event(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02").decode()}))
    assert isinstance(append, rt.Append) and append.audio == b"\x01\x02"
    assert isinstance(rt.parse_client_event('{"type": "input_audio_buffer.commit", "event_id": "e1"}'), rt.Commit)
    assert isinstance(rt.parse_client_event('{"type": "input_audio_buffer.clear"}'), rt.Clear)
    assert rt.parse_client_event('{"type": "transcription_session.update", "session": {}}').beta


@pytest.mark.parametrize(
    "text, code, param",
    [
        ("nope", "invalid_json", None),
        ('{"event_id": "e"}', "missing_required_parameter", "type"),
        ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_value", "audio"),
        ('{"type": "response.create"}', "unsupported_event", "type"),
        ('{"type": "made.up"}', "invalid_value", "type"),
        ('{"type": "session.update"}', "missing_required_parameter", "session"),
    ],
)
def test_bad_client_events(text, code, param):
    with pytest.raises(rt.RealtimeError) as err:
        rt.parse_client_event(text)
    assert (err.value.code, err.value.param) == (code, param)


def test_session_update_ga_and_beta():
    c = rt.apply_update(rt.SessionConfig(), rt.parse_client_event(json.dumps(GA_UPDATE)), audio_started=False)
    assert (c.raw.encoding, c.raw.sample_rate, c.silence_ms, c.model, c.language, c.prompt) == ("pcm_s16le", 24000, 600, "gpt-4o-transcribe", "en", "UADF")
    assert c.mode is None and config(type="transcription", audio={"input": {"transcription": {"model": "uadf"}}}).mode == "uadf"
    manual = config(type="transcription", audio={"input": {"turn_detection": None, "format": {"type": "audio/pcmu"}}})
    assert manual.turn_detection is None and (manual.raw.encoding, manual.raw.sample_rate) == ("pcm_mulaw", 8000)
    beta = rt.apply_update(rt.SessionConfig(), rt.SessionUpdate({"input_audio_format": "g711_alaw", "input_audio_transcription": {"model": "whisper-1"},
                                                                "turn_detection": {"type": "semantic_vad"}}, beta=True), audio_started=False)
    assert beta.raw.encoding == "pcm_alaw" and beta.turn_detection["type"] == "server_vad" and beta.model == "whisper-1"
    assert Transcoder(beta.raw).fmt.session_format.encoding == "pcm_s16le"


@pytest.mark.parametrize(
    "session, param",
    [
        ({}, "session.type"),
        ({"type": "realtime"}, "session.type"),
        ({"type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}}, "session.audio.input.format"),
        ({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 96000}}}}, "session.audio.input.format.rate"),
        ({"type": "transcription", "audio": {"input": {"transcription": {"language": "de"}}}}, "session.audio.input.transcription.language"),
        ({"type": "transcription", "audio": {"input": {"turn_detection": {"type": "magic"}}}}, "session.audio.input.turn_detection.type"),
        ({"type": "transcription", "audio": "pcm"}, "session.audio"),
    ],
)
def test_bad_session_updates(session, param):
    with pytest.raises(rt.RealtimeError) as err:
        rt.apply_update(rt.SessionConfig(), rt.SessionUpdate(session, beta=False), audio_started=False)
    assert err.value.param == param


def test_format_is_fixed_once_audio_flows():
    update = rt.SessionUpdate({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, beta=False)
    with pytest.raises(rt.RealtimeError):
        rt.apply_update(rt.SessionConfig(), update, audio_started=True)
    same = rt.SessionUpdate({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}, beta=False)
    assert rt.apply_update(rt.SessionConfig(), same, audio_started=True).raw.sample_rate == 24000


def test_session_events_validate():
    r = rt.Renderer(config(type="transcription", audio={"input": {"transcription": {"model": "asr", "keywords": ["UADF"]}}}), "sess_abcdef123")
    created, updated = validated([r.created(beta=False), r.updated(beta=False)])
    assert created["session"]["type"] == "transcription" and created["session"]["audio"]["input"]["transcription"]["keywords"] == ["UADF"]
    beta = r.updated(beta=True)
    assert beta["type"] == "transcription_session.updated" and beta["session"]["input_audio_format"] == "pcm16"


# -- rendering ---------------------------------------------------------------------------------------------------
def test_server_vad_turns_become_items():
    r = rt.Renderer(rt.SessionConfig(), "sess_abcdef123")
    out = validated([e for m in script() for e in r.render(m)])
    assert [e["type"].rsplit(".", 1)[-1] if "transcription" in e["type"] else e["type"] for e in out] == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "delta", "delta", "completed",
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "delta", "completed",
    ]
    first, second = out[0]["item_id"], out[6]["item_id"]
    assert first != second and out[8]["previous_item_id"] == first and out[2]["previous_item_id"] is None
    assert (out[0]["audio_start_ms"], out[1]["audio_end_ms"]) == (200, 1650)
    assert [e["delta"] for e in out[3:5]] == ["Hello world,", " how are you?"] and out[5]["transcript"] == "Hello world, how are you?"
    assert out[5]["usage"] == {"type": "duration", "seconds": 1.45}
    assert len({e["event_id"] for e in out}) == len(out)


def test_manual_commit_collects_finals_until_commit():
    r = rt.Renderer(config(type="transcription", audio={"input": {"turn_detection": None}}), "sess_abcdef123")
    r.appended(3.5)
    assert [e for m in script() for e in r.render(m)] == []  # no VAD events, nothing committed yet
    r.commit_requested("c1")
    out = validated(r.commit_done(stream_time=3.5))
    assert [e["type"] for e in out] == ["input_audio_buffer.committed"] + ["conversation.item.input_audio_transcription.delta"] * 3 + [
        "conversation.item.input_audio_transcription.completed"]
    assert out[-1]["transcript"] == "Hello world, how are you? Fine, thanks."
    r.commit_requested("c2")
    with pytest.raises(rt.RealtimeError) as err:
        r.commit_done(stream_time=3.5)
    assert err.value.code == "input_audio_buffer_commit_empty" and err.value.event_id == "c2"
    validated([r.error(err.value)])


def test_commit_mid_utterance_closes_the_item_without_speech_stopped():
    r = rt.Renderer(rt.SessionConfig(), "sess_abcdef123")
    r.appended(1.0)
    r.render(Partial(segment=0, text="so this", start=0.1, end=0.8))
    r.commit_requested(None)
    out = r.render(Final(segment=0, text="So this.", start=0.1, end=0.9, endpoint=True, words=words("So this.", 0.1)))
    assert [e["type"] for e in out][:1] == ["input_audio_buffer.committed"] and out[-1]["transcript"] == "So this."
    assert r.commit_done(stream_time=1.0) == []


def test_commit_of_silence_is_an_empty_item():
    r = rt.Renderer(rt.SessionConfig(), "sess_abcdef123")
    r.appended(0.5)
    r.commit_requested(None)
    out = validated(r.commit_done(stream_time=0.5))
    assert out[0]["type"] == "input_audio_buffer.committed" and out[-1]["transcript"] == "" and out[-1]["usage"]["seconds"] == 0.5


def test_clear_drops_the_open_item_and_its_late_finals():
    r = rt.Renderer(rt.SessionConfig(), "sess_abcdef123")
    r.render(Partial(segment=0, text="scratch that", start=0.0, end=0.7))
    (cleared,) = validated(r.clear(stream_time=1.0))
    assert cleared["type"] == "input_audio_buffer.cleared"
    assert r.render(Final(segment=0, text="Scratch that.", start=0.0, end=0.8, endpoint=True)) == []
    later = r.render(Final(segment=1, text="Keep.", start=1.2, end=1.5, endpoint=True, words=words("Keep.", 1.2)))
    assert later[-1]["transcript"] == "Keep."


def test_daemon_errors_become_error_events():
    r = rt.Renderer(rt.SessionConfig(), "sess_abcdef123")
    (event,) = validated(r.render(Error(code="internal", message="decode failed")))
    assert event["error"]["type"] == "server_error" and event["error"]["code"] == "internal"


# -- the official Realtime client over a loopback socket ----------------------------------------------------------------
def realtime_app(log: list) -> web.Application:
    """A stand-in for the daemon's Realtime route: the pure adapter, the real transcoder, scripted daemon events."""

    async def realtime(request: web.Request) -> web.StreamResponse:
        log.append({"path": request.path_qs, "headers": dict(request.headers)})
        cred = credentials(request.headers, request.query)
        if not token_matches(cred.token, TOKEN):
            return web.json_response({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}, status=401)
        ws = web.WebSocketResponse(protocols=(cred.subprotocol,) if cred.subprotocol else ())
        await ws.prepare(request)
        beta = request.headers.get("OpenAI-Beta") == "realtime=v1"
        renderer = rt.Renderer(rt.SessionConfig(), "sess_0123456789")
        await ws.send_json(renderer.created(beta))
        pending = script()
        appended = 0.0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                event = rt.parse_client_event(msg.data)
                log.append(type(event).__name__)
                out: list[dict] = []
                if isinstance(event, rt.SessionUpdate):
                    renderer.config = rt.apply_update(renderer.config, event, audio_started=appended > 0)
                    out = [renderer.updated(event.beta)]
                elif isinstance(event, rt.Append):
                    pcm = Transcoder(renderer.config.raw).convert(event.audio)
                    seconds = len(pcm) / 2 / renderer.config.raw.sample_rate
                    appended += seconds
                    renderer.appended(seconds)
                    out = [e for m in pending for e in renderer.render(m)]
                    pending = []
                elif isinstance(event, rt.Commit):
                    renderer.commit_requested(event.event_id)
                    out = renderer.commit_done(appended)
                elif isinstance(event, rt.Clear):
                    out = renderer.clear(appended)
            except rt.RealtimeError as err:
                out = [renderer.error(err)]
            for e in out:
                await ws.send_json(e)
        return ws

    app = web.Application()
    app.router.add_get(rt.PATH, realtime)
    return app


def test_official_realtime_client_runs_a_transcription_session():
    log: list = []
    with serve(realtime_app(log)) as address:
        client = OpenAI(base_url=f"http://{address}/v1", api_key=TOKEN)
        with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            assert conn.recv().type == "session.created"
            conn.session.update(session=GA_UPDATE["session"])
            updated = conn.recv()
            assert updated.type == "session.updated" and updated.session.audio.input.turn_detection.silence_duration_ms == 600
            conn.input_audio_buffer.append(audio=base64.b64encode(b"\x00\x00" * 24000).decode())
            events = [conn.recv() for _ in range(11)]
            conn.input_audio_buffer.commit()
            empty = conn.recv()
            conn.input_audio_buffer.clear()
            cleared = conn.recv()
    assert log[0]["path"] == "/v1/realtime?intent=transcription" and log[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert log[1:] == ["SessionUpdate", "Append", "Commit", "Clear"]
    completed = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    assert [e.transcript for e in completed] == ["Hello world, how are you?", "Fine, thanks."]
    assert type(events[0]).__name__ == "InputAudioBufferSpeechStartedEvent" and events[2].item_id == completed[0].item_id
    assert empty.type == "error" and empty.error.code == "input_audio_buffer_commit_empty"
    assert cleared.type == "input_audio_buffer.cleared"


def test_official_realtime_client_wrong_key_is_refused():
    with serve(realtime_app([])) as address:
        client = OpenAI(base_url=f"http://{address}/v1", api_key="sk-wrong")
        with pytest.raises(Exception, match="HTTP 401"):
            with client.realtime.connect(extra_query={"intent": "transcription"}):
                pass

"""Deepgram live wire adapter: query mapping, rendering and client messages, checked against the official
deepgram-sdk (its pydantic models, and its live client over a loopback socket with scripted daemon events)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import WSMsgType, web
from deepgram import AsyncDeepgramClient, DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.socket_client import V1SocketClientResponse
from deepgram.listen.v1.types import (
    ListenV1ConfigureFailure,
    ListenV1ConfigureSuccess,
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from pydantic import TypeAdapter

from streamer.protocol import Error, Final, Finalize, KeepAlive, Stop
from streamer.wire import deepgram as dg
from streamer.wire.auth import credentials, token_matches
from wire_harness import script, serve, words

TOKEN = "dg-secret"
MODELS = {
    "Results": ListenV1Results,
    "Metadata": ListenV1Metadata,
    "SpeechStarted": ListenV1SpeechStarted,
    "UtteranceEnd": ListenV1UtteranceEnd,
    "Error": ListenV1Error,
    "ConfigureSuccess": ListenV1ConfigureSuccess,
    "ConfigureFailure": ListenV1ConfigureFailure,
}


def options(**query: str) -> dg.Options:
    return dg.parse_query({"encoding": "linear16", "sample_rate": "16000", **query}.items())


def validated(messages: list[dict]) -> list[dict]:
    """Each message validates strictly against the SDK's model for its type (not the SDK's lenient fallback)."""
    for m in messages:
        MODELS[m["type"]].model_validate(json.loads(json.dumps(m)))
    return messages


def render_all(opts: dg.Options, events: list) -> list[dict]:
    r = dg.Renderer(opts, "req-1", "tiny.en")
    return validated([m for e in events for m in r.render(e)])


# -- query parameters ------------------------------------------------------------------------------------------
def test_sdk_query_maps_to_session_options():
    query = [
        ("channels", "2"), ("encoding", "mulaw"), ("endpointing", "300"), ("interim_results", "true"),
        ("keyterm", "UADF"), ("keyterm", "Gemma"), ("keywords", "Whisper:2"), ("language", "en-US"), ("model", "nova-3"),
        ("punctuate", "true"), ("sample_rate", "8000"), ("smart_format", "true"), ("tag", "x"), ("utterance_end_ms", "1000"),
        ("vad_events", "true"), ("diarize", "true"), ("no_delay", "true"), ("extra", "team:blue"), ("token", "t"),
    ]  # as deepgram-sdk 7.17 sends them (repeated keyterm), plus LiveKit's no_delay and the v1 ?token=
    o = dg.parse_query(query)
    assert (o.raw.encoding, o.raw.sample_rate, o.raw.channels) == ("pcm_mulaw", 8000, 2)
    assert o.raw.session_format.encoding == "pcm_s16le"
    assert o.interim_results and o.vad_events and o.punctuate and o.smart_format
    assert (o.endpointing_ms, o.utterance_end_ms) == (300, 1000)
    assert o.keyterms == ["UADF", "Gemma", "Whisper"]
    assert o.extra == {"team": "blue"} and o.mode is None and o.model == "nova-3"
    assert any("nova-3" in w for w in o.warnings) and any(w.startswith("no_delay") for w in o.warnings)
    assert o.diarize is True  # mapped: speaker labels on words
    assert not any("token" in w for w in o.warnings)


def test_defaults_and_daemon_modes():
    o = options()
    assert (o.interim_results, o.endpointing_ms, o.utterance_end_ms, o.vad_events, o.formatted) == (False, 10, None, False, False)
    assert options(model="uadf").mode == "uadf" and options(model="asr").warnings == []
    assert options(endpointing="false").endpointing_ms is None
    assert options(encoding="linear32").raw.session_format.encoding == "pcm_f32le"


@pytest.mark.parametrize(
    "query, needle",
    [
        ({"encoding": None}, "encoding is required"),
        ({"encoding": "opus"}, "not supported"),
        ({"sample_rate": None}, "sample_rate is required"),
        ({"sample_rate": "96000"}, "sample_rate must be from"),
        ({"sample_rate": "16k"}, "must be an integer"),
        ({"channels": "3"}, "channels must be from"),
        ({"channels": "2", "multichannel": "true"}, "multichannel"),
        ({"language": "de"}, "only English"),
        ({"language": "multi"}, "only English"),
        ({"interim_results": "yes"}, "true or false"),
        ({"callback": "http://example.com/x"}, "callback is not supported"),
        ({"redact": "pci"}, "redaction"),
        ({"extra": "novalue"}, "key:value"),
    ],
)
def test_bad_query_refused_before_upgrade(query, needle):
    base = {"encoding": "linear16", "sample_rate": "16000"}
    items = [(k, v) for k, v in {**base, **query}.items() if v is not None]
    with pytest.raises(dg.HandshakeError) as err:
        dg.parse_query(items)
    assert err.value.status == 400 and needle in err.value.message
    assert err.value.body("r")["err_code"] == "Bad Request" and err.value.headers("r")["dg-error"] == err.value.message


def test_deepgram_clients_told_apart_from_protocol_v1():
    assert dg.is_deepgram_handshake({"model": "nova-3"}, {})
    assert dg.is_deepgram_handshake({}, {"Authorization": "Token k"})
    assert dg.is_deepgram_handshake({}, {"Sec-WebSocket-Protocol": "token, k"})
    assert not dg.is_deepgram_handshake({"token": "k"}, {"Authorization": "Bearer k"})
    assert not dg.is_deepgram_handshake({}, {})


@pytest.mark.parametrize(
    "headers, query, token, proto",
    [
        ({"Authorization": "Token k1"}, {}, "k1", None),  # SDK api_key
        ({"Authorization": "bearer k2"}, {}, "k2", None),  # SDK access_token (lower-case scheme)
        ({"Sec-WebSocket-Protocol": "token, k3"}, {}, "k3", "token"),  # browsers
        ({"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.k4, openai-beta.realtime-v1"}, {}, "k4", "realtime"),
        ({}, {"token": "k5"}, "k5", None),  # protocol v1 browsers
        ({"Authorization": "Basic abc"}, {}, None, None),
    ],
)
def test_credentials_from_every_place_clients_put_them(headers, query, token, proto):
    c = credentials(headers, query)
    assert (c.token, c.subprotocol) == (token, proto)
    assert token_matches(c.token, token or "other") is (token is not None)
    assert token_matches(None, "")


# -- rendering -------------------------------------------------------------------------------------------------
def test_daemon_events_map_onto_deepgram_messages():
    out = render_all(options(interim_results="true", vad_events="true", utterance_end_ms="1000", punctuate="true"), script())
    kinds = [(m["type"], m.get("is_final"), m.get("speech_final")) for m in out]
    assert kinds == [
        ("SpeechStarted", None, None),
        ("Results", False, False), ("Results", False, False),  # partials: interim results
        ("Results", True, False),  # agreed words: final, utterance goes on
        ("Results", False, False),
        ("Results", True, True), ("UtteranceEnd", None, None),  # endpoint: speech_final, then UtteranceEnd
        ("SpeechStarted", None, None), ("Results", False, False), ("Results", True, True), ("UtteranceEnd", None, None),
        ("Metadata", None, None),
    ]
    first_final = out[3]
    alt = first_final["channel"]["alternatives"][0]
    assert alt["transcript"] == "Hello world," and first_final["start"] == 0.2 and first_final["duration"] == 0.55
    assert [w["word"] for w in alt["words"]] == ["hello", "world"]
    assert [w["punctuated_word"] for w in alt["words"]] == ["Hello", "world,"]
    assert out[0]["timestamp"] == 0.2 and out[6]["last_word_end"] == pytest.approx(0.8 + 0.6 + 0.25)
    assert out[-1]["duration"] == 3.5 and out[-1]["channels"] == 1


def test_without_options_only_finals_and_plain_text():
    out = render_all(options(), script())
    assert [m["type"] for m in out] == ["Results"] * 3 + ["Metadata"]
    assert out[1]["channel"]["alternatives"][0]["transcript"] == "how are you"
    assert "punctuated_word" not in out[1]["channel"]["alternatives"][0]["words"][0]


def test_finalize_marks_from_finalize_not_speech_final():
    r = dg.Renderer(options(), "req", "tiny.en")
    r.finalize_requested()
    (msg,) = validated(r.render(Final(segment=0, text="Stop here.", start=1.0, end=1.6, endpoint=True, words=words("Stop here.", 1.0))))
    assert msg["is_final"] and msg["from_finalize"] and not msg["speech_final"]
    (later,) = r.render(Final(segment=1, text="Next.", start=2.0, end=2.3, endpoint=True, words=words("Next.", 2.0)))
    assert later["speech_final"] and not later["from_finalize"]
    assert r.finalize_done() == []  # no Finalize pending


def test_finalize_with_nothing_pending_is_answered_by_an_empty_final():
    """The utterance ended at a pause before the Finalize came: Deepgram still answers it, empty and `from_finalize`."""
    r = dg.Renderer(options(), "req", "tiny.en")
    r.render(Final(segment=0, text="Done.", start=1.0, end=1.4, endpoint=True, words=words("Done.", 1.0)))
    r.finalize_requested()
    (msg,) = validated(r.finalize_done())
    assert msg["is_final"] and msg["from_finalize"] and not msg["speech_final"]
    assert msg["channel"]["alternatives"][0]["transcript"] == "" and msg["start"] == pytest.approx(1.4, abs=0.01)
    assert r.finalize_done() == []


def test_endpointing_false_never_sets_speech_final():
    out = render_all(options(endpointing="false"), script())
    assert not any(m.get("speech_final") for m in out)


def test_empty_endpoint_final_still_closes_the_utterance():
    r = dg.Renderer(options(utterance_end_ms="1000"), "req", "tiny.en")
    r.render(Final(segment=0, text="All of it", start=0.0, end=0.9, words=words("All of it", 0.0)))
    out = validated(r.render(Final(segment=1, text="", start=0.9, end=0.9, endpoint=True)))
    assert out[0]["speech_final"] and out[0]["channel"]["alternatives"][0]["transcript"] == ""
    assert out[1] == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.85}


def test_errors_and_close_frames():
    r = dg.Renderer(options(), "req", "tiny.en")
    (msg,) = validated(r.render(Error(code="bad_audio", message="odd frame")))
    assert msg["variant"] == "bad_audio"
    assert dg.close_for(Error(code="idle_timeout", message="x"), 1008) == (1011, "NET-0001")
    code, reason = dg.close_for(Error(code="session_too_long", message="x" * 300), 1008)
    assert code == 1008 and reason.startswith("session_too_long: ") and len(reason.encode()) <= 123


def test_metadata_hashes_the_audio():
    r = dg.Renderer(options(), "req", "tiny.en")
    r.observe_audio(b"")
    assert r.metadata(0.0)["sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # as Deepgram sends for no audio
    r.observe_audio(b"\x01\x02")
    assert validated([r.metadata(1.0)])[0]["sha256"] != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_sdk_dispatches_every_rendered_message_to_its_class():
    adapter = TypeAdapter(V1SocketClientResponse)
    out = render_all(options(interim_results="true", vad_events="true", utterance_end_ms="1000"), script())
    for m in out:
        assert type(adapter.validate_python(m)).__name__ == MODELS[m["type"]].__name__


# -- client messages -------------------------------------------------------------------------------------------
def test_client_messages():
    assert isinstance(dg.parse_client_message('{"type": "KeepAlive"}'), KeepAlive)
    assert isinstance(dg.parse_client_message('{"type": "Finalize", "channel": 0}'), Finalize)
    assert isinstance(dg.parse_client_message('{"type": "CloseStream"}'), Stop)
    cfg = dg.parse_client_message('{"type": "Configure", "features": {"punctuate": true}}')
    r = dg.Renderer(options(), "req", "tiny.en")
    assert validated([r.configure(cfg)])[0]["type"] == "ConfigureSuccess" and r.options.punctuate
    assert validated([r.configure_failure("at most 100 keyterms")])[0]["code"] == "INVALID_KEYTERMS"
    assert dg.is_close_frame(b"")


def test_configure_keyterms_become_the_sessions():
    """A Configure's keyterms reach the session as protocol v1's `context` message (validated alike), then the
    answer; past the limits, only a ConfigureFailure."""
    from streamer.protocol import Context
    from streamer.wire.deepgram_adapter import DeepgramAdapter

    adapter = DeepgramAdapter(options(), dg.Renderer(options(), "req", "tiny.en"), 100_000)
    context, reply = adapter.parse('{"type": "Configure", "keyterms": ["Whittemore", " Whittemore ", "UADF"]}', True)
    assert context == Context(keyterms=["Whittemore", "UADF"], context="")
    assert [json.loads(f)["type"] for f in reply.render()] == ["ConfigureSuccess"]
    refused = adapter.parse(json.dumps({"type": "Configure", "keyterms": ["x" * 51]}), True)
    assert refused.error == "bad_keyterms" and json.loads(refused.render()[0])["code"] == "INVALID_KEYTERMS"


@pytest.mark.parametrize("text", ["nope", "[]", '{"type": "keepalive"}', '{"type": "Configure", "keyterms": "a"}', "{" * 10000])
def test_bad_client_messages_get_a_schema_error(text):
    with pytest.raises(dg.SchemaError) as err:
        dg.parse_client_message(text)
    assert ListenV1Error.model_validate(err.value.message).variant == "SchemaError"


# -- the official SDK end to end over a loopback socket ------------------------------------------------------------
def deepgram_app(log: list) -> web.Application:
    """A stand-in for the daemon's Deepgram route: the pure adapter over scripted daemon events."""

    async def listen(request: web.Request) -> web.StreamResponse:
        log.append({"path": request.path, "query": list(request.query.items()), "headers": dict(request.headers)})
        cred = credentials(request.headers, request.query)
        try:
            if not token_matches(cred.token, TOKEN):
                raise dg.UNAUTHORIZED
            opts = dg.parse_query(request.query.items())
        except dg.HandshakeError as err:
            return web.json_response(err.body("req"), status=err.status, headers=err.headers("req"))
        ws = web.WebSocketResponse(protocols=(cred.subprotocol,) if cred.subprotocol else ())
        await ws.prepare(request)
        renderer = dg.Renderer(opts, "req", "tiny.en")
        events = script()
        for event in events[:-1]:
            for m in renderer.render(event):
                await ws.send_json(m)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                renderer.observe_audio(msg.data)
                continue
            try:
                control = dg.parse_client_message(msg.data)
            except dg.SchemaError as err:
                await ws.send_json(err.message)
                continue
            log.append(type(control).__name__)
            if isinstance(control, Finalize):
                renderer.finalize_requested()
                for m in renderer.render(Final(segment=3, text="Last.", start=3.2, end=3.4, endpoint=True, words=words("Last.", 3.2))):
                    await ws.send_json(m)
            elif isinstance(control, Stop):
                for m in renderer.render(events[-1]):
                    await ws.send_json(m)
                await ws.close(code=1000)
        return ws

    app = web.Application()
    app.router.add_get(dg.PATH, listen)
    app.router.add_get(dg.PREFIXED_PATH, listen)
    return app


def environment(address: str, prefix: str = "") -> DeepgramClientEnvironment:
    return DeepgramClientEnvironment(base=f"http://{address}{prefix}", production=f"ws://{address}{prefix}", agent="", agent_rest="")


@pytest.mark.parametrize("prefix", ["", "/deepgram"])
def test_official_sdk_live_client(prefix):
    log: list = []
    with serve(deepgram_app(log)) as address:
        client = DeepgramClient(api_key=TOKEN, environment=environment(address, prefix))
        with client.listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate=16000, channels=1, interim_results=True,
            endpointing=300, utterance_end_ms=1000, vad_events=True, smart_format=True, keyterm=["UADF", "Gemma"],
        ) as conn:
            conn.send_media(b"\x00\x00" * 1600)
            conn.send_keep_alive()
            conn.send_finalize()
            conn.send_close_stream()
            received = list(conn)
    assert log[0]["path"] == f"{prefix}/v1/listen"
    assert log[0]["headers"]["Authorization"] == f"Token {TOKEN}"
    assert ("keyterm", "UADF") in log[0]["query"] and ("keyterm", "Gemma") in log[0]["query"]
    assert log[1:] == ["KeepAlive", "Finalize", "Stop"]
    names = [type(m).__name__ for m in received]
    assert names.count("ListenV1SpeechStarted") == 3 and names.count("ListenV1UtteranceEnd") == 3 and names[-1] == "ListenV1Metadata"
    results = [m for m in received if isinstance(m, ListenV1Results)]
    finals = [m.channel.alternatives[0].transcript for m in results if m.is_final]
    assert finals == ["Hello world,", "how are you?", "Fine, thanks.", "Last."]
    assert [m.speech_final for m in results if m.is_final] == [False, True, True, False]
    assert results[-1].from_finalize and results[-1].channel.alternatives[0].words[0].punctuated_word == "Last."
    assert received[-1].duration == 3.5 and received[-1].sha256 != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_official_sdk_access_token_and_wrong_key():
    log: list = []
    with serve(deepgram_app(log)) as address:
        with DeepgramClient(access_token=TOKEN, environment=environment(address)).listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate="16000"
        ) as conn:
            conn.send_close_stream()
            assert type(list(conn)[-1]).__name__ == "ListenV1Metadata"
        assert log[0]["headers"]["Authorization"] == f"bearer {TOKEN}"

        async def wrong_key() -> None:
            client = AsyncDeepgramClient(api_key="wrong", environment=environment(address))
            async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate="16000"):
                pass

        with pytest.raises(ApiError) as err:  # the async client maps 401; the sync one raises websockets' InvalidStatus
            asyncio.run(wrong_key())
        assert err.value.status_code == 401

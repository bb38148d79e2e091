"""Bad input on each API gets that API's error shape and leaves the other sessions alone; a full daemon is refused
in each API's shape (real daemon, the official SDKs where they expose the answer)."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request

import openai
import pytest
import websockets
from deepgram import DeepgramClient
from openai import OpenAI

from compat_util import clip, environment, get_json, in_thread, v1_session, v1_text
from conftest import COMPAT_TOKEN
from streamer.pipeline import run_stream
from streamutil import metric, metrics, open_ws

DEEPGRAM_QUERY = "encoding=linear16&sample_rate=16000&model=asr"


def deepgram_bad_frames(daemon) -> tuple[list[dict], int]:
    """A hand-written Deepgram client sending frames Deepgram would not parse, then CloseStream."""

    async def run() -> tuple[list[dict], int]:
        url = f"ws://{daemon.host}:{daemon.port}/deepgram/v1/listen?{DEEPGRAM_QUERY}"
        async with websockets.connect(url, additional_headers={"Authorization": f"Token {COMPAT_TOKEN}"}) as ws:
            for frame in ("nope", '{"type": "Configure", "features": {"punctuate": "yes"}}', b"\x00\x00\x00"):
                await ws.send(frame)
            await ws.send('{"type": "CloseStream"}')
            return [json.loads(m) async for m in ws], ws.close_code

    return asyncio.run(run())


def realtime_bad_events(daemon) -> list[dict]:
    async def run() -> list[dict]:
        url = f"ws://{daemon.host}:{daemon.port}/v1/realtime?intent=transcription"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {COMPAT_TOKEN}"}) as ws:
            await ws.send("{not json")
            await ws.send(json.dumps({"type": "session.update", "event_id": "e1", "session": {"type": "realtime"}}))
            await ws.send(b"\x00\x01")
            return [json.loads(await ws.recv()) for _ in range(4)]

    return asyncio.run(run())


def test_bad_input_on_each_api_leaves_a_live_session_alone(compat_daemon, engine):
    audio, _ = clip("01jc020j")
    live = in_thread(v1_session, compat_daemon, audio, False)  # a protocol v1 client streaming meanwhile
    before = metrics(compat_daemon, {"Authorization": f"Bearer {COMPAT_TOKEN}"})

    request = urllib.request.Request(f"{compat_daemon.http_url}/deepgram/v1/listen?encoding=opus&sample_rate=16000",
                                     headers={"Authorization": f"Token {COMPAT_TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    body = json.loads(refused.value.read())
    assert refused.value.code == 400 and body["err_code"] == "Bad Request" and "opus" in body["err_msg"]

    messages, code = deepgram_bad_frames(compat_daemon)
    assert [(m["type"], m.get("variant")) for m in messages] == [
        ("Error", "SchemaError"), ("Error", "SchemaError"), ("Error", "bad_audio"), ("Metadata", None)
    ] and code == 1000

    client = OpenAI(base_url=f"{compat_daemon.http_url}/v1", api_key=COMPAT_TOKEN, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="asr", file=("x.webm", b"\x1a\x45\xdf\xa3 truncated"))
    assert err.value.body["param"] == "file"

    events = realtime_bad_events(compat_daemon)
    assert [e["type"] for e in events] == ["session.created", "error", "error", "error"]
    assert events[1]["error"]["code"] == "invalid_json"
    assert events[2]["error"]["param"] == "session.type" and events[2]["error"]["event_id"] == "e1"

    received = live()
    assert v1_text(received) == run_stream(engine, engine.new_processor("asr"), audio).text
    assert received[-1]["type"] == "end" and not [m for m in received if m["type"] == "error"]
    after = metrics(compat_daemon, {"Authorization": f"Bearer {COMPAT_TOKEN}"})
    counted = lambda code: metric(after, "uadf_errors_total", code=code) - metric(before, "uadf_errors_total", code=code)  # noqa: E731
    assert counted("bad_message") == 2 and counted("bad_audio") == 1 and counted("invalid_json") == 1
    assert get_json(compat_daemon, "/healthz")["sessions"] == 0


def test_a_full_daemon_is_refused_in_each_api_shape(compat_daemon):
    """All three sessions taken by protocol v1 clients: OpenAI answers 429 with Retry-After, Deepgram an Error
    then close 1008, Realtime an error event at the first append (when its session would start), then 1008."""

    async def hold(ready: asyncio.Event, release: asyncio.Event) -> None:
        async with open_ws(compat_daemon.ws_url, COMPAT_TOKEN) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}))
            await ws.recv()
            ready.set()
            await release.wait()

    async def run() -> None:
        events = [(asyncio.Event(), asyncio.Event()) for _ in range(3)]
        holders = [asyncio.create_task(hold(r, s)) for r, s in events]
        await asyncio.gather(*(r.wait() for r, _ in events))
        try:
            await asyncio.to_thread(refused_everywhere, compat_daemon)
        finally:
            for _, release in events:
                release.set()
            await asyncio.gather(*holders)

    asyncio.run(run())


def refused_everywhere(daemon) -> None:
    client = OpenAI(base_url=f"{daemon.http_url}/v1", api_key=COMPAT_TOKEN, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        client.audio.transcriptions.create(model="asr", file=("a.wav", b"RIFF...."))
    assert err.value.response.headers["retry-after"] == "2" and err.value.code == "rate_limit_exceeded"

    deepgram = DeepgramClient(api_key=COMPAT_TOKEN, environment=environment(daemon))
    with deepgram.listen.v1.connect(model="asr", encoding="linear16", sample_rate=16000) as conn:
        error = conn.recv()
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            conn.recv()
    assert error.type == "Error" and error.variant == "busy" and closed.value.rcvd.code == 1008

    with client.realtime.connect(extra_query={"intent": "transcription"}) as rt:
        assert rt.recv().type == "session.created"
        rt.input_audio_buffer.append(audio=base64.b64encode(b"\0\0" * 2400).decode())
        busy = rt.recv()
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            rt.recv()
    assert busy.type == "error" and busy.error.code == "busy" and closed.value.rcvd.code == 1008


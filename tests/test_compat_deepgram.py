"""Deepgram live streaming on the real daemon, through the official deepgram-sdk live client (docs/compat.md)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request

import pytest
import websockets
from deepgram import AsyncDeepgramClient, DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.listen.v1.types import ListenV1Configure

from compat_util import environment, in_thread, paced, pcm16, speech, v1_session, v1_text
from conftest import COMPAT_TOKEN, wer
from streamutil import disk_finals
from streamer.audio import SAMPLE_RATE


def stream_with_sdk(daemon, audio) -> list:
    """The clip in real time through the SDK's live client, then Finalize and CloseStream; every message."""
    client = DeepgramClient(api_key=COMPAT_TOKEN, environment=environment(daemon))
    received: list = []
    with client.listen.v1.connect(
        model="asr", encoding="linear16", sample_rate=SAMPLE_RATE, channels=1, interim_results=True, endpointing=300,
        utterance_end_ms=1000, vad_events=True, smart_format=True, keyterm=["autopsy"],
    ) as conn:
        reader = threading.Thread(target=lambda: received.extend(conn), daemon=True)  # ends at the close (1000)
        reader.start()
        for frame in paced(pcm16(audio), 2 * SAMPLE_RATE):
            conn.send_media(frame)
        conn.send_finalize()
        conn.send_close_stream()
        reader.join(120)
    return received


def test_sdk_live_client_streams_like_protocol_v1(compat_daemon):
    """Interim and final Results, speech_final at the pause, UtteranceEnd, Finalize's from_finalize, CloseStream's
    Metadata and a normal close; the same WER as a protocol v1 client streaming the same audio beside it."""
    audio, texts = speech("01jc020j", "40dc021d", pause=2.5)  # a pause a busy decoder still sees (0.5 s ends an utterance)
    v1 = in_thread(v1_session, compat_daemon, audio)
    received = stream_with_sdk(compat_daemon, audio)
    reference = " ".join(texts)

    kinds = [m.type for m in received]
    shown = [(m.type, m.is_final, m.speech_final, m.from_finalize, m.channel.alternatives[0].transcript) if m.type == "Results" else m.type
             for m in received]
    assert kinds[0] == "SpeechStarted" and kinds[-1] == "Metadata", shown
    results = [m for m in received if m.type == "Results"]
    interim = [m for m in results if not m.is_final and m.channel.alternatives[0].transcript]
    finals = [m for m in results if m.is_final]
    assert interim and finals, shown
    # the pause after the first clip ends an utterance: speech_final, then UtteranceEnd, before the second clip's words
    pause = next((i for i, m in enumerate(received) if m.type == "Results" and m.speech_final), None)
    assert pause is not None and received[pause + 1].type == "UtteranceEnd" and received[pause + 1].last_word_end <= 5.0, shown
    assert finals[-1].from_finalize and not finals[-1].speech_final, shown  # the Finalize after the last words
    words = [w for m in finals for w in m.channel.alternatives[0].words]
    assert words and all(w.word == w.word.lower() and w.punctuated_word and w.start <= w.end for w in words), words
    metadata = received[-1]
    assert metadata.duration == pytest.approx(len(audio) / SAMPLE_RATE, abs=0.01)

    text = " ".join(m.channel.alternatives[0].transcript for m in finals if m.channel.alternatives[0].transcript)
    v1_messages = v1()
    assert abs(wer([reference], [text]) - wer([reference], [v1_text(v1_messages)])) <= 0.01, (text, v1_text(v1_messages))
    # a Deepgram stream is a daemon session: request_id is its id, its finals are on disk under it (the
    # transcript endpoint also wants the session's resume secret, which Deepgram's API has no place for)
    stored = disk_finals(compat_daemon.data_dir, metadata.request_id)
    assert " ".join(f["text"] for f in stored if f["text"]) == text


def test_keepalive_configure_on_the_shared_path_and_wrong_keys(compat_daemon):
    """On `/v1/listen` (shared with protocol v1) with the SDK's access-token auth: KeepAlive, Configure answered
    (keyterms taken within the limits, refused past them),
    an empty stream closed normally; a wrong key is refused with Deepgram's 401 before the upgrade."""
    client = DeepgramClient(access_token=COMPAT_TOKEN, environment=environment(compat_daemon, prefix=""))
    with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=SAMPLE_RATE) as conn:
        conn.send_media(b"\x00\x00" * 1600)
        conn.send_keep_alive()
        conn.send_configure(ListenV1Configure(features={"punctuate": True}))
        conn.send_configure(ListenV1Configure(keyterms=["UADF"]))
        conn.send_configure(ListenV1Configure(keyterms=[f"term {i}" for i in range(101)]))
        conn.send_close_stream()
        received = list(conn)
    assert [m.type for m in received] == ["ConfigureSuccess", "ConfigureSuccess", "ConfigureFailure", "Metadata"]
    assert received[2].code == "INVALID_KEYTERMS" and "at most 100" in received[2].description
    assert received[3].duration == 0.1 and "model 'nova-3'" in received[3].warnings[0]

    async def wrong_key() -> None:
        async with AsyncDeepgramClient(api_key="wrong", environment=environment(compat_daemon)).listen.v1.connect(
            model="asr", encoding="linear16", sample_rate=SAMPLE_RATE
        ):
            pass

    with pytest.raises(ApiError) as err:
        asyncio.run(wrong_key())
    assert err.value.status_code == 401
    # the SDK keeps no body: Deepgram's error body, as a plain HTTP client sees it
    request = urllib.request.Request(f"{compat_daemon.http_url}/deepgram/v1/listen?encoding=linear16&sample_rate=16000",
                                     headers={"Authorization": "Token wrong"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401 and json.loads(refused.value.read())["err_code"] == "INVALID_AUTH"
    assert refused.value.headers["dg-error"] == "Invalid credentials."


def test_browser_subprotocol_key_and_empty_frame_close(compat_daemon):
    """A browser puts the key in the subprotocols (`token`, KEY): the daemon selects `token`. Deepgram's
    deprecated empty binary frame closes the stream like CloseStream."""

    async def run() -> tuple[str | None, list[dict], int]:
        url = f"ws://{compat_daemon.host}:{compat_daemon.port}/deepgram/v1/listen?encoding=linear16&sample_rate=16000"
        async with websockets.connect(url, subprotocols=["token", COMPAT_TOKEN]) as ws:
            await ws.send(b"\x00\x00" * 800)
            await ws.send(b"")
            messages = [json.loads(m) async for m in ws]
            return ws.subprotocol, messages, ws.close_code

    subprotocol, messages, code = asyncio.run(run())
    assert subprotocol == "token" and [m["type"] for m in messages] == ["Metadata"] and code == 1000

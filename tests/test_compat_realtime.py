"""OpenAI Realtime transcription sessions on the real daemon, through the openai package's Realtime clients
(GA and beta; docs/compat.md)."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
import soxr
import websockets
from openai import OpenAI

from compat_util import clip, paced, pcm16, silence
from conftest import COMPAT_TOKEN, wer

RATE = 24000  # OpenAI's PCM rate: resampled by the daemon like any other
COMPLETED = "conversation.item.input_audio_transcription.completed"


def at_24k(audio: np.ndarray) -> bytes:
    return pcm16(soxr.resample(audio, 16000, RATE).astype(np.float32))


def append(conn, data: bytes) -> None:
    """Append in 100 ms events, in real time as a microphone gives them."""
    for frame in paced(data, 2 * RATE):
        conn.input_audio_buffer.append(audio=base64.b64encode(frame).decode())


def events_until(conn, kind: str, count: int = 1) -> list:
    """Events up to the `count`-th of `kind`."""
    out: list = []
    while sum(e.type == kind for e in out) < count:
        out.append(conn.recv())
    return out


def test_transcription_session_end_to_end(compat_daemon):
    """server_vad closes the first utterance at its pause; a commit closes the second; bad events get errors with
    their event_id and the session goes on; a clear drops what was appended before it."""
    (a, text_a), (b, text_b) = clip("206o0103"), clip("ljspeech_LJ001-0002")
    client = OpenAI(base_url=f"{compat_daemon.http_url}/v1", api_key=COMPAT_TOKEN, max_retries=0)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(session={
            "type": "transcription",
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": {"model": "asr", "language": "en", "prompt": "an inquest"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }},
        })
        updated = conn.recv()
        assert updated.type == "session.updated" and updated.session.audio.input.format.rate == RATE

        append(conn, at_24k(np.concatenate([a, silence(1.5)])))
        conn.send({"type": "input_audio_buffer.append", "audio": "%%% not base64", "event_id": "evt_bad"})
        conn.send({"type": "response.create", "event_id": "evt_conv"})
        first = events_until(conn, COMPLETED)
        append(conn, at_24k(b))
        conn.input_audio_buffer.commit()
        second = events_until(conn, COMPLETED)

        append(conn, at_24k(a[:8000]))
        conn.input_audio_buffer.clear()
        conn.input_audio_buffer.commit()
        after_clear = events_until(conn, "error")

    errors = {e.error.event_id: e.error for e in first + second if e.type == "error"}
    assert errors["evt_bad"].param == "audio" and errors["evt_conv"].code == "unsupported_event"
    items = [[e for e in events if e.type != "error"] for events in (first, second)]
    assert [e.type for e in items[0]][:3] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    assert "input_audio_buffer.speech_stopped" not in [e.type for e in items[1]]  # closed by the commit
    assert items[1][-2].type == "conversation.item.input_audio_transcription.delta"
    transcripts = [events[-1].transcript for events in items]
    assert wer([text_a, text_b], transcripts) < 0.25, transcripts
    assert items[1][-1].item_id != items[0][-1].item_id and all(e.item_id == items[1][-1].item_id for e in items[1])
    assert [e.type for e in after_clear] == ["input_audio_buffer.cleared", "error"]
    assert after_clear[-1].error.code == "input_audio_buffer_commit_empty"


def test_beta_client_and_wrong_key(compat_daemon):
    """The beta client (`OpenAI-Beta: realtime=v1`) gets the beta event names; silence commits to an empty item."""
    client = OpenAI(base_url=f"{compat_daemon.http_url}/v1", api_key=COMPAT_TOKEN,
                    websocket_base_url=f"ws://{compat_daemon.host}:{compat_daemon.port}/v1", max_retries=0)
    with client.beta.realtime.connect(model="asr", extra_query={"intent": "transcription"}) as conn:
        assert json.loads(conn.recv_bytes())["type"] == "transcription_session.created"  # no SDK class for it
        conn.transcription_session.update(session={"input_audio_format": "pcm16", "turn_detection": None})
        updated = json.loads(conn.recv_bytes())
        assert updated["type"] == "transcription_session.updated" and updated["session"]["turn_detection"] is None
        conn.input_audio_buffer.append(audio=base64.b64encode(b"\0\0" * 7200).decode())  # 0.3 s of silence
        conn.input_audio_buffer.commit()
        events = [conn.recv(), conn.recv()]
    assert [e.type for e in events] == ["input_audio_buffer.committed", COMPLETED] and events[1].transcript == ""

    wrong = OpenAI(base_url=f"{compat_daemon.http_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(Exception, match="HTTP 401"):
        with wrong.realtime.connect(extra_query={"intent": "transcription"}):
            pass


def test_browser_subprotocol_key(compat_daemon):
    """Browsers cannot set headers: the key comes as `openai-insecure-api-key.KEY`, the daemon selects `realtime`."""

    async def run() -> tuple[str | None, dict]:
        url = f"ws://{compat_daemon.host}:{compat_daemon.port}/v1/realtime?intent=transcription"
        async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{COMPAT_TOKEN}"]) as ws:
            return ws.subprotocol, json.loads(await ws.recv())

    subprotocol, created = asyncio.run(run())
    assert subprotocol == "realtime" and created["type"] == "session.created"

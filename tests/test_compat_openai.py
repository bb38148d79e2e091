"""OpenAI's transcription API on the real daemon, through the official openai package (docs/compat.md)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf
import srt
import webvtt
from openai import OpenAI

from compat_util import get_json
from conftest import COMPAT_TOKEN, manifest, wer
from streamer.audio import SAMPLE_RATE
from streamer.media import decode_audio
from streamer.pipeline import run_stream
from test_media import encode


@pytest.fixture(scope="module")
def client(compat_daemon) -> OpenAI:
    return OpenAI(base_url=f"{compat_daemon.http_url}/v1", api_key=COMPAT_TOKEN, max_retries=0)


@pytest.fixture(scope="module")
def clips() -> dict[str, dict]:
    return {e["id"]: e for e in manifest("speech-dev") if e["id"] in ("01jc020j", "ljspeech_LJ001-0008", "ljspeech_LJ001-0013")}


def in_process(engine, data: bytes) -> str:
    """What a live client streaming the same audio gets: the in-process drive loop on the decoded upload."""
    return run_stream(engine, engine.new_processor("asr"), decode_audio(data)).text


def test_verbose_json_words_and_segments_equal_a_live_stream(client, clips, engine, compat_daemon):
    data = Path(clips["01jc020j"]["path"]).read_bytes()
    raw = client.audio.transcriptions.with_raw_response.create(
        model="asr", file=("clip.wav", data), response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    result = raw.parse()
    assert result.text == in_process(engine, data) and wer([clips["01jc020j"]["text"]], [result.text]) < 0.2
    assert result.duration == pytest.approx(clips["01jc020j"]["seconds"], abs=0.01)
    starts = [w.start for w in result.words]
    assert len(result.words) >= 8 and starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= result.duration and w.word.strip() == w.word for w in result.words)
    assert " ".join(s.text.strip() for s in result.segments) == result.text
    # an upload is a daemon session: its finals are on disk under the id in X-Session-Id (X-Resume-Token reads them)
    stored = get_json(compat_daemon, f"/v1/sessions/{raw.headers['x-session-id']}/transcript?resume_token={raw.headers['x-resume-token']}")
    assert " ".join(f["text"] for f in stored["finals"] if f["text"]) == result.text


def test_json_text_srt_vtt_and_streaming(client, clips, engine):
    data = Path(clips["ljspeech_LJ001-0008"]["path"]).read_bytes()
    expected = in_process(engine, data)
    assert client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", data)).text == expected
    assert client.audio.transcriptions.create(model="asr", file=("clip.wav", data), response_format="text") == expected + "\n"

    cues = list(srt.parse(client.audio.transcriptions.create(model="asr", file=("clip.wav", data), response_format="srt")))
    assert " ".join(c.content for c in cues) == expected and all(c.start < c.end for c in cues)
    vtt = webvtt.from_string(client.audio.transcriptions.create(model="asr", file=("clip.wav", data), response_format="vtt"))
    assert " ".join(c.text for c in vtt.captions) == expected and vtt.captions[0].start_in_seconds >= 0

    events = list(client.audio.transcriptions.create(model="asr", file=("clip.wav", data), stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and len(events) > 1
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == expected


def test_compressed_upload_transcribes_like_the_wav(client, clips):
    clip = clips["ljspeech_LJ001-0013"]
    audio, _ = sf.read(clip["path"], dtype="float32")
    opus = encode(audio, "ogg", "libopus", 48000)
    text = client.audio.transcriptions.create(model="asr", file=("clip.ogg", opus), response_format="text")
    assert wer([clip["text"]], [text]) < 0.2


def test_models_and_wrong_key(client, compat_daemon):
    assert [m.id for m in client.models.list()] == ["tiny.en", "asr"]
    wrong = OpenAI(base_url=f"{compat_daemon.http_url}/v1", api_key="sk-wrong-key-1234", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.audio.transcriptions.create(model="asr", file=("a.wav", b"RIFF"))
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key" and "sk-...1234" in err.value.message
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * SAMPLE_RATE), np.float32), SAMPLE_RATE, format="FLAC")
    return buf.getvalue()


@pytest.mark.parametrize(
    "fields, file, error, needle",
    [
        ({}, ("a.mp3", b"not audio at all" * 100), openai.BadRequestError, "Invalid file"),
        ({}, ("big.wav", b"\0" * 1_200_000), openai.APIStatusError, "larger than the limit of 1000000 bytes"),  # limit set by the fixture
        ({}, ("long.flac", wav(25.0)), openai.BadRequestError, "longer than the limit of 20 s"),
        ({"response_format": "diarized_xml"}, ("a.wav", wav(1.0)), openai.BadRequestError, "response_format"),
        ({"model": "uadf"}, ("a.wav", wav(1.0)), openai.BadRequestError, "needs an LLM"),  # no LLM on this daemon
        ({"language": "de"}, ("a.wav", wav(1.0)), openai.BadRequestError, "only English"),
    ],
)
def test_bad_uploads_get_openai_errors(client, fields, file, error, needle):
    with pytest.raises(error) as err:
        client.audio.transcriptions.create(**{"model": "asr", "file": file, **fields})
    assert needle in err.value.message and err.value.body["type"] == "invalid_request_error"
    if err.value.status_code == 413:
        assert err.value.body["param"] == "file"

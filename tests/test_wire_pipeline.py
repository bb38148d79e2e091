"""The wire renderings fed by the real pipeline (tiny.en, asr mode): uploads decoded from MP3/Opus transcribe as
the WAV does, and the real finals and partials render into messages the SDKs' models accept."""

from __future__ import annotations

import json

import pytest
from deepgram.listen.v1.socket_client import V1SocketClientResponse
from openai.types.audio import TranscriptionVerbose
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from conftest import manifest, wer
from streamer.audio import load_audio
from streamer.media import decode_audio
from streamer.pipeline import run_stream
from streamer.protocol import End
from streamer.wire import deepgram as dg
from streamer.wire import openai_realtime as rt
from streamer.wire import openai_transcriptions as ot
from test_media import encode


@pytest.fixture(scope="module")
def clips():
    return manifest("speech-dev")[:2]


@pytest.mark.parametrize("container, codec, rate", [("mp3", "libmp3lame", 22050), ("ogg", "libopus", 48000)])
def test_decoded_uploads_transcribe_like_the_wav(engine, clips, container, codec, rate):
    refs, wav_hyps, upload_hyps = [], [], []
    for clip in clips:
        audio = load_audio(clip["path"])
        refs.append(clip["text"])
        wav_hyps.append(run_stream(engine, engine.new_processor("asr"), audio).text)
        upload_hyps.append(run_stream(engine, engine.new_processor("asr"), decode_audio(encode(audio, container, codec, rate))).text)
    assert wer(refs, upload_hyps) <= wer(refs, wav_hyps) + 0.05, (wav_hyps, upload_hyps)


def test_real_events_render_into_valid_sdk_messages(engine, clips):
    events = []
    result = run_stream(engine, engine.new_processor("asr"), load_audio(clips[0]["path"]), on_event=events.append)
    assert result.finals and any(f.words for f in result.finals)

    opts = dg.parse_query([("encoding", "linear16"), ("sample_rate", "16000"), ("interim_results", "true"), ("vad_events", "true"),
                           ("utterance_end_ms", "1000"), ("smart_format", "true")])
    renderer = dg.Renderer(opts, "sess", "tiny.en")
    messages = [m for e in [*events, End(session_id="sess", finals=len(result.finals), audio_seconds=result.audio_seconds)] for m in renderer.render(e)]
    deepgram = TypeAdapter(V1SocketClientResponse)
    parsed = [deepgram.validate_python(json.loads(json.dumps(m))) for m in messages]
    finals = [p.channel.alternatives[0] for p in parsed if type(p).__name__ == "ListenV1Results" and p.is_final]
    assert " ".join(a.transcript for a in finals if a.transcript) == result.text
    assert all(w.word == w.word.strip().lower() and w.punctuated_word == w.punctuated_word.strip() for a in finals for w in a.words)

    request = ot.parse_fields([("model", "whisper-1"), ("response_format", "verbose_json"), ("timestamp_granularities[]", "word"),
                               ("timestamp_granularities[]", "segment")])
    body, _ = ot.render(request, result.finals, result.audio_seconds)
    verbose = TranscriptionVerbose.model_validate_json(body)
    assert verbose.text == result.text and len(verbose.words) == sum(len(f.words) for f in result.finals)

    realtime = rt.Renderer(rt.SessionConfig(), "sess_0123456789")
    events_out = [x for e in events for x in realtime.render(e)]
    adapter = TypeAdapter(RealtimeServerEvent)
    for x in events_out:
        adapter.validate_python(x)
    completed = [x["transcript"] for x in events_out if x["type"].endswith("transcription.completed")]
    assert result.finals[-1].endpoint  # the flush ends the last utterance, so every final is in an item
    assert " ".join(t for t in completed if t) == result.text

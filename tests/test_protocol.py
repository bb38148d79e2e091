"""Protocol v1 parsing and audio conversion: pure logic."""

import json

import numpy as np
import pytest

from streamer.audio import AudioConverter, AudioFormat
from streamer.errors import StreamError
from core.types import Mode, Word
from streamer.protocol import Final, Finalize, KeepAlive, Start, Stop, parse_client_message, to_dict


def start(**kw) -> str:
    return json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, **kw})


def test_start_round_trip():
    msg = parse_client_message(start(mode="uadf", session_id="ab" * 16, resume_from=3))
    assert isinstance(msg, Start) and msg.mode is Mode.UADF and msg.session_id == "ab" * 16 and msg.resume_from == 3
    assert parse_client_message(json.dumps(msg.to_dict())) == msg


@pytest.mark.parametrize("kind, cls", [("finalize", Finalize), ("keepalive", KeepAlive), ("stop", Stop)])
def test_control_messages(kind, cls):
    assert isinstance(parse_client_message(json.dumps({"type": kind})), cls)


@pytest.mark.parametrize(
    "text, code",
    [
        ("{", "bad_message"),
        ('"start"', "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type": "nope"}', "unknown_type"),
        (start(sample_rate=7999), "bad_sample_rate"),
        (start(sample_rate=96000), "bad_sample_rate"),
        (start(sample_rate=16000.5), "bad_sample_rate"),
        (start(sample_rate=True), "bad_sample_rate"),
        (start(encoding="opus"), "bad_encoding"),
        (start(channels=0), "bad_channels"),
        (start(mode="fast"), "bad_mode"),
        (start(session_id="../../etc/passwd"), "bad_message"),
        (start(resume_from=-1), "bad_message"),
        (start(language="fr"), "bad_message"),
        ('{"type": "start"}', "bad_sample_rate"),
        ("[" * 100000, "bad_message"),
    ],
)
def test_bad_messages_have_stable_codes(text, code):
    with pytest.raises(StreamError) as err:
        parse_client_message(text)
    assert err.value.code == code and err.value.message


def test_final_serialisation_rounds_times():
    f = Final(segment=2, text="hi there", start=1.23456, end=2.0, endpoint=True, words=[Word("hi", 1.23456, 1.5, 0.91234)])
    d = to_dict(f)
    assert d["type"] == "final" and d["start"] == 1.235 and d["words"][0]["probability"] == 0.912 and d["words"][0]["fused"] is False


def test_converter_resamples_48k_stereo_to_16k_mono():
    rate = 48000
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1)
    conv = AudioConverter(AudioFormat(rate, "pcm_s16le", 2))
    pcm = (stereo * 32767).astype("<i2").tobytes()
    out = np.concatenate([conv.decode(pcm[i : i + 9600]) for i in range(0, len(pcm), 9600)] + [conv.flush()])
    assert abs(len(out) - 16000) <= 32
    spectrum = np.abs(np.fft.rfft(out[1000:15000]))
    peak_hz = np.argmax(spectrum) * 16000 / len(out[1000:15000])
    assert abs(peak_hz - 440) < 3


def test_converter_rejects_partial_frames_and_nan():
    s16 = AudioConverter(AudioFormat(16000, "pcm_s16le", 2))
    with pytest.raises(StreamError) as err:
        s16.decode(b"\x00" * 6)
    assert err.value.code == "bad_audio"
    f32 = AudioConverter(AudioFormat(16000, "pcm_f32le", 1))
    with pytest.raises(StreamError) as err:
        f32.decode(np.array([0.1, np.nan], "<f4").tobytes())
    assert err.value.code == "bad_audio"
    assert f32.decode(np.array([0.1, 5.0], "<f4").tobytes()).max() == 1.0

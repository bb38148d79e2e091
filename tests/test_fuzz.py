"""Property-based tests (hypothesis): random frames and message sequences against the live daemon.

The live tests compare every error the server sends with an independent model of protocol v1
(docs/protocol.md): which code each frame must get, in order, and which close code ends the
connection. Afterwards the daemon must still serve a normal session, with no `internal` error counted.
"""

from __future__ import annotations

import asyncio
import json
import math
import re

import numpy as np
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import wer
from streamer.audio import AudioConverter, AudioFormat
from streamer.errors import StreamError
from streamer.wire.v1 import V1Adapter
from streamutil import ERROR_CODES, close_code, metric, metrics, open_ws, recv, reference, speech, start

MAX_FRAME = 262144  # the shared daemon's server.max_frame_bytes
MODES = ("asr", "shallow", "uadf", "uadf-llm")
SENTINEL = json.dumps({"type": "x-sync"})  # an unknown type: its error marks the end of a batch

# -- strategies ------------------------------------------------------------------------------------
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


def field(good: list, bad: list):
    """A start field: mostly plausible values, sometimes wrong ones, sometimes absent."""
    return st.one_of(st.sampled_from(good), st.sampled_from(bad), json_scalars, st.just(KeyError))


start_messages = st.fixed_dictionaries(
    {
        "type": st.just("start"),
        "sample_rate": field([8000, 16000, 44100, 48000], [7999, 48001, 0, -16000, 16000.0, True, "16000", 10**30]),
        "encoding": field(["pcm_s16le", "pcm_f32le"], ["pcm_s24le", "PCM_S16LE", "", 5]),
        "channels": field([1, 2], [0, 3, -1, True, 1.0, "1"]),
        "mode": field(["asr"] * 6, ["uadf", "shallow", "uadf-llm", "magic", 1]),
        "session_id": st.one_of(
            st.just(KeyError), st.just(KeyError),
            st.sampled_from(["deadbeef" * 4, "DEADBEEF" * 4, "é" * 32, "no/such", "", "a" * 65, "a" * 300, 7]),
        ),
        "resume_token": st.one_of(st.just(KeyError), st.sampled_from(["x" * 43, "", 5])),
        "resume_from": field([0, 1], [-1, 1.5, "2"]),
        "language": field(["en", ""], ["de", 3]),
    }
).map(lambda d: {k: v for k, v in d.items() if v is not KeyError})

controls = st.builds(
    lambda kind, extra: {"type": kind, **extra},
    st.sampled_from(["stop", "finalize", "keepalive", "dance", "", "START", "Stop"]),
    st.dictionaries(st.text(max_size=6).filter(lambda k: k != "type"), json_scalars, max_size=2),
)


text_frames = st.one_of(
    st.text(max_size=120),
    json_values.map(json.dumps),
    controls.map(json.dumps),
    start_messages.map(json.dumps),
    st.sampled_from(["\ufeff{}", "{}" * 3, '{"type": "start"}']),
    st.sampled_from(["deep-list", "deep-object", "huge-int"]).map(  # built lazily: small reprs for hypothesis
        lambda k: {"deep-list": "[" * 5000, "deep-object": "{" + '"a":' * 3000, "huge-int": '{"type": "start", "sample_rate": ' + "7" * 5000 + "}"}[k]
    ),
)
small_binary_frames = st.one_of(
    st.binary(max_size=3000),
    st.sampled_from([b"", b"\x00" * 3, np.array([np.nan, 0.5], "<f4").tobytes(), np.array([np.inf] * 4, "<f4").tobytes()]),
    st.lists(st.floats(width=32), min_size=1, max_size=64).map(lambda xs: np.array(xs, "<f4").tobytes()),
)
binary_frames = st.one_of(small_binary_frames, st.just(MAX_FRAME + 2).map(lambda n: b"\x7f" * n))
frames = st.one_of(text_frames, binary_frames)


# -- the model ---------------------------------------------------------------------------------------
def _kind_ok(value, kind) -> bool:
    return not isinstance(value, bool) and isinstance(value, kind)


def parser_error(obj: dict) -> tuple[str | None, int | None]:
    """(error code, close code) the protocol's validation gives a start message, per docs/protocol.md."""
    for key, kind, code in (("sample_rate", int, "bad_sample_rate"), ("encoding", str, "bad_encoding"), ("channels", int, "bad_channels")):
        if key not in obj or not _kind_ok(obj[key], kind):
            return code, 1003
    if obj["encoding"] not in ("pcm_s16le", "pcm_f32le"):
        return "bad_encoding", 1003
    if not 8000 <= obj["sample_rate"] <= 48000:
        return "bad_sample_rate", 1003
    if obj["channels"] not in (1, 2):
        return "bad_channels", 1003
    if "mode" in obj and (not _kind_ok(obj["mode"], str) or obj["mode"] not in MODES):
        return "bad_mode", 1003
    sid = obj.get("session_id")
    if "session_id" in obj and (not _kind_ok(sid, str) or not re.fullmatch("[0-9a-f]{32}", sid)):
        return "bad_message", None
    if "resume_token" in obj and not _kind_ok(obj["resume_token"], str):
        return "bad_message", None
    if "resume_from" in obj and (not _kind_ok(obj["resume_from"], int) or obj["resume_from"] < 0):
        return "bad_message", None
    if "language" in obj and (not _kind_ok(obj["language"], str) or obj["language"] not in ("", "en")):
        return "bad_message", None
    return None, None


def expected_start(obj: dict) -> tuple[str | None, int | None]:
    """(error code, close code) the test daemon gives a start message; (None, None) when it opens a session."""
    code, close = parser_error(obj)
    if code:
        return code, close
    if obj.get("session_id"):
        return "unknown_session", 1008  # the fuzz ids never name a stored session
    if obj.get("mode", "asr") != "asr":
        return "bad_mode", 1003  # the test daemon has no LLM
    return None, None


def classify_text(text: str):
    """'bad_message' | 'unknown_type' | 'stop' | 'finalize' | 'keepalive' | the start object."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME:
        return "frame_too_large"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "bad_message"
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return "bad_message"
    if obj["type"] in ("stop", "finalize", "keepalive"):
        return obj["type"]
    return obj if obj["type"] == "start" else "unknown_type"


class Model:
    """What the server must answer: per frame, the error code expected (or none)."""

    def __init__(self):
        self.frame_bytes: int | None = None  # set once started
        self.f32 = False
        self.errors: list[str] = []
        self.close: int | None = None  # the close code expected, once the connection must end
        self.ended = False  # `end` expected

    def feed(self, frame: bytes | str) -> None:
        if self.close is not None:
            return  # the server reads nothing after the end
        started = self.frame_bytes is not None
        if isinstance(frame, bytes):
            if not started:
                self.errors.append("not_started")
            elif len(frame) > MAX_FRAME:
                self.errors.append("frame_too_large")
            elif len(frame) % self.frame_bytes:
                self.errors.append("bad_audio")
            elif self.f32 and not np.isfinite(np.frombuffer(frame, "<f4")).all():
                self.errors.append("bad_audio")
            return
        kind = classify_text(frame)
        if isinstance(kind, dict):
            if started:
                self.errors.append("already_started")
                return
            code, close = expected_start(kind)
            if code:
                self.errors.append(code)
                self.close = close
                return
            self.f32 = kind["encoding"] == "pcm_f32le"
            self.frame_bytes = (4 if self.f32 else 2) * kind["channels"]
        elif kind in ("stop", "finalize", "keepalive"):
            if not started:
                self.errors.append("not_started")
            elif kind == "stop":
                self.close, self.ended = 1000, True
        else:
            self.errors.append(kind)


async def run_sequence(url: str, sequence: list) -> tuple[list[dict], int | None, Model]:
    model = Model()
    for f in sequence:
        model.feed(f)
    got: list[dict] = []
    async with open_ws(url) as ws:
        try:
            for f in sequence:
                await ws.send(f)
            if model.close is None:
                await ws.send(SENTINEL)
        except websockets.ConnectionClosed:
            pass
        try:
            while True:
                m = await recv(ws, 60)
                got.append(m)
                if model.close is None and m.get("code") == "unknown_type" and "x-sync" in m["message"]:
                    break
        except websockets.ConnectionClosed:
            pass
        code = close_code(ws)
    return got, code, model


def check(got: list[dict], code: int | None, model: Model) -> None:
    for m in got:
        assert m["type"] in ("ready", "partial", "final", "error", "end"), m
        if m["type"] == "error":
            assert m["code"] in ERROR_CODES and isinstance(m["message"], str) and m["message"], m
            assert m["code"] != "internal", m
    errors = [m["code"] for m in got if m["type"] == "error"]
    if model.close is None:
        assert errors[-1] == "unknown_type"  # the sentinel
        errors = errors[:-1]
        assert code is None, code
    expected = model.errors
    # `busy` may stand for a start that would have opened a session (earlier examples' sessions still ending)
    if "busy" in errors:
        i = errors.index("busy")
        assert errors[:i] == expected[:i] and code == 1008, (errors, expected)
        return
    assert errors == expected, (errors, expected)
    if model.close is not None:
        assert code == model.close, (code, model.close, got[-3:])
    assert (got[-1]["type"] == "end") == model.ended, got[-3:]
    assert sum(m["type"] == "ready" for m in got) == (1 if model.frame_bytes else 0)


# -- in-process properties ----------------------------------------------------------------------------
@settings(max_examples=2000, deadline=None, database=None)
@given(st.one_of(text_frames, st.text(max_size=400)))
def test_text_frames_get_exactly_the_documented_errors(text):
    """The parser raises the code the model expects, and accepts exactly what the model accepts."""
    kind = classify_text(text)
    expected = parser_error(kind)[0] if isinstance(kind, dict) else (None if kind in ("stop", "finalize", "keepalive") else kind)
    try:
        message = V1Adapter(MAX_FRAME).parse(text, started=False)
    except StreamError as exc:
        assert exc.code in ERROR_CODES and exc.message
        assert exc.fatal == (exc.code in ("bad_encoding", "bad_sample_rate", "bad_channels", "bad_mode"))
        assert exc.code == expected, (text[:200], exc.code, expected)
        return
    assert expected is None, (text[:200], expected)
    assert message.type == (kind["type"] if isinstance(kind, dict) else kind)


@settings(max_examples=1000, deadline=None, database=None)
@given(
    st.sampled_from([8000, 16000, 22050, 44100, 48000]),
    st.sampled_from(["pcm_s16le", "pcm_f32le"]),
    st.sampled_from([1, 2]),
    st.lists(binary_frames, max_size=6),
)
def test_audio_frames_decode_or_raise_bad_audio(rate, encoding, channels, chunks):
    converter = AudioConverter(AudioFormat(rate, encoding, channels))
    for data in chunks:
        try:
            audio = converter.decode(data)
        except StreamError as exc:
            assert exc.code == "bad_audio" and not exc.fatal
            continue
        assert audio.dtype == np.float32 and np.isfinite(audio).all()
        assert np.abs(audio).max(initial=0) <= 1.5  # clipped input; resampling may ring slightly
    assert np.isfinite(converter.flush()).all()


# -- against the live daemon --------------------------------------------------------------------------
sequences = st.one_of(
    st.lists(frames, max_size=12),
    st.tuples(st.sampled_from([start(), start(encoding="pcm_f32le"), start(channels=2), start(sample_rate=48000)]),
              st.lists(frames, max_size=20)).map(lambda t: [t[0], *t[1]]),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sequence=sequences)
def test_random_message_sequences_get_the_documented_errors(daemon, sequence):
    check(*asyncio.run(run_sequence(daemon.ws_url, sequence)))


@settings(max_examples=5, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(sequence=st.lists(st.one_of(text_frames, small_binary_frames), min_size=300, max_size=500))
def test_a_long_session_of_random_frames(daemon, sequence):
    """Hundreds of random frames in one started session: per-frame errors only, then a clean stop."""
    sequence = [start(encoding="pcm_f32le")] + [f for f in sequence if not (isinstance(f, str) and classify_text(f) == "stop")]
    check(*asyncio.run(run_sequence(daemon.ws_url, sequence + [json.dumps({"type": "stop"})])))


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.one_of(st.text(max_size=400), st.text("0123456789abcdef", min_size=32, max_size=32)),
    st.sampled_from(["json", "txt", "srt", "vtt", "", "xml", "../x", "é"]),
    st.one_of(st.none(), st.text(max_size=60)),
)
def test_http_endpoints_never_fail_on_odd_paths(daemon, name, fmt, secret):
    """Any name (Unicode, hundreds of characters), format and resume token: 400 or 404, never a 500."""
    import urllib.error
    import urllib.parse

    query = urllib.parse.urlencode({"format": fmt, **({"resume_token": secret} if secret is not None else {})})
    path = f"/v1/sessions/{urllib.parse.quote(name, safe='')}/transcript?{query}"
    try:
        status = daemon.get(path).status
    except urllib.error.HTTPError as err:
        status = err.code
    assert status in (400, 404), (path, status)


def test_daemon_still_serves_after_the_fuzzing(daemon):
    async def go():
        async with open_ws(daemon.ws_url) as ws:
            await ws.send(start())
            await recv(ws)
            audio = speech("jfk")
            for i in range(0, len(audio), 1600):
                await ws.send((np.clip(audio[i : i + 1600], -1, 1) * 32767).astype("<i2").tobytes())
            await ws.send(json.dumps({"type": "stop"}))
            out = []
            async for raw in ws:
                out.append(json.loads(raw))
            return out

    msgs = asyncio.run(go())
    text = " ".join(m["text"] for m in msgs if m["type"] == "final")
    assert wer([reference("jfk")], [text]) < 0.15, text
    scraped = metrics(daemon)
    assert metric(scraped, "uadf_errors_total", code="internal") == 0
    assert metric(scraped, "uadf_errors_total", code="bad_message") > 50
    assert math.isfinite(metric(scraped, "uadf_audio_seconds_total"))

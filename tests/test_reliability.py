"""Reliability and security of the real daemon: bad input, limits, access, persistence, graceful faults.

Every test talks to a daemon process over real sockets. Three kinds of daemon:
- `daemon` (conftest): the shared default one (no token, max_rate=0, 4 sessions);
- `strict` (this module): TLS, a bearer token, an origin list and small limits, as in production;
- one per test where the test ends the process (SIGTERM, kill -9).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
from dataclasses import dataclass

import numpy as np
import pytest
import websockets

from conftest import wer
from tools.daemon_process import DaemonProcess as Daemon, start_daemon, stop_daemon
from streamutil import (
    STOP,
    close_code,
    disk_finals,
    drain,
    expect_end,
    expect_fatal,
    finals_in,
    http_get,
    metric,
    metrics,
    open_ws,
    pink_noise,
    recv,
    reference,
    resume_fields,
    rss_mb,
    same_final,
    secret,
    send_audio,
    send_until_closed,
    session,
    speech,
    start,
    tones,
    wait_until_idle,
)

TOKEN = "s3cret-token-for-tests"
ORIGIN = "https://captions.example"


# ==================================================================================================
# Defaults
# ==================================================================================================
def test_defaults_listen_on_loopback_and_take_the_token_from_the_environment(monkeypatch):
    from streamer.config import ServerOptions, load_config

    monkeypatch.delenv("UADF_TOKEN", raising=False)
    config = load_config()
    assert ServerOptions().host == "127.0.0.1" and config.server.host == "127.0.0.1"
    assert config.server.token == "" and config.server.allowed_origins == [] and not config.server.tls_cert
    monkeypatch.setenv("UADF_TOKEN", "from-env")
    assert load_config().server.token == "from-env"
    assert load_config(overrides=["server.token=from-config"]).server.token == "from-config"
    assert load_config(overrides=["server.allowed_origins=https://a.example,https://b.example"]).server.allowed_origins == [
        "https://a.example", "https://b.example"
    ]


async def test_outbox_drops_partials_first_and_never_finals():
    from streamer.protocol import Final, Partial
    from streamer.session import Outbox

    box = Outbox(limit=5)
    box.put(Partial(segment=0, text="a", start=0, end=1))
    box.put(Partial(segment=0, text="a b", start=0, end=1))  # replaces the partial waiting at the end
    assert len(box) == 1
    box.put(Final(segment=0, text="f0", start=0, end=1))
    box.put(Partial(segment=1, text="c", start=1, end=2))  # a final is queued after "a b": both stay
    assert [m.text for m in box._items] == ["a b", "f0", "c"]
    for i in (1, 2):
        box.put(Final(segment=i, text=f"f{i}", start=i, end=i + 1))
    box.put(Partial(segment=3, text="d", start=3, end=4))  # full: a partial is dropped
    assert not box.overflowed and len(box) == 5
    box.put(Final(segment=3, text="f3", start=3, end=4))  # a final past the limit is kept, and flagged
    assert box.overflowed and len(box) == 6
    out = [await box.get() for _ in range(6)]
    assert [m.text for m in out] == ["a b", "f0", "c", "f1", "f2", "f3"]


def test_store_survives_a_torn_last_line(tmp_path):
    from streamer.protocol import Final
    from streamer.store import TranscriptStore

    store = TranscriptStore(tmp_path)
    w = store.open("abc", {"mode": "asr"})
    w.append(Final(segment=0, text="one", start=0.0, end=1.0))
    w.close()
    with open(store.path("abc"), "a") as f:  # a crash in the middle of a line
        f.write('{"type": "final", "segment": 1, "te')
    w = store.open("abc", {"mode": "asr"})
    w.append(Final(segment=1, text="two", start=1.0, end=2.0))
    w.close(stream_time=2.5)
    assert [f.text for f in store.read("abc")] == ["one", "two"] and store.stream_end("abc") == 2.5


# ==================================================================================================
# The strict daemon: TLS + token + origins + small limits
# ==================================================================================================
@dataclass
class Strict:
    daemon: Daemon
    ssl: ssl.SSLContext

    def __post_init__(self) -> None:
        self.url = self.daemon.ws_url.replace("ws://", "wss://")
        self.base = self.daemon.http_url.replace("http://", "https://")

    def ws(self, token: str | None = TOKEN, **kw):
        return open_ws(self.url, token, self.ssl, **kw)

    def session(self, ws_options: dict | None = None, **fields):
        """A started session (streamutil.session) with the token over TLS."""
        return session(self.url, TOKEN, self.ssl, ws_options, **fields)

    def get(self, path: str, token: str | None = TOKEN, headers: dict | None = None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        return http_get(self.base + path, h, self.ssl)

    def metrics(self) -> dict:
        return metrics(self.daemon, {"Authorization": f"Bearer {TOKEN}"}, self.ssl)

    async def wait_until_idle(self) -> None:
        await wait_until_idle(self.daemon, headers={"Authorization": f"Bearer {TOKEN}"}, ssl_context=self.ssl)


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strict")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    d = start_daemon(
        tmp, "--token", TOKEN, "--max-sessions", "3",
        "--set", f"server.tls_cert={cert}", "--set", f"server.tls_key={key}",
        "--set", f"server.allowed_origins={ORIGIN}",
        "--set", "server.max_frame_bytes=65536", "--set", "server.idle_timeout=3",
        "--set", "server.start_timeout=4", "--set", "server.max_pending=3",
        "--set", "server.max_session_seconds=20", "--set", "server.send_queue=16",
        # the slow-consumer test needs a flood of frames to fill the send queue; the frame bound is tested
        # in test_hostile.py
        "--set", "server.max_frames_per_second=0",
    )  # max_rate stays at its default, 4x real time
    yield Strict(d, ssl.create_default_context(cafile=str(cert)))
    stop_daemon(d)


def test_http_endpoints_need_the_token_over_tls(strict):
    for path in ("/healthz", "/metrics", "/v1/sessions/abc/transcript"):
        for token in (None, "wrong", TOKEN[:-1], TOKEN + "x"):
            with pytest.raises(urllib.error.HTTPError) as err:
                strict.get(path, token)
            assert err.value.code == 401, (path, token)
            assert err.value.headers["WWW-Authenticate"] == "Bearer"
    assert json.load(strict.get("/healthz"))["status"] == "ok"
    assert json.load(http_get(f"{strict.base}/healthz?token={TOKEN}", ssl_context=strict.ssl))["status"] == "ok"
    assert strict.get("/", token=None).status == 200  # the captions page itself is public; it asks for the token
    with pytest.raises(Exception):  # plain HTTP on the TLS port gets nowhere
        http_get(strict.daemon.http_url + "/healthz").read()
    assert metric(strict.metrics(), "uadf_errors_total", code="unauthorized") >= 12
    time.sleep(0.5)
    assert TOKEN not in strict.daemon.log.read_text()  # access log lines carry no query strings


async def test_websocket_needs_the_token(strict):
    for token in (None, "wrong"):
        with pytest.raises(websockets.InvalidStatus) as err:
            async with strict.ws(token):
                pass
        assert err.value.response.status_code == 401
    async with session(f"{strict.url}?token={TOKEN}", None, strict.ssl):  # browsers: token in the URL
        pass
    async with strict.session() as (ws, _):
        await ws.send(STOP)
        await expect_end(ws)


async def test_browser_origins(strict):
    with pytest.raises(websockets.InvalidStatus) as err:
        async with strict.ws(origin="https://evil.example"):
            pass
    assert err.value.response.status_code == 403
    for origin in (ORIGIN, f"https://127.0.0.1:{strict.daemon.port}"):  # listed, and the daemon's own page
        async with strict.session({"origin": origin}):
            pass
    with pytest.raises(urllib.error.HTTPError) as err:
        strict.get("/healthz", headers={"Origin": "https://evil.example"})
    assert err.value.code == 403


async def test_idle_timeout_counts_frames_not_pings(strict):
    # websocket pings every 0.5 s keep the TCP connection busy, but no frame arrives: idle
    async with strict.session({"ping_interval": 0.5}) as (ws, _):
        await expect_fatal(ws, "idle_timeout", timeout=60)
    # keepalive frames do count: 5 s of them outlive the 3 s timeout
    async with strict.session() as (ws, _):
        for _ in range(10):
            await asyncio.sleep(0.5)
            await ws.send(json.dumps({"type": "keepalive"}))
        await ws.send(STOP)
        assert [m["type"] for m in await expect_end(ws)] == ["end"]
    # a connection that never sends start is closed too
    async with strict.ws() as ws:
        await expect_fatal(ws, "idle_timeout", timeout=60)


async def test_connections_that_never_start_are_bounded_and_closed(strict):
    """Connections that never send `start` cannot hold the daemon: past max_pending (3) waiting ones a
    new one gets `busy`, and each is closed with `start_timeout` 4 s after connecting, even while it
    sends frames that keep the idle timer (3 s) from firing."""

    async def keepalives_until_closed(ws) -> list[dict]:
        got: list[dict] = []
        try:
            while True:
                await ws.send(json.dumps({"type": "keepalive"}))  # before start: answered with not_started
                got.append(await recv(ws))
                await asyncio.sleep(0.5)
        except websockets.ConnectionClosed:
            return got + await drain(ws)

    t0 = time.monotonic()
    waiting = [await strict.ws() for _ in range(3)]
    try:
        async with strict.ws() as extra:
            refused = await expect_fatal(extra, "busy")
        results = await asyncio.wait_for(asyncio.gather(*(keepalives_until_closed(ws) for ws in waiting)), 30)
        elapsed = time.monotonic() - t0
        codes = [close_code(ws) for ws in waiting]
    finally:
        for ws in waiting:
            await ws.close()
    async with strict.session() as (ws, _):  # the waiting ones are gone: a new connection is served
        await ws.send(STOP)
        await expect_end(ws)
    assert len(refused) == 1
    for msgs in results:
        assert len(msgs) >= 5 and {m["code"] for m in msgs[:-1]} == {"not_started"}, msgs
        assert msgs[-1]["code"] == "start_timeout"
    assert codes == [1008] * 3 and elapsed >= 4.0
    assert metric(strict.metrics(), "uadf_errors_total", code="start_timeout") >= 3


async def test_audio_far_faster_than_real_time_is_refused(strict):
    async with strict.session() as (ws, _):
        # 16 s of audio at once: past the 10 s allowance at 4x real time
        await send_until_closed(ws, np.zeros(16000 * 16, np.float32), speed=0)
        await expect_fatal(ws, "rate_limited")


async def test_session_length_limit(strict):
    async with strict.session() as (ws, _):
        # 1 s frames at 5x real time (under the rate limit) past the 20 s session limit
        await send_until_closed(ws, np.zeros(16000 * 25, np.float32), speed=5)
        await expect_fatal(ws, "session_too_long")


async def test_session_length_limit_counts_across_resumes(strict):
    """Reconnecting does not restart the 20 s limit: a session resumed after 15 s of audio takes 5 s more."""
    async with strict.session() as (ws, ready):
        sid = ready["session_id"]
        await send_audio(ws, np.zeros(16000 * 15, np.float32), speed=5, chunk=1.0)
        first = await expect_end(ws)
    async with strict.session(**resume_fields(ready)) as (ws, resumed):
        # 10 s more, in 1 s frames: the 6th passes the session's 20 s
        await send_until_closed(ws, np.zeros(16000 * 10, np.float32), speed=5)
        await expect_fatal(ws, "session_too_long")
    await strict.wait_until_idle()
    assert first[-1]["audio_seconds"] == pytest.approx(15.0)
    assert resumed["resumed"] and resumed["stream_time"] == pytest.approx(15.0)
    from streamer.store import TranscriptStore

    assert TranscriptStore(strict.daemon.data_dir).stream_end(sid) == pytest.approx(20.0)


async def test_frame_size_limits(strict):
    async with strict.session() as (ws, _):
        await ws.send(b"\x00" * (65536 + 2))
        err = await recv(ws)
        assert err["code"] == "frame_too_large" and "65536" in err["message"]
        await ws.send(json.dumps({"type": "keepalive", "pad": "x" * 70000}))
        assert (await recv(ws))["code"] == "frame_too_large"
        await ws.send(b"\x00" * 65536)  # exactly the limit is fine
        await ws.send(STOP)
        msgs = await expect_end(ws)
        assert [m["type"] for m in msgs] == ["end"] and msgs[0]["audio_seconds"] == pytest.approx(2.048, abs=0.01)
    # past 4x the limit aiohttp refuses the frame itself: close 1009 (message too big)
    async with strict.session() as (ws, _):
        try:
            await ws.send(b"\x00" * (4 * 65536 + 2))
        except websockets.ConnectionClosed:
            pass
        await drain(ws)
        assert close_code(ws) == 1009


async def test_max_sessions_also_bounds_resumes(strict):
    async with strict.session() as (ws, old):
        await ws.send(STOP)
        await expect_end(ws)
    await strict.wait_until_idle()
    async with contextlib.AsyncExitStack() as live:
        for _ in range(3):
            await live.enter_async_context(strict.session())
        async with strict.ws() as ws:
            await ws.send(start(**resume_fields(old)))
            await expect_fatal(ws, "busy")


async def test_slow_consumer_does_not_grow_server_memory(strict):
    """A client that sends and never reads: its errors fill the bounded send queue (after the kernel's
    socket buffers), the server cuts it off (slow_consumer) instead of buffering without bound, and
    serves others as before."""
    pid = strict.daemon.process.pid
    before = rss_mb(pid)
    frames = 120_000  # each a bad frame, each answered by a ~130-byte error: ~16 MB unread if all were queued
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", strict.daemon.port))
    async with open_ws(strict.url, TOKEN, strict.ssl, sock=sock, server_hostname="127.0.0.1", max_queue=4, compression=None) as ws:
        await ws.send(start())
        try:
            for _ in range(frames):
                await ws.send(b"\x01")
        except websockets.ConnectionClosed:
            pass
        # not reading: wait until the server has dealt with the flood
        peak, last, stable_since = before, -1.0, time.monotonic()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            scraped = await asyncio.to_thread(strict.metrics)
            peak = max(peak, rss_mb(pid))
            if metric(scraped, "uadf_errors_total", code="slow_consumer") >= 1:
                break
            count = metric(scraped, "uadf_errors_total", code="bad_audio")
            if count != last:
                last, stable_since = count, time.monotonic()
            elif time.monotonic() - stable_since > 5:
                break
            await asyncio.sleep(0.5)
        await drain(ws, timeout=60)
        code = close_code(ws)
    scraped = strict.metrics()
    print(f"slow consumer: daemon RSS {before:.0f} MB -> peak {peak:.0f} MB while flooded; close code {code}")
    assert metric(scraped, "uadf_errors_total", code="slow_consumer") >= 1
    assert metric(scraped, "uadf_errors_total", code="bad_audio") < frames  # it stopped taking them
    assert code in (1008, None)  # 1008 if the close frame got through, else the connection was cut
    assert peak - before < 40
    await strict.wait_until_idle()


async def test_tls_session_transcribes(strict):
    async with strict.session() as (ws, ready):
        await send_audio(ws, speech("jfk"), speed=3.5)  # under the 4x rate limit
        msgs = await expect_end(ws)
    text = " ".join(m["text"] for m in finals_in(msgs))
    assert wer([reference("jfk")], [text]) < 0.2, text
    body = json.load(strict.get(f"/v1/sessions/{ready['session_id']}/transcript", headers=secret(ready)))
    assert [f["text"] for f in body["finals"]] == [m["text"] for m in finals_in(msgs)]


async def test_sigint_ends_sessions_normally_and_exits_0(strict):
    """Last of the strict tests: SIGINT behaves like SIGTERM."""
    async with strict.session() as (ws, _):
        await send_audio(ws, speech("jfk")[: 16000 * 4], speed=0, stop=False)
        strict.daemon.process.send_signal(signal.SIGINT)
        msgs = await expect_end(ws)
    assert finals_in(msgs) and finals_in(msgs)[-1]["endpoint"]
    assert strict.daemon.process.wait(60) == 0


# ==================================================================================================
# The shared daemon: bad input
# ==================================================================================================
BIG_INT = '{"type": "start", "sample_rate": ' + "9" * 5000 + ', "encoding": "pcm_s16le", "channels": 1}'

PRE_START = [  # (frame, code, close code or None when the connection stays open)
    ("not json", "bad_message", None),
    ("{", "bad_message", None),
    ("null", "bad_message", None),
    ('"start"', "bad_message", None),
    ("[1, 2]", "bad_message", None),
    ("{}", "bad_message", None),
    ('{"type": 5}', "bad_message", None),
    ("[" * 100_000, "bad_message", None),
    (BIG_INT, "bad_message", None),
    (json.dumps({"type": "dance"}), "unknown_type", None),
    (json.dumps({"type": "stop"}), "not_started", None),
    (json.dumps({"type": "finalize"}), "not_started", None),
    (json.dumps({"type": "keepalive"}), "not_started", None),
    (b"\x00\x01" * 100, "not_started", None),
    (start(sample_rate=7999), "bad_sample_rate", 1003),
    (start(sample_rate=48001), "bad_sample_rate", 1003),
    (start(sample_rate=16000.0), "bad_sample_rate", 1003),
    (start(sample_rate=True), "bad_sample_rate", 1003),
    (start(sample_rate="16000"), "bad_sample_rate", 1003),
    (start(sample_rate=None), "bad_sample_rate", 1003),
    (start(channels=0), "bad_channels", 1003),
    (start(channels=3), "bad_channels", 1003),
    (start(channels=-1), "bad_channels", 1003),
    (start(channels="1"), "bad_channels", 1003),
    (start(encoding="pcm_s24le"), "bad_encoding", 1003),
    (start(encoding="mp3"), "bad_encoding", 1003),
    (start(encoding=5), "bad_encoding", 1003),
    (start(encoding=None), "bad_encoding", 1003),
    (start(mode="magic"), "bad_mode", 1003),
    (start(mode="uadf"), "bad_mode", 1003),  # the test daemon has no LLM
    (start(session_id="../../etc/passwd"), "bad_message", None),
    (start(session_id=""), "bad_message", None),
    (start(session_id="deadbeef" * 4), "unknown_session", 1008),
    (start(resume_from=-1), "bad_message", None),
    (start(language="de"), "bad_message", None),
]


@pytest.mark.parametrize("frame, code, close", PRE_START, ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(PRE_START)])
async def test_bad_input_before_start(daemon, frame, code, close):
    async with open_ws(daemon.ws_url) as ws:
        await ws.send(frame)
        err = await recv(ws)
        assert err["type"] == "error" and err["code"] == code and len(err["message"]) > 5, err
        if close is not None:
            assert await drain(ws) == [] and close_code(ws) == close
            return
        # the frame was dropped; the connection still takes a start and serves
        await ws.send(start())
        assert (await recv(ws))["type"] == "ready"
        await ws.send(STOP)
        await expect_end(ws)


F32_NAN = np.array([0.1, np.nan, 0.2], "<f4").tobytes()
F32_INF = np.array([0.1, np.inf, -np.inf], "<f4").tobytes()
IN_SESSION = [  # (start fields, bad frame, code)
    ({"encoding": "pcm_f32le"}, F32_NAN, "bad_audio"),
    ({"encoding": "pcm_f32le"}, F32_INF, "bad_audio"),
    ({"encoding": "pcm_f32le"}, b"\x00" * 6, "bad_audio"),
    ({"encoding": "pcm_f32le", "channels": 2}, b"\x00" * 12, "bad_audio"),
    ({"channels": 2}, b"\x00" * 6, "bad_audio"),
    ({}, b"\x00" * 3, "bad_audio"),
    ({}, b"\x00" * (256 * 1024 + 2), "frame_too_large"),
    ({}, "][", "bad_message"),
    ({}, BIG_INT, "bad_message"),
    ({}, json.dumps({"type": "rewind"}), "unknown_type"),
    ({}, start(), "already_started"),
    ({}, start(sample_rate=None), "already_started"),  # fatal before a session; must not end this one
    ({}, start(mode="magic", language=None), "already_started"),
]


@pytest.mark.parametrize("fields, frame, code", IN_SESSION, ids=[f"{c}-{i}" for i, (_, _, c) in enumerate(IN_SESSION)])
async def test_bad_frames_inside_a_session_leave_it_running(daemon, fields, frame, code):
    fmt = {"sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, **fields}
    one_second = np.zeros(16000 * fmt["channels"], "<f4" if fmt["encoding"] == "pcm_f32le" else "<i2").tobytes()
    async with session(daemon.ws_url, **fields) as (ws, _):
        await ws.send(one_second)
        await ws.send(frame)
        err = await recv(ws)
        assert err["type"] == "error" and err["code"] == code and err["message"], err
        await ws.send(b"")  # an empty frame is zero whole frames: fine
        await ws.send(one_second)
        await ws.send(STOP)
        msgs = await expect_end(ws)
    assert msgs[-1]["audio_seconds"] == pytest.approx(2.0, abs=0.01)  # the bad frame was dropped
    assert not [m for m in msgs if m["type"] == "error"]


async def test_f32_stereo_48k_with_a_nan_frame_still_transcribes(daemon):
    import soxr

    mono = speech("jfk")
    up = soxr.resample(mono, 16000, 48000).astype(np.float32)
    stereo = np.stack([up, up * 0.5], axis=1).astype("<f4")
    step = 4800
    async with session(daemon.ws_url, sample_rate=48000, encoding="pcm_f32le", channels=2) as (ws, _):
        for i in range(0, len(stereo), step):
            if i == step * 20:
                bad = stereo[i : i + step].copy()
                bad[7, 1] = np.nan
                await ws.send(bad.tobytes())
            await ws.send(stereo[i : i + step].tobytes())
        await ws.send(STOP)
        msgs = await expect_end(ws)
    assert [m["code"] for m in msgs if m["type"] == "error"] == ["bad_audio"]
    assert wer([reference("jfk")], [" ".join(m["text"] for m in finals_in(msgs))]) < 0.2


# ==================================================================================================
# The shared daemon: resume, transcripts, metrics, hallucinations
# ==================================================================================================
async def test_resume_gets_missed_finals_then_continues(daemon):
    audio = speech("dev-concat", "speech-long")[: 16000 * 40]
    part1, part2 = audio[: 16000 * 20], audio[16000 * 20 :]
    got: list[dict] = []
    async with session(daemon.ws_url) as (ws, first):
        sid = first["session_id"]
        sender = asyncio.create_task(send_audio(ws, part1, speed=4, stop=False))
        while not (sender.done() and finals_in(got)):
            got.append(await recv(ws, 120))
        await sender
        ws.transport.abort()  # the network drops: no stop, no close handshake
    received1 = finals_in(got)
    try:  # the server notices the drop and flushes the pending audio into finals on disk ...
        await wait_until_idle(daemon, timeout=15)
    except AssertionError:
        pass  # ... or, if it has not noticed yet, the resume takes the session over and flushes it then
    async with session(daemon.ws_url, **resume_fields(first, len(received1))) as (ws, ready):
        on_disk = disk_finals(daemon.data_dir, sid)  # complete: written before `ready` was sent
        assert len(on_disk) >= len(received1)
        resent = [await recv(ws) for _ in range(len(on_disk) - len(received1))]
        await send_audio(ws, part2, speed=4)
        rest = await expect_end(ws)
    assert ready["resumed"] and ready["session_id"] == sid
    assert ready["stream_time"] == pytest.approx(20.0, abs=0.01)  # the stream clock continues
    assert all(same_final(a, b) for a, b in zip(resent, on_disk[len(received1) :]))
    assert [m["type"] for m in resent] == ["final"] * len(resent)
    everything = received1 + resent + finals_in(rest)
    assert [f["segment"] for f in everything] == list(range(len(everything)))
    assert finals_in(rest) and all(f["start"] >= 19.5 for f in finals_in(rest))
    assert rest[-1]["finals"] == len(everything)
    disk = disk_finals(daemon.data_dir, sid)
    assert len(disk) == len(everything) and all(same_final(a, b) for a, b in zip(disk, everything))
    body = json.load(daemon.get(f"/v1/sessions/{sid}/transcript", secret(first)))
    assert [f["text"] for f in body["finals"]] == [f["text"] for f in everything]


async def test_resume_while_the_old_connection_is_open_takes_it_over(daemon):
    audio = speech("jfk")
    async with session(daemon.ws_url) as (old, first):
        sid = first["session_id"]
        await send_audio(old, audio[: 16000 * 5], speed=0, stop=False)
        async with session(daemon.ws_url, **resume_fields(first)) as (new, ready):
            await drain(old)  # the old connection is closed by the server
            resent = [await recv(new) for _ in disk_finals(daemon.data_dir, sid)]
            await send_audio(new, audio[16000 * 5 :], speed=0)
            rest = await expect_end(new)
        assert ready["resumed"] and close_code(old) == 1008
    everything = resent + finals_in(rest)
    assert [f["segment"] for f in everything] == list(range(len(everything)))
    assert wer([reference("jfk")], [" ".join(f["text"] for f in everything)]) < 0.3


async def test_a_resume_while_the_old_connection_ends_waits_for_its_close(engine, tmp_path):
    """A client that reconnects at once: its old session is still closing (the transcript's stream end being
    written on a thread) when the resume comes. The resume waits for that close, so it goes on from where the
    audio ended and keeps the session's speakers (it used to start new ones, 1 run in 3 of the speaker test)."""
    from streamer.app import open_store
    from streamer.config import ServerOptions
    from streamer.metrics import Metrics
    from streamer.protocol import parse_client_message
    from streamer.registry import SessionRegistry
    from streamer.scheduler import DecodeScheduler

    options = ServerOptions(data_dir=str(tmp_path), fsync=False)
    metrics = Metrics()
    scheduler = DecodeScheduler(engine.transcribe, engine.config.scheduler, metrics, engine.config.streaming.step)
    registry = SessionRegistry(engine, scheduler, open_store(options), options, metrics)
    start = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, "diarize": True}
    no_connection = lambda: asyncio.sleep(0)  # noqa: E731
    old, _ = await registry.open(parse_client_message(json.dumps(start)), no_connection)
    old.feed(np.zeros(16000 * 2, np.int16).tobytes())  # 2 s of silence: no finals, a stream end of 2.0
    close_transcript = old.writer.close

    async def slow_close(**kwargs):
        await asyncio.sleep(0.3)
        await close_transcript(**kwargs)

    old.writer.close = slow_close
    ending = asyncio.create_task(registry.end(old))  # the connection dropped
    await asyncio.sleep(0.1)
    assert old.closed and not ending.done()
    new, previous = await registry.open(parse_client_message(json.dumps({**start, "session_id": old.id, "resume_token": old.secret})), no_connection)
    assert ending.done() and previous == []
    assert new.start_time == pytest.approx(2.0)  # the old connection's stream end, written before the resume read it
    assert new.speakers.diarizer is old.speakers.diarizer  # the session's speakers go on
    await registry.end(new)


async def test_transcript_endpoint_formats(daemon):
    async with session(daemon.ws_url) as (ws, ready):
        sid = ready["session_id"]
        await send_audio(ws, speech("jfk"), speed=0)
        finals = finals_in(await expect_end(ws))
    base = f"/v1/sessions/{sid}/transcript"
    body = json.load(daemon.get(base, secret(ready)))
    assert body["session_id"] == sid and [f["text"] for f in body["finals"]] == [f["text"] for f in finals]
    txt = daemon.get(base + "?format=txt", secret(ready)).read().decode()
    assert " ".join(txt.split()) == " ".join(f["text"] for f in finals if f["text"])
    srt = daemon.get(f"{base}?format=srt&resume_token={ready['resume_token']}").read().decode()
    assert srt.startswith("1\n00:00:") and " --> " in srt
    vtt = daemon.get(base + "?format=vtt", secret(ready))
    assert vtt.headers["Content-Type"].startswith("text/vtt") and vtt.read().decode().startswith("WEBVTT\n\n00:00:")
    for path, status in ((base + "?format=xml", 400), ("/v1/sessions/nope/transcript", 404),
                         ("/v1/sessions/..%2F..%2Fetc%2Fpasswd/transcript", 404), ("/v1/sessions/a.b/transcript", 404)):
        with pytest.raises(urllib.error.HTTPError) as err:
            daemon.get(path, secret(ready))
        assert err.value.code == status, path


def test_metrics_are_prometheus_text(daemon):
    response = daemon.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    for name in ("uadf_active_sessions", "uadf_sessions", "uadf_audio_seconds", "uadf_decode_seconds", "uadf_llm_calls",
                 "uadf_errors", "uadf_decode_queue_depth", "uadf_send_queue_depth", "uadf_finals", "uadf_connections"):
        assert name in families, name
    scraped = metrics(daemon)
    assert metric(scraped, "uadf_audio_seconds_total") > 10 and metric(scraped, "uadf_decode_seconds_count") > 0
    assert metric(scraped, "uadf_errors_total", code="bad_audio") > 0
    assert metric(scraped, "uadf_errors_total", code="internal") == 0
    assert json.load(daemon.get("/healthz"))["status"] == "ok"


HALLUCINATION_SECONDS = 300


@pytest.mark.parametrize("mode", ["asr", "uadf"])
@pytest.mark.parametrize("kind", ["silence", "pink-noise", "tones"])
async def test_five_minutes_of_non_speech_give_no_words(request, mode, kind):
    d = request.getfixturevalue("daemon" if mode == "asr" else "llm_daemon")
    n = HALLUCINATION_SECONDS
    audio = {"silence": lambda: np.zeros(16000 * n, np.float32), "pink-noise": lambda: pink_noise(n), "tones": lambda: tones(n)}[kind]()
    decodes = metric(metrics(d), "uadf_decode_seconds_count")
    async with session(d.ws_url, mode=mode) as (ws, ready):
        await send_audio(ws, audio, speed=0, chunk=1.0)
        msgs = await expect_end(ws, timeout=600)
    decodes = metric(metrics(d), "uadf_decode_seconds_count") - decodes
    print(f"{kind} ({mode}): {decodes:.0f} decode steps")  # 0: the VAD already keeps it from Whisper
    assert ready["mode"] == mode
    words = [m["text"] for m in msgs if m["type"] in ("final", "partial") and m["text"]]
    assert words == [], words[:10]
    assert msgs[-1]["audio_seconds"] == pytest.approx(n, abs=0.1)


@pytest.mark.parametrize("mode", ["uadf", "uadf-llm"])
async def test_fusion_modes_transcribe_speech(llm_daemon, mode):
    """The LLM daemon (conftest) is a working one: speech in bus noise (Whisper unsure enough for the gate to
    consult the LLM; on clean jfk `uadf` consults it 0 times) gives words in uadf and in the experimental
    uadf-llm mode, with the LLM consulted. Only uadf's text is held to a WER bound: uadf-llm does not follow its
    prompt at 270M parameters (README, Fusion; on jfk's short utterances it writes its prompt's own labels,
    "Hypothesis: Like not."). Its bound here held only while a client sending at full speed had its whole clip
    decoded as one window; the utterances now end at their pauses, as in real time."""
    calls = metric(metrics(llm_daemon), "uadf_llm_calls_total")
    async with session(llm_daemon.ws_url, mode=mode) as (ws, ready):
        await send_audio(ws, speech("jfk_bus", "speech-dev-hard"), speed=0)
        msgs = await expect_end(ws)
    text = " ".join(m["text"] for m in finals_in(msgs))
    assert ready["mode"] == mode
    assert text.split()
    if mode == "uadf":
        assert wer([reference("jfk_bus", "speech-dev-hard")], [text]) < 0.3, text
    assert metric(metrics(llm_daemon), "uadf_llm_calls_total") > calls


# ==================================================================================================
# Faults: SIGTERM and kill -9 of the daemon itself
# ==================================================================================================
async def collect(ws, on_final=None) -> list[dict]:
    """Every message until the connection ends; `on_final(count)` after each final."""
    msgs: list[dict] = []
    try:
        async for raw in ws:
            msgs.append(json.loads(raw))
            if msgs[-1]["type"] == "final" and on_final:
                on_final(len(finals_in(msgs)))
    except websockets.ConnectionClosed:
        pass
    return msgs


async def test_sigterm_delivers_pending_finals_closes_1000_and_exits_0(tmp_path):
    d = start_daemon(tmp_path, "--set", "server.max_rate=0")
    audio = speech("dev-concat", "speech-long")[: 16000 * 60]

    async def client(first_final: asyncio.Event, offset: int):
        async with session(d.ws_url) as (ws, ready):
            sent = [0.0]
            sender = asyncio.create_task(send_audio(ws, audio[16000 * offset :], speed=2, stop=False, on_sent=lambda s: sent.__setitem__(0, s)))
            msgs = await collect(ws, lambda n: first_final.set())
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            return ready["session_id"], msgs, close_code(ws), sent

    try:
        events = [asyncio.Event(), asyncio.Event()]
        async with open_ws(d.ws_url) as idle:  # connected, never started
            tasks = [asyncio.create_task(client(events[0], 0)), asyncio.create_task(client(events[1], 20))]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 180)
            await asyncio.sleep(1.0)  # speech in flight: pending, not yet final
            d.process.send_signal(signal.SIGTERM)
            results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            await drain(idle)
            idle_code = close_code(idle)
        assert d.process.wait(60) == 0
    finally:
        stop_daemon(d)
    assert idle_code == 1000
    for sid, msgs, code, sent in results:
        finals = finals_in(msgs)
        assert msgs[-1]["type"] == "end" and code == 1000, msgs[-3:]
        assert msgs[-1]["finals"] == len(finals) and [f["segment"] for f in finals] == list(range(len(finals)))
        assert not [m for m in msgs if m["type"] == "error"]
        disk = disk_finals(d.data_dir, sid)
        assert len(disk) == len(finals) and all(same_final(a, b) for a, b in zip(disk, finals))
        # the speech sent before the signal is in the finals, up to its last pause
        assert finals[-1]["end"] >= msgs[-1]["audio_seconds"] - 4.0


async def test_kill9_loses_no_received_final_and_the_session_resumes(tmp_path):
    d = start_daemon(tmp_path, "--set", "server.max_rate=0")
    audio = speech("dev-concat", "speech-long")

    def kill_at_fourth(n: int) -> None:
        if n == 4:
            d.process.kill()

    try:
        async with session(d.ws_url) as (ws, first):
            sid = first["session_id"]
            sender = asyncio.create_task(send_audio(ws, audio, speed=4, stop=False))
            received = finals_in(await collect(ws, kill_at_fourth))
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        assert d.process.wait(30) == -signal.SIGKILL
    finally:
        stop_daemon(d)
    disk = disk_finals(d.data_dir, sid)
    assert len(received) >= 4 and len(disk) >= len(received)
    assert all(same_final(a, b) for a, b in zip(received, disk))

    # a new daemon on the same data directory serves the transcript and resumes the session
    d2 = start_daemon(tmp_path, "--set", "server.max_rate=0")
    try:
        body = json.load(d2.get(f"/v1/sessions/{sid}/transcript", secret(first)))
        assert len(body["finals"]) == len(disk)
        async with session(d2.ws_url, **resume_fields(first, len(received))) as (ws, ready):
            await send_audio(ws, speech("jfk"), speed=0)
            msgs = await expect_end(ws)
    finally:
        assert stop_daemon(d2) == 0
    assert ready["resumed"] and ready["stream_time"] >= received[-1]["end"]
    finals = finals_in(msgs)
    assert [f["segment"] for f in finals] == list(range(len(received), len(received) + len(finals)))
    assert all(same_final(a, b) for a, b in zip(finals, disk[len(received) :]))
    assert msgs[-1]["finals"] == len(received) + len(finals) and len(finals) > len(disk) - len(received)

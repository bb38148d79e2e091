"""Scale-out: three daemons (no LLM) behind HAProxy sharing one Redis, with the deploy/ configurations, on
loopback. Clients stream speech-dev clips through HAProxy with the client core's ResumableSession; a node is
killed (kill -9) or drained (SIGTERM), Redis is killed and restarted, two clients resume one session on two
nodes at once. Every process is started here, bounded in time, and dies with the test run.

The default run uses three ~24 s streams (four of the 12 clips each) at twice real time (three daemons on two cores) and 12 real-time
streams at once, and starts the daemons once: only its last test stops nodes (one killed, one drained). The
nodes replay every decision point however far behind they fall (as in test_server's eval test), so a
transcript does not depend on the load and the cluster's must equal the in-process pipeline's. The 12
clients with a node killed are `-m heavy`."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openai
import pytest
import redis
import soundfile as sf
from openai import OpenAI

from clients.stream import Reconnect, ResumableSession, paced_blocks
from conftest import ROOT, manifest, wer
from streamer.protocol import Final
from streamer.redis_store import RedisStore
from streamer.store import ResumeConflict, StoreUnavailable, secret_matches
from streamutil import close_code, drain, http_get, open_ws, recv, resume_fields, secret, send_audio, start
from tools.daemon_process import DaemonProcess, start_daemon

DEPLOY = ROOT / "deploy"
SPEED = 2.0  # three daemons decoding on two cores: twice real time keeps them up with three streams
LEASE = 3.0
DRAIN_DELAY = 2.5  # > HAProxy's fall 2 x inter 1 s: the node is out of the pool before its sessions end


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        message = f"{name} is not installed (apt-get install redis-server haproxy; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)
    return path


def _die_with_parent() -> None:
    """In the child: SIGKILL when the thread that started it ends (the test run, even if it is killed)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (OSError, redis.RedisError, KeyError):
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Cluster:
    """Redis, three daemons on fixed ports (a restarted node comes back on its port) and HAProxy before them."""

    workdir: Path
    redis_port: int = field(default_factory=free_port)
    lb_port: int = field(default_factory=free_port)
    ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    nodes: list[DaemonProcess | None] = field(default_factory=lambda: [None, None, None])
    redis_proc: subprocess.Popen | None = None
    lb_proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        # daemons die with the thread that started them: these workers live as long as the cluster
        self.pool = ThreadPoolExecutor(3)
        self.db = redis.Redis(port=self.redis_port, decode_responses=True, socket_timeout=5)

    @property
    def store_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.lb_port}/v1/listen"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    # -- Redis -----------------------------------------------------------------------------------
    def start_redis(self) -> None:
        folder = self.workdir / "redis"
        folder.mkdir(exist_ok=True)
        self.redis_proc = subprocess.Popen(
            [_tool("redis-server"), str(DEPLOY / "redis.conf"), "--port", str(self.redis_port), "--dir", str(folder),
             "--supervised", "no", "--logfile", str(folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        wait_for(self.db.ping, 30, "redis")

    def kill_redis(self) -> None:
        self.redis_proc.kill()
        self.redis_proc.wait(10)

    # -- daemons ---------------------------------------------------------------------------------
    def _start_node(self, i: int) -> DaemonProcess:
        return start_daemon(
            self.workdir / f"node{i + 1}", "--port", str(self.ports[i]), "--max-sessions", "6",
            "--set", f"server.store={self.store_url}", "--set", "server.max_rate=0",
            "--set", f"server.lease_seconds={LEASE}", "--set", f"server.drain_delay={DRAIN_DELAY}",
            # every decision point decoded, late rather than skipped: transcripts independent of the load
            "--set", "streaming.max_lag=60", "--set", "scheduler.max_partial_interval=0.5",
            preexec_fn=_die_with_parent, timeout=240,
        )

    def start_nodes(self, which: list[int]) -> None:
        for i, node in zip(which, self.pool.map(self._start_node, which)):
            self.nodes[i] = node

    def node_of(self, session_id: str) -> int | None:
        """The node that owns (or last owned) a session, from its record in Redis."""
        name = self.db.hget(f"uadf:{{{session_id}}}:meta", "node") or ""
        pids = {n.process.pid: i for i, n in enumerate(self.nodes) if n is not None}
        parts = name.split("-")
        return pids.get(int(parts[-2])) if len(parts) >= 2 and parts[-2].isdigit() else None

    def sessions_on(self, i: int) -> int:
        return json.load(self.nodes[i].get("/healthz"))["sessions"]

    # -- HAProxy ---------------------------------------------------------------------------------
    def start_lb(self) -> None:
        env = {
            **os.environ, "UADF_LB": f"127.0.0.1:{self.lb_port}", "UADF_LB_STATS": str(self.workdir / "haproxy.sock"),
            "UADF_LB_METRICS": f"127.0.0.1:{free_port()}",
            **{f"UADF_NODE{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(self.ports)},
        }
        log = open(self.workdir / "haproxy.log", "w")
        self.lb_proc = subprocess.Popen(
            [_tool("haproxy"), "-f", str(DEPLOY / "haproxy.cfg"), "-db"], env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def lb_states(self) -> dict[str, str]:
        """HAProxy's view of each node (UP, DOWN, ...), from its stats socket."""
        if self.lb_proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {(self.workdir / 'haproxy.log').read_text()[-2000:]}")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.workdir / "haproxy.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "daemons" and r["svname"].startswith("node")}

    def wait_healthy(self, timeout: float = 60) -> None:
        """Every node UP in HAProxy and idle."""
        wait_for(lambda: all(s == "UP" for s in self.lb_states().values()) and len(self.lb_states()) == 3, timeout, "all nodes UP")
        wait_for(lambda: all(self.sessions_on(i) == 0 for i in range(3)), timeout, "idle nodes")

    def ensure(self) -> None:
        """Bring back whatever an earlier test stopped (a node's start is a model load: the default tests
        stop nodes only in the last one)."""
        if self.redis_proc is None or self.redis_proc.poll() is not None:
            self.start_redis()
        dead = [i for i, n in enumerate(self.nodes) if n is None or n.process.poll() is not None]
        if dead:
            self.start_nodes(dead)
        if self.lb_proc is None:
            self.start_lb()
        self.wait_healthy()

    def stop(self) -> None:
        """Everything killed at once (draining is a test of its own, not the end of the run)."""
        for proc in [n.process for n in self.nodes if n is not None] + [self.lb_proc, self.redis_proc]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.pool.shutdown()


@pytest.fixture(scope="module")
def cluster_root(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.ensure()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(cluster_root):
    cluster_root.ensure()
    return cluster_root


# -- clients -------------------------------------------------------------------------------------
def stream_audio(ids: list[str]) -> tuple[np.ndarray, str]:
    """Clips one after the other with 0.8 s of silence between; their reference text."""
    entries = {e["id"]: e for e in manifest("speech-dev")}
    from streamer.audio import load_audio

    gap = np.zeros(int(0.8 * 16000), np.float32)
    audio = np.concatenate([part for i in ids for part in (load_audio(entries[i]["path"]), gap)])
    return audio, " ".join(entries[i]["text"] for i in ids)


@dataclass
class Client:
    """One ResumableSession streaming a clip at SPEED, with each final's arrival time."""

    url: str
    audio: np.ndarray
    session: ResumableSession = None
    final_times: list[float] = field(default_factory=list)  # monotonic
    ready_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.session = ResumableSession(
            self.url, 16000, mode="asr", on_message=self._on, reconnect=Reconnect(attempts=12, min_delay=0.1, max_delay=1.0)
        )
        self.first_final = asyncio.Event()

    def _on(self, item) -> None:
        if item.message["type"] == "ready":
            self.ready_times.append(time.monotonic())
        if item.message["type"] == "final":
            self.final_times.append(time.monotonic())
            if len(self.final_times) >= 2:
                self.first_final.set()

    async def run(self, speed: float = SPEED) -> "Client":
        async def produce() -> None:
            async for block in paced_blocks(self.audio, 16000, speed):
                await self.session.send(block)
            self.session.finish()

        producer = asyncio.create_task(produce())
        try:
            await asyncio.wait_for(self.session.run(), 240 + len(self.audio) / 16000 / speed)
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
        return self

    @property
    def finals(self) -> list[dict]:
        return [r.message for r in self.session.received if r.message["type"] == "final"]

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])


def failover(affected: list[Client], killed_at: float) -> str:
    """The client-visible gap of each client of a killed node: to its resumed `ready`, to its first new final."""
    after = lambda times: next(t for t in times if t > killed_at) - killed_at  # noqa: E731
    return "; ".join(f"ready after {after(c.ready_times):.2f} s, first new final after {after(c.final_times):.2f} s" for c in affected)


def stored(cluster: Cluster, session: ResumableSession, node: int | None = None) -> list[dict]:
    """The session's finals as stored, read through HAProxy (or one node)."""
    base = cluster.http_url if node is None else cluster.nodes[node].http_url
    url = f"{base}/v1/sessions/{session.session_id}/transcript"
    return json.load(http_get(url, {"X-Resume-Token": session.resume_token}))["finals"]


def assert_exactly_once(cluster: Cluster, client: Client) -> None:
    """Every final once, numbered without a gap, as stored; the `end` counts them all."""
    finals = client.finals
    assert [f["segment"] for f in finals] == list(range(len(finals))), [f["segment"] for f in finals]
    keys = ("segment", "text", "start", "end", "endpoint")
    assert [[f[k] for k in keys] for f in stored(cluster, client.session)] == [[f[k] for k in keys] for f in finals]
    end = client.session.received[-1].message
    assert end["type"] == "end" and end["finals"] == len(finals), end


def alone_texts(engine, streams) -> list[str]:
    """What the in-process pipeline makes of each stream alone (what a node makes of it: every decision point)."""
    from streamer.pipeline import run_stream

    return [run_stream(engine, engine.new_processor("asr"), audio).text for audio, _ in streams]


# -- tests (the one that stops nodes last) ------------------------------------------------------
async def test_a_full_node_leaves_the_pool_until_it_has_room(cluster):
    node = cluster.nodes[2]
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(6):  # its max_sessions
            ws = await stack.enter_async_context(open_ws(node.ws_url))
            await ws.send(start(mode="asr"))
            assert (await recv(ws))["type"] == "ready"
        assert _status(node, "/readyz") == 503 and json.load(node.get("/healthz"))["ready"] is False
        wait_for(lambda: cluster.lb_states()["node3"].startswith("DOWN"), 10, "the full node DOWN in HAProxy")
        async with open_ws(cluster.ws_url) as ws:  # through HAProxy: another node
            await ws.send(start(mode="asr"))
            ready = await recv(ws)
        assert ready["type"] == "ready" and cluster.node_of(ready["session_id"]) in (0, 1)
    wait_for(lambda: cluster.lb_states()["node3"] == "UP", 10, "the node UP again")
    assert _status(node, "/readyz") == 200


async def test_two_resumes_of_one_session_on_two_nodes_at_once_one_wins(cluster, streams):
    audio = streams[0][0]
    async with open_ws(cluster.nodes[0].ws_url) as first:
        await first.send(start(mode="asr"))
        ready = await recv(first)
        await send_audio(first, audio[: 16000 * 8], speed=0, stop=False)
        await asyncio.sleep(0.5)

        async def resume(node: int):
            async with open_ws(cluster.nodes[node].ws_url) as ws:
                await ws.send(start(mode="asr", **resume_fields(ready)))
                answer = await recv(ws, 60)
                if answer["type"] == "ready":
                    await send_audio(ws, audio[16000 * 8 : 16000 * 12], speed=0)
                msgs = [answer, *await drain(ws, 120)]
                return msgs, close_code(ws)

        results = await asyncio.gather(resume(1), resume(2))
        old = await drain(first, 60)
    winners = [msgs for msgs, _ in results if msgs[0]["type"] == "ready"]
    losers = [(msgs, code) for msgs, code in results if msgs[0]["type"] != "ready"]
    assert len(winners) == 1 and len(losers) == 1, results
    (lost, code), = losers
    assert lost[0]["type"] == "error" and lost[0]["code"] == "resume_conflict" and code == 1008, (lost, code)
    assert close_code(first) == 1008  # taken over: the old owner flushed and let go
    won = winners[0]
    assert won[-1]["type"] == "end"
    finals = [m for m in old + won if m["type"] == "final"]
    segments = sorted({f["segment"] for f in finals})
    assert segments == list(range(len(segments))) and won[-1]["finals"] == len(segments)

    # its transcript, the same in every format from every node
    url = f"/v1/sessions/{ready['session_id']}/transcript?format="
    for fmt in ("json", "txt", "srt", "vtt"):
        bodies = {http_get(n.http_url + url + fmt, secret(ready)).read() for n in cluster.nodes}
        assert len(bodies) == 1, fmt
    resent = [[f[k] for k in ("segment", "text", "start", "end")] for f in won if f["type"] == "final"]  # all, from 0
    assert [[f[k] for k in ("segment", "text", "start", "end")] for f in json.load(http_get(cluster.http_url + url + "json", secret(ready)))["finals"]] == resent


def _status(node: DaemonProcess, path: str) -> int:
    try:
        return node.get(path).status
    except urllib.error.HTTPError as exc:
        return exc.code


def _wav(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV")
    return buf.getvalue()


async def test_redis_restart_loses_no_acknowledged_final(cluster, streams):
    clients = [Client(cluster.ws_url, audio) for audio, *_ in streams[:2]]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.gather(*(c.first_final.wait() for c in clients))
    cluster.kill_redis()
    acknowledged = [list(c.finals) for c in clients]
    # while it is down: a new session is refused with a clear, retryable error
    async with open_ws(cluster.ws_url) as ws:
        await ws.send(start(mode="asr"))
        msgs = await drain(ws, 30)
    assert [m.get("code") for m in msgs] == ["storage_unavailable"] and close_code(ws) == 1013, (msgs, close_code(ws))
    # an upload and a transcript read: 503, try again later
    upload = OpenAI(base_url=f"{cluster.http_url}/v1", api_key="sk-none", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        await asyncio.to_thread(upload.audio.transcriptions.create, model="asr", file=("a.wav", _wav(streams[0][0][:16000])))
    assert err.value.status_code == 503 and err.value.code == "storage_unavailable", err.value
    with pytest.raises(urllib.error.HTTPError) as read:
        await asyncio.to_thread(stored, cluster, clients[0].session)
    assert read.value.code == 503
    await asyncio.sleep(2.0)  # finals come meanwhile: the live sessions end, with what is stored
    cluster.start_redis()  # the same AOF
    await asyncio.gather(*tasks)
    failed = [c for c in clients if any(m.message.get("code") == "storage_failed" for m in c.session.received)]
    assert failed and all(c.session.readies >= 2 for c in failed)
    for c, before in zip(clients, acknowledged):
        assert_exactly_once(cluster, c)
        keys = ("segment", "text", "start", "end")
        assert [[f[k] for k in keys] for f in stored(cluster, c.session)][: len(before)] == [[f[k] for k in keys] for f in before]
    # and new sessions work again
    async with open_ws(cluster.ws_url) as ws:
        await ws.send(start(mode="asr"))
        assert (await recv(ws))["type"] == "ready"


@pytest.fixture(scope="module")
def twelve(engine):
    """12 streams of a speech-dev clip each (4.5-6 s), their references, and what the in-process pipeline
    (one stream at a time, every decision point decoded) makes of each."""
    clips = [e["id"] for e in sorted(manifest("speech-dev"), key=lambda e: e["seconds"]) if e["seconds"] >= 4][:12]
    streams = [stream_audio([clip]) for clip in clips]
    return clips, streams, [ref for _, ref in streams], alone_texts(engine, streams)


@pytest.fixture(scope="module")
def streams(twelve):
    """Three ~24 s streams of four of the twelve clips each (0.8 s apart), and the twelve's in-process texts
    joined per stream: what each stream's clips get alone."""
    clips, _, _, alone = twelve
    return [(*stream_audio(clips[i : i + 4]), " ".join(alone[i : i + 4])) for i in range(0, 12, 4)]


async def test_twelve_real_time_clients_spread_and_match_one_daemon(cluster, twelve):
    """12 real-time streams through HAProxy: least connections spreads them over the nodes, every final is
    stored once, and each transcript is what one stream alone gets (the nodes fall behind, they skip
    nothing)."""
    _, streams, refs, alone = twelve
    await asyncio.to_thread(wait_for, lambda: all(cluster.sessions_on(i) == 0 for i in range(3)), 60, "idle nodes")
    clients = [Client(cluster.ws_url, audio) for audio, _ in streams]
    await asyncio.gather(*(c.run(1.0) for c in clients))
    spread = [cluster.node_of(c.session.session_id) for c in clients]
    for c in clients:
        assert c.session.connections == 1
        assert_exactly_once(cluster, c)
    texts = [c.text for c in clients]
    single, together = wer(refs, alone), wer(refs, texts)
    print(f"12 clients: {[spread.count(i) for i in range(3)]} a node; WER alone {single:.2%}, behind HAProxy {together:.2%}; "
          f"{sum(a == t for a, t in zip(alone, texts))} of 12 transcripts identical")
    for a, t in zip(alone, texts):
        if a != t:
            print(f"  alone: {a!r}\n  here:  {t!r}")
    assert min(spread.count(i) for i in range(3)) >= 3, spread
    assert abs(together - single) <= 0.01 and together < 0.15


async def test_a_node_killed_and_another_drained_their_sessions_resume_on_the_last(cluster, streams):
    """One stream a node (least connections); kill -9 of one node and SIGTERM of another: their clients
    reconnect through HAProxy and resume on the node left, every acknowledged final exactly once."""
    # least connections spreads three new streams over three nodes only once the earlier tests' sessions are gone
    await asyncio.to_thread(wait_for, lambda: all(cluster.sessions_on(i) == 0 for i in range(3)), 60, "idle nodes")
    clients = [Client(cluster.ws_url, audio) for audio, *_ in streams]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.gather(*(c.first_final.wait() for c in clients))
    nodes = [cluster.node_of(c.session.session_id) for c in clients]
    assert sorted(nodes) == [0, 1, 2], nodes
    killed, drained, last = (cluster.nodes[i] for i in nodes)
    acknowledged, at = [len(c.finals) for c in clients], [c.session.received[-1].audio_sent for c in clients]
    killed.process.kill()
    killed_at = time.monotonic()
    drained.process.send_signal(signal.SIGTERM)
    # not ready at once (live sessions go on), and HAProxy takes it out of the pool (waits off the clients' loop)
    await asyncio.to_thread(wait_for, lambda: _status(drained, "/readyz") == 503, 5, "/readyz 503")
    assert await asyncio.to_thread(_status, drained, "/healthz") == 200
    states = await asyncio.to_thread(wait_for, lambda: (s := cluster.lb_states()) and all(s[f"node{nodes[i] + 1}"].startswith("DOWN") for i in (0, 1)) and s, 10, "the killed and the drained node DOWN")
    assert states[f"node{nodes[0] + 1}"].startswith("DOWN") and states[f"node{nodes[2] + 1}"] == "UP", states
    assert await asyncio.to_thread(drained.process.wait, 60) == 0
    await asyncio.gather(*tasks)
    assert killed.process.wait(10) == -signal.SIGKILL
    for c, before in zip(clients, acknowledged):
        assert_exactly_once(cluster, c)
        assert len(c.finals) > before
    assert [c.session.readies >= 2 for c in clients] == [True, True, False] and clients[2].session.connections == 1
    assert {cluster.node_of(c.session.session_id) for c in clients} == {nodes[2]}
    refs, alone = [ref for _, ref, _ in streams], [text for *_, text in streams]
    single, failed_over = wer(refs, alone), wer(refs, [c.text for c in clients])
    print(f"at {', '.join(f'{t:.1f}' for t in at)} s of audio: kill -9: {failover(clients[:1], killed_at)}; "
          f"WER {failed_over:.2%} (alone {single:.2%})")
    assert failed_over - single <= 0.02


# -- the Redis store itself (a Redis of its own, no daemon) --------------------------------------
@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [_tool("redis-server"), str(DEPLOY / "redis.conf"), "--port", str(port), "--dir", str(tmp_path), "--supervised", "no",
         "--logfile", str(tmp_path / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
    )
    try:
        wait_for(redis.Redis(port=port).ping, 30, "redis")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


def _final(segment: int, text: str = "words") -> Final:
    return Final(segment, text, float(segment), segment + 1.0, True)


async def test_redis_appends_are_fenced_numbered_and_idempotent(redis_url):
    a, b = RedisStore(redis_url, lease=1.0, node="a"), RedisStore(redis_url, lease=1.0, node="b")
    let_go = []

    async def release(session_id: str) -> None:  # what the registry does: flush, then close the writer
        let_go.append(session_id)
        await a.writers[session_id].close(stream_time=2.5)

    await a.start(release)
    await b.start(release)
    try:
        await asyncio.sleep(0.2)  # subscribed
        writer = await a.open("s" * 32, {"mode": "asr", "format": {}}, secret="secret")
        await writer.append(_final(0))
        await writer.append(_final(1))
        await writer.append(_final(1))  # a retry whose first reply was lost: stored once
        with pytest.raises(OSError, match="SEGMENT"):
            await writer.append(_final(3))  # a gap
        with pytest.raises(OSError, match="SEGMENT"):
            await writer.append(_final(1, "other words"))  # a second, different segment 1
        assert [f.segment for f in await b.read("s" * 32)] == [0, 1]
        assert await b.exists("s" * 32) and secret_matches("secret", await b.secret("s" * 32))

        # one resume at a time, cluster-wide; b takes the live session over from a through Redis
        async with b.resuming("s" * 32):
            with pytest.raises(ResumeConflict):
                async with a.resuming("s" * 32):
                    pass
            taken = await b.open("s" * 32, {"mode": "asr"})
        assert let_go == ["s" * 32] and await b.stream_end("s" * 32) == 2.5
        with pytest.raises(OSError, match="NOTOWNER"):
            await writer.append(_final(2))  # a writer that lost the session adds nothing
        await taken.append(_final(2))

        # an owner that is gone (nobody on its channel) is replaced at once, not after its lease
        gone = RedisStore(redis_url, lease=60.0, node="gone")
        await gone.open("t" * 32, {"mode": "asr"}, secret="x")
        await gone.stop()
        t0 = time.monotonic()
        await b.open("t" * 32, {"mode": "asr"})
        assert time.monotonic() - t0 < 1.0
    finally:
        await a.stop()
        await b.stop()


async def test_redis_down_is_store_unavailable_at_once():
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.open("u" * 32, {"mode": "asr"}, secret="x")
    with pytest.raises(StoreUnavailable):
        await store.read("u" * 32)
    assert time.monotonic() - t0 < 5.0
    await store.stop()


# -- heavy: the 12 clients with a node killed ----------------------------------------------------
@pytest.mark.heavy
async def test_twelve_clients_survive_a_kill9(cluster, twelve):
    _, streams, refs, alone = twelve
    clients = [Client(cluster.ws_url, audio) for audio, _ in streams]
    tasks = [asyncio.create_task(c.run(1.0)) for c in clients]
    await asyncio.gather(*(c.first_final.wait() for c in clients))
    victim = cluster.node_of(clients[0].session.session_id)
    affected = [c for c in clients if cluster.node_of(c.session.session_id) == victim]
    cluster.nodes[victim].process.kill()
    killed_at = time.monotonic()
    await asyncio.gather(*tasks)
    for c in clients:
        assert_exactly_once(cluster, c)
    single, failed_over = wer(refs, alone), wer(refs, [c.text for c in clients])
    print(f"kill -9 of a node with {len(affected)} sessions: {failover(affected, killed_at)}; WER {single:.2%} -> {failed_over:.2%}")
    assert affected and all(c.session.readies >= 2 for c in affected)
    assert failed_over - single <= 0.02

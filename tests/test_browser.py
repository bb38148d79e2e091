"""End-to-end test of the captions page (clients/web) in real headless Chromium.

Chromium (Debian's package at /usr/bin/chromium) is driven with Python Playwright using the system
browser; `playwright install` is never run. The microphone is Chromium's fake capture device fed
from a speech-dev WAV (Chromium loops the file), so the page streams real speech through
getUserMedia -> AudioWorklet -> 16-bit PCM websocket frames to the real daemon (`daemon` fixture).

What the test needs is installed by the test itself: the pinned `playwright` package (from the
`test` extra in pyproject.toml) and `apt-get install chromium`. It is skipped, with the reason, only
where neither can be installed. Screenshots and downloaded transcripts go to test-output/.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from conftest import manifest

REPO = Path(__file__).resolve().parents[1]
WEB_ROOT = REPO / "clients" / "web"
OUT_DIR = REPO / "test-output"
CHROMIUM = Path("/usr/bin/chromium")
CLIP = "jfk"  # 11 s; text in manifest.jsonl
KEY_WORDS = ("fellow", "americans", "country")  # must all be on the page
MIN_RECALL = 0.85  # share of the clip's reference words found in the captions
CAPTION_TIMEOUT_S = 120.0

pytestmark = pytest.mark.timeout(420)


# -- installing what the test needs ---------------------------------------------------------------
def _pinned_playwright() -> str:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    for req in data["project"]["optional-dependencies"]["test"]:
        if re.match(r"^playwright\s*==", req):
            return req.replace(" ", "")
    return "playwright"


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _ensure_playwright():
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        req = _pinned_playwright()
        try:
            res = _run([sys.executable, "-m", "pip", "install", "--quiet", req], timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"playwright is not installed and `pip install {req}` failed: {exc}")
        if res.returncode != 0:
            pytest.skip(f"playwright is not installed and `pip install {req}` failed: {res.stderr[-500:]}")
        import importlib

        importlib.invalidate_caches()
    from playwright.sync_api import sync_playwright

    return sync_playwright


def _ensure_chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get to install Debian's chromium")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and apt-get needs root to install it (running as uid {os.geteuid()})")
    install = [apt, "install", "-y", "chromium"]
    log = []
    for step in (install, [apt, "update"], install):
        try:
            res = _run(step, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.append(f"{' '.join(step)}: {exc}")
            continue
        log.append(f"{' '.join(step)}: rc={res.returncode} {res.stderr.strip()[-300:]}")
        if step is install and res.returncode == 0 and CHROMIUM.exists():
            return CHROMIUM
    pytest.skip(f"no browser: {CHROMIUM} is missing and could not be installed: " + " | ".join(log))


def _clip() -> tuple[Path, str]:
    """The clip, through conftest's manifest(): missing data fails under CI instead of skipping."""
    entry = next(e for e in manifest("speech-dev") if e["id"] == CLIP)
    return Path(entry["path"]), entry["text"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


# -- browser fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip() -> tuple[Path, str]:
    return _clip()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, clip):
    """A headless Chromium whose microphone plays the speech clip (in a loop)."""
    sync_playwright = _ensure_playwright()
    chromium = _ensure_chromium()
    wav, _ = clip
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(chromium),
            headless=True,
            args=args,
            viewport={"width": 1280, "height": 720},
            accept_downloads=True,
        )
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    yield page
    page.close()


def _open(page, daemon, mode: str = "asr") -> None:
    """The captions page of `daemon` (anything with an http_url: the daemon, or a proxy in front of it)."""
    page.goto(f"{daemon.http_url}/?mode={mode}&caption=0")
    page.wait_for_function("() => window.captions && window.captions.state === 'idle'", timeout=15000)
    # Record whether a dimmed partial was ever shown (partials are replaced, so look as they come).
    page.evaluate(
        """() => {
          window.__partials = 0;
          new MutationObserver(() => {
            const p = document.querySelector('#captions .partial');
            if (p && p.textContent.trim()) window.__partials++;
          }).observe(document.getElementById('captions'), {subtree: true, childList: true, characterData: true});
        }"""
    )


def _start(page) -> None:
    page.click("#start")
    page.wait_for_function("() => window.captions.state === 'live'", timeout=30000)


def _wait_for_words(page, words, reference: str = "", timeout: float = CAPTION_TIMEOUT_S) -> tuple[str, float]:
    """Wait until all `words` and MIN_RECALL of the reference's words are in the captions."""
    ref = set(_words(reference))
    deadline = time.monotonic() + timeout
    text, recall = "", 0.0
    while time.monotonic() < deadline:
        text = page.inner_text("#captions")
        found = set(_words(text))
        recall = len(ref & found) / len(ref) if ref else 1.0
        if all(w in found for w in words) and recall >= MIN_RECALL:
            return text, recall
        state = page.evaluate("window.captions.state")
        assert state in ("live", "connecting", "reconnecting"), f"page left the live state: {state} ({text!r})"
        time.sleep(0.5)
    raise AssertionError(
        f"after {timeout:.0f} s the page lacks some of {list(words)} or has only {recall:.0%} of the "
        f"reference words {sorted(ref)}; it shows {text!r}"
    )


def _stop(page) -> None:
    page.click("#stop")
    page.wait_for_function("() => window.captions.state === 'stopped'", timeout=30000)


# -- tests ----------------------------------------------------------------------------------------
def test_live_captions_in_chromium(daemon, page, clip, record_property):
    _, reference = clip
    OUT_DIR.mkdir(exist_ok=True)
    t0 = time.monotonic()
    _open(page, daemon)
    assert page.title() == "uadf-stream live captions"
    _start(page)
    assert page.evaluate("window.captions.sessionId"), "no session id after ready"
    rate = page.evaluate("window.captions.sampleRate")
    assert 8000 <= rate <= 48000

    text, recall = _wait_for_words(page, KEY_WORDS, reference)
    first_caption_s = time.monotonic() - t0
    page.wait_for_function("() => window.captions.finals.length >= 1", timeout=60000)
    assert page.evaluate("window.__partials") > 0, "no partial caption was ever shown"
    assert page.locator("#captions .final").count() >= 1

    shot = OUT_DIR / "browser-captions.png"
    page.screenshot(path=str(shot))
    record_property("screenshot", str(shot))
    print(f"\nscreenshot: {shot}")

    # Large-font caption mode.
    normal_px = float(page.evaluate("parseFloat(getComputedStyle(document.getElementById('captions')).fontSize)"))
    page.click("#bigmode")
    assert page.evaluate("document.body.classList.contains('big')")
    big_px = float(page.evaluate("parseFloat(getComputedStyle(document.getElementById('captions')).fontSize)"))
    assert big_px >= 1.5 * normal_px, (normal_px, big_px)
    big_shot = OUT_DIR / "browser-captions-large.png"
    page.screenshot(path=str(big_shot))
    record_property("screenshot_large", str(big_shot))
    print(f"screenshot (caption mode): {big_shot}")
    page.click("#exitbig")

    _stop(page)
    finals = page.evaluate("window.captions.finals")
    assert finals and all(f["end"] >= f["start"] for f in finals)
    assert page.locator("#captions .partial").count() == 0, "partial left on screen after stop"

    # Downloads, built in the page from the finals.
    saved = {}
    for button, ext in (("#dl-txt", "txt"), ("#dl-srt", "srt"), ("#dl-vtt", "vtt")):
        with page.expect_download() as info:
            page.click(button)
        dl = info.value
        path = OUT_DIR / f"browser-transcript.{ext}"
        dl.save_as(str(path))
        saved[ext] = path.read_text(encoding="utf-8")
        assert dl.suggested_filename.endswith("." + ext)
    page_text = page.evaluate("window.captions.text()")
    assert " ".join(saved["txt"].split()) == " ".join(page_text.split())
    cue = r"(\d+)\n(\d\d:\d\d:\d\d)[,.](\d{3}) --> (\d\d:\d\d:\d\d)[,.](\d{3})\n(.+?)\n(?:\n|$)"
    srt_cues = re.findall(cue.replace("[,.]", ","), saved["srt"], flags=re.S)
    assert srt_cues and srt_cues[0][0] == "1", saved["srt"][:300]
    assert saved["vtt"].startswith("WEBVTT\n\n")
    vtt_cues = re.findall(cue.replace("[,.]", r"\."), saved["vtt"], flags=re.S)
    assert len(vtt_cues) == len(srt_cues)
    assert " ".join(" ".join(c[5].split()) for c in srt_cues).split() == page_text.split()
    print(f"expected words on the page {first_caption_s:.1f} s after opening it; recall {recall:.0%}; {len(finals)} finals")
    assert not [e for e in page.errors if "favicon" not in e], page.errors


def test_reconnect_resumes_session(daemon, page):
    """An unexpected close is followed by a reconnect that resumes the same session, without duplicates."""
    _open(page, daemon)
    _start(page)
    page.wait_for_function("() => window.captions.finals.length >= 1", timeout=CAPTION_TIMEOUT_S * 1000)
    session = page.evaluate("window.captions.sessionId")
    secret = page.evaluate("window.captions.resumeToken")
    before = page.evaluate("window.captions.finals")

    page.evaluate("window.captions.simulateDrop()")
    page.wait_for_function("() => window.captions.state !== 'live'", timeout=5000)
    page.wait_for_function("() => window.captions.state === 'live'", timeout=30000)
    assert page.evaluate("window.captions.sessionId") == session, "reconnect did not resume the session"
    n = len(before)
    page.wait_for_function(f"() => window.captions.finals.length > {n}", timeout=CAPTION_TIMEOUT_S * 1000)
    _stop(page)

    after = page.evaluate("window.captions.finals")
    assert [f["text"] for f in after[:n]] == [f["text"] for f in before], "finals shown before the drop changed"
    assert page.locator("#captions .final").count() == len(after), "a final is shown twice"
    # The page's transcript is the server's transcript of that session.
    url = f"{daemon.http_url}/v1/sessions/{session}/transcript?format=txt&resume_token={secret}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        server_text = resp.read().decode("utf-8")
    page_text = page.evaluate("window.captions.text()")
    assert " ".join(server_text.split()) == " ".join(page_text.split())
    assert not [e for e in page.errors if "favicon" not in e], page.errors


# -- the page's protocol handling against a scripted server ---------------------------------------
SID = "scripted-1"
FINALS = [
    {"type": "final", "segment": 0, "text": "And so my fellow Americans,", "start": 0.3, "end": 2.0, "endpoint": False,
     "words": [{"word": w, "start": 0.3 + 0.34 * i, "end": 0.6 + 0.34 * i, "probability": 0.9, "fused": w == "fellow"}
               for i, w in enumerate("And so my fellow Americans,".split())]},
    {"type": "final", "segment": 1, "text": "ask not what your country can do for you.", "start": 2.1, "end": 5.0,
     "endpoint": True,
     "words": [{"word": w, "start": 2.1 + 0.32 * i, "end": 2.4 + 0.32 * i, "probability": 0.8, "fused": w == "country"}
               for i, w in enumerate("ask not what your country can do for you.".split())]},
    {"type": "final", "segment": 2, "text": "Ask what you can do for your country.", "start": 6.0, "end": 8.0, "endpoint": True,
     "words": [{"word": w, "start": 6.0 + 0.25 * i, "end": 6.2 + 0.25 * i, "probability": 0.95, "fused": False}
               for i, w in enumerate("Ask what you can do for your country.".split())]},
]


class ScriptedServer:
    """A stand-in for the daemon on a thread: serves clients/web and plays a fixed message script.

    Connection 1: ready, two partials and final 0, a partial for segment 1, then (when the test says
    so) an abrupt close. Connection 2 must resume the session: it resends final 0 (the page must not
    show it twice) and sends final 1; on `stop` it sends final 2 and `end`.
    """

    def __init__(self):
        self.starts: list[dict] = []
        self.frames: list[int] = []
        self.problems: list[str] = []
        self.drop = threading.Event()
        self.started = threading.Event()
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        async def index(request):
            return web.FileResponse(WEB_ROOT / "index.html")

        async def healthz(request):
            return web.json_response({"status": "ok", "modes": ["asr", "uadf"], "default_mode": "asr"})

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/v1/listen", self._listen)
        app.router.add_static("/web/", WEB_ROOT)
        runner = web.AppRunner(app, shutdown_timeout=1)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    async def _audio(self, ws, seconds: float, rate: int) -> None:
        from aiohttp import WSMsgType

        got = 0
        while got < seconds * rate * 2:
            msg = await ws.receive()
            if msg.type != WSMsgType.BINARY:
                self.problems.append(f"expected audio, got {msg.type} {msg.data!r}")
                return
            self.frames.append(len(msg.data))
            got += len(msg.data)

    async def _listen(self, request):
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        start = json.loads((await ws.receive()).data)
        self.starts.append(start)
        rate = start.get("sample_rate", 16000)
        resumed = start.get("session_id") == SID
        await ws.send_json({"type": "ready", "session_id": SID, "protocol": 1, "sample_rate": 16000,
                            "mode": start.get("mode", "asr"), "model": "scripted", "resumed": resumed, "stream_time": 0.0})
        if len(self.starts) == 1:
            await self._audio(ws, 0.5, rate)
            await ws.send_json({"type": "partial", "segment": 0, "text": "And so", "start": 0.3, "end": 0.9})
            await ws.send_json({"type": "partial", "segment": 0, "text": "And so my fellow", "start": 0.3, "end": 1.5})
            await ws.send_json(FINALS[0])
            await ws.send_json({"type": "partial", "segment": 1, "text": "ask not what your", "start": 2.1, "end": 3.2})
            await asyncio.get_running_loop().run_in_executor(None, self.drop.wait, 60)
            await ws.close(code=1011, message=b"scripted drop")
            return ws
        for final in FINALS[:2]:  # final 0 again, as a server may resend it
            await ws.send_json(final)
        await ws.send_json({"type": "partial", "segment": 2, "text": "Ask what", "start": 6.0, "end": 6.5})
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                self.frames.append(len(msg.data))
            elif msg.type == WSMsgType.TEXT and json.loads(msg.data).get("type") == "stop":
                await ws.send_json(FINALS[2])
                await ws.send_json({"type": "end", "session_id": SID, "finals": 3, "audio_seconds": 8.0})
                await ws.close(code=1000)
                break
        return ws

    def __enter__(self):
        self.thread.start()
        if not self.started.wait(15):
            raise RuntimeError("scripted server did not start")
        return self

    def __exit__(self, *exc):
        self.drop.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)


def test_page_protocol_fusion_and_resume(page, record_property):
    """Wire format, partials replaced in place, fused words highlighted, resume without duplicates,
    and the subtitle downloads, all against a scripted server (deterministic, no ASR involved)."""
    OUT_DIR.mkdir(exist_ok=True)
    with ScriptedServer() as server:
        page.goto(f"{server.http_url}/?mode=uadf")
        page.wait_for_function("() => window.captions && window.captions.state === 'idle'", timeout=15000)
        page.evaluate(
            """() => {
              window.__maxPartials = 0;
              new MutationObserver(() => {
                window.__maxPartials = Math.max(window.__maxPartials, document.querySelectorAll('#captions .partial').length);
              }).observe(document.getElementById('captions'), {subtree: true, childList: true});
            }"""
        )
        page.click("#start")
        page.wait_for_function("() => document.querySelector('#captions .partial')?.textContent.trim() === 'ask not what your'",
                               timeout=30000)

        start = server.starts[0]
        rate = page.evaluate("window.captions.sampleRate")
        assert start == {"type": "start", "sample_rate": rate, "encoding": "pcm_s16le", "channels": 1, "mode": "uadf"}
        assert server.frames and all(n % 2 == 0 for n in server.frames)
        assert abs(server.frames[0] - 2 * round(rate * 0.1)) <= 2, "audio frames should be 100 ms of 16-bit mono"

        # Partial: dimmed, after the final, one at a time.
        assert page.inner_text("#captions").split() == "And so my fellow Americans, ask not what your".split()
        final_color = page.eval_on_selector("#captions .final", "e => getComputedStyle(e).color")
        partial_color = page.eval_on_selector("#captions .partial", "e => getComputedStyle(e).color")
        assert partial_color != final_color
        # Fused word: marked, with a tooltip, highlighted on hover.
        fused = page.locator("#captions .w.fused")
        assert fused.all_inner_texts() == ["fellow"]
        assert "fusion" in (fused.first.get_attribute("title") or "").lower()
        before = fused.first.evaluate("e => getComputedStyle(e).backgroundColor")
        fused.first.hover()
        after = fused.first.evaluate("e => getComputedStyle(e).backgroundColor")
        assert after != before and after not in ("rgba(0, 0, 0, 0)", "transparent"), (before, after)
        page.mouse.move(5, 700)

        # Drop: the page reconnects, resumes the same session, and shows no final twice.
        server.drop.set()
        page.wait_for_function("() => window.captions.finals.length === 2", timeout=30000)
        assert len(server.starts) == 2
        resume = server.starts[1]
        assert resume["session_id"] == SID and resume["resume_from"] == 1, resume
        assert page.locator("#captions .final").count() == 2
        assert page.locator("#captions .w.fused").all_inner_texts() == ["fellow", "country"]
        page.wait_for_function("() => document.querySelector('#captions .partial')?.textContent.trim() === 'Ask what'")
        page.click("#showfused")
        shot = OUT_DIR / "browser-fusion.png"
        page.screenshot(path=str(shot))
        record_property("screenshot_fusion", str(shot))

        page.click("#stop")
        page.wait_for_function("() => window.captions.state === 'stopped'", timeout=15000)
        assert page.evaluate("window.__maxPartials") == 1
        assert page.locator("#captions .partial").count() == 0
        # Endpoint finals end a caption line.
        assert page.locator("#captions p.line").all_inner_texts() == [
            "And so my fellow Americans, ask not what your country can do for you.",
            "Ask what you can do for your country.",
        ]
        assert page.evaluate("window.captions.txt()") == (
            "And so my fellow Americans, ask not what your country can do for you.\n"
            "Ask what you can do for your country.\n"
        )
        srt = page.evaluate("window.captions.srt()")
        assert srt.startswith("1\n00:00:00,300 --> ")
        assert srt.rstrip().endswith("00:00:06,000 --> 00:00:07,950\nAsk what you can do for your country.")
        vtt = page.evaluate("window.captions.vtt()")
        assert vtt.startswith("WEBVTT\n\n1\n00:00:00.300 --> ")
        assert "-->" in vtt and "," not in vtt.split("\n")[3].split("-->")[0]
        assert not server.problems, server.problems
        assert not [e for e in page.errors if "favicon" not in e], page.errors


# -- the page against the real daemon: fusion with the real LLM through a dropping network, tokens ----
def test_fusion_captions_resume_after_a_real_connection_drop(llm_daemon, page):
    """The page in uadf mode on the daemon with Gemma 3 270M, through a proxy that resets the connection
    (no close frame): the page reconnects, the daemon takes the session over and resends what the page
    missed, and the page shows every final once, as the server's transcript has them."""
    from streamutil import DropProxy

    with DropProxy(llm_daemon.port) as proxy:
        _open(page, proxy, mode="uadf")
        _start(page)
        page.wait_for_function("() => window.captions.finals.length >= 1", timeout=CAPTION_TIMEOUT_S * 1000)
        session = page.evaluate("window.captions.sessionId")
        secret = page.evaluate("window.captions.resumeToken")
        n = page.evaluate("window.captions.finals.length")
        proxy.cut()
        page.wait_for_function("() => window.captions.state !== 'live'", timeout=30000)
        page.wait_for_function("() => window.captions.state === 'live'", timeout=60000)
        assert page.evaluate("window.captions.sessionId") == session, "the page did not resume its session"
        page.wait_for_function(f"() => window.captions.finals.length > {n}", timeout=CAPTION_TIMEOUT_S * 1000)
        _stop(page)
        assert proxy.connections >= 2
    finals = page.evaluate("window.captions.finals")
    assert page.locator("#captions .final").count() == len(finals), "a final is shown twice"
    url = f"{llm_daemon.http_url}/v1/sessions/{session}/transcript?resume_token={secret}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        server = json.load(resp)["finals"]
    assert [f["text"] for f in server] == [f["text"] for f in finals]
    assert all(f["endpoint"] for f in server)  # uadf mode commits whole utterances
    assert not [e for e in page.errors if "favicon" not in e], page.errors


TOKEN = "browser-test-token"


@pytest.fixture(scope="module")
def token_daemon(tmp_path_factory):
    from tools.daemon_process import start_daemon, stop_daemon

    d = start_daemon(tmp_path_factory.mktemp("token-daemon"), "--token", TOKEN, "--set", "server.max_rate=0")
    yield d
    stop_daemon(d)


@pytest.mark.parametrize("query", ["", "&token=wrong"])
def test_a_missing_or_wrong_token_is_shown_not_retried(token_daemon, page, query):
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{token_daemon.http_url}/?mode=asr{query}")
    page.wait_for_function("() => window.captions && window.captions.error.startsWith('unauthorized')", timeout=15000)
    page.click("#start")
    page.wait_for_function("() => window.captions.state === 'error'", timeout=15000)
    time.sleep(3)  # no reconnect loop: still in error, no websocket tried
    assert page.evaluate("window.captions.state") == "error" and sockets == []
    assert "token" in page.inner_text("#error")


def test_the_right_token_is_used_for_the_session_and_its_resume(token_daemon, page):
    page.goto(f"{token_daemon.http_url}/?mode=asr&token={TOKEN}")
    page.wait_for_function("() => window.captions && window.captions.state === 'idle'", timeout=15000)
    _start(page)
    page.wait_for_function("() => window.captions.finals.length >= 1", timeout=CAPTION_TIMEOUT_S * 1000)
    assert page.evaluate("window.captions.error") == ""
    session = page.evaluate("window.captions.sessionId")
    page.evaluate("window.captions.simulateDrop()")
    page.wait_for_function("() => window.captions.state === 'live'", timeout=30000)
    assert page.evaluate("window.captions.sessionId") == session
    _stop(page)


# -- speaker labels on the page, against a scripted server ----------------------------------------------
def _labelled(segment: int, start: float, spoken: str, speakers: list[int], endpoint: bool) -> dict:
    words = [{"word": w, "start": start + 0.3 * i, "end": start + 0.3 * i + 0.25, "probability": 0.9, "fused": False,
              "speaker": k} for i, (w, k) in enumerate(zip(spoken.split(), speakers))]
    final = {"type": "final", "segment": segment, "text": spoken, "start": words[0]["start"], "end": words[-1]["end"],
             "endpoint": endpoint, "speaker": speakers[0], "words": words}
    return {**final, "speaker_change": True} if len(set(speakers)) > 1 else final


SPEAKER_FINALS = [
    _labelled(0, 0.5, "Good morning, everyone.", [0, 0, 0], True),
    _labelled(1, 2.0, "Thanks, Anna. Shall we", [1, 1, 1, 1], False),
    _labelled(2, 3.2, "start? Yes, the budget first.", [1, 0, 0, 0, 0], True),  # the speaker changes inside
    _labelled(3, 5.5, "Agreed.", [2], True),
]


class SpeakerServer(ScriptedServer):
    """Answers a start with ready, the four labelled finals once audio flows, and `end` on stop."""

    async def _listen(self, request):
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        start = json.loads((await ws.receive()).data)
        self.starts.append(start)
        await ws.send_json({"type": "ready", "session_id": "spk-1", "protocol": 1, "sample_rate": 16000, "mode": "asr",
                            "model": "scripted", "resumed": False, "stream_time": 0.0})
        await self._audio(ws, 0.3, start.get("sample_rate", 16000))
        for final in SPEAKER_FINALS:
            await ws.send_json(final)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and json.loads(msg.data).get("type") == "stop":
                await ws.send_json({"type": "end", "session_id": "spk-1", "finals": 4, "audio_seconds": 6.0})
                await ws.close(code=1000)
                break
        return ws


def test_page_shows_a_label_and_a_colour_per_speaker(page, record_property):
    OUT_DIR.mkdir(exist_ok=True)
    with SpeakerServer() as server:
        page.goto(f"{server.http_url}/?mode=asr&speakers=1")
        page.wait_for_function("() => window.captions && window.captions.state === 'idle'", timeout=15000)
        assert page.get_attribute("#speakers", "aria-pressed") == "true"
        page.click("#start")
        page.wait_for_function("() => window.captions.finals.length === 4", timeout=30000)
        assert server.starts[0]["diarize"] is True

        lines = page.locator("#captions p.line")
        assert lines.all_inner_texts() == [
            "Speaker 1 Good morning, everyone.", "Speaker 2 Thanks, Anna. Shall we start?", "Speaker 1 Yes, the budget first.",
            "Speaker 3 Agreed.",
        ]
        assert page.locator("#captions .final").count() == 4 and page.locator("#captions .final-part").count() == 1
        edge = [lines.nth(i).evaluate("e => getComputedStyle(e).borderLeftColor") for i in range(4)]
        label = [page.locator("#captions .who").nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(4)]
        assert edge[0] == edge[2] == label[0] == label[2] and len({edge[0], edge[1], edge[3]}) == 3, edge
        shot = OUT_DIR / "browser-speakers.png"
        page.screenshot(path=str(shot))
        record_property("screenshot_speakers", str(shot))

        page.click("#stop")
        page.wait_for_function("() => window.captions.state === 'stopped'", timeout=15000)
        assert page.evaluate("window.captions.txt()") == (
            "Speaker 1: Good morning, everyone.\nSpeaker 2: Thanks, Anna. Shall we start?\n"
            "Speaker 1: Yes, the budget first.\nSpeaker 3: Agreed.\n"
        )
        vtt = page.evaluate("window.captions.vtt()")
        assert "<v Speaker 2>Thanks, Anna. Shall we start?\n" in vtt and "<v Speaker 3>Agreed.\n" in vtt
        assert "\nSpeaker 1: Yes, the budget first.\n" in page.evaluate("window.captions.srt()")
        assert [f["speaker"] for f in page.evaluate("window.captions.finals")] == [0, 1, 1, 2]
        assert not server.problems, server.problems
        assert not [e for e in page.errors if "favicon" not in e], page.errors

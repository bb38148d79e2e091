"""Run the real daemon as a subprocess on a free port, and sample its CPU and memory (bench, tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"listening on https?://([\d.]+):(\d+)")


@dataclass
class DaemonProcess:
    process: subprocess.Popen
    host: str
    port: int
    data_dir: Path
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/listen"

    def get(self, path: str, headers: dict | None = None):
        req = urllib.request.Request(self.http_url + path, headers=headers or {})
        return urllib.request.urlopen(req, timeout=30)


def start_daemon(
    workdir: Path, *extra: str, llm: str = "", env: dict | None = None, timeout: float = 300, preexec_fn=None
) -> DaemonProcess:
    """Start `python -m streamer serve --port 0` and wait for its "listening on" line.

    stderr goes to `workdir/daemon.log`; stdout is drained into it after the start line so the pipe never fills.
    `preexec_fn` runs in the daemon's process before it starts (e.g. resource limits for fault tests).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "sessions"
    log = workdir / "daemon.log"
    cmd = [
        sys.executable, "-m", "streamer", "serve", "--host", "127.0.0.1", "--port", "0",
        "--data-dir", str(data_dir), "--llm", llm, *extra,
    ]
    out = open(log, "w")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=out, text=True, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    match = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                out.close()
                raise RuntimeError(f"daemon exited with {proc.returncode}: {log.read_text()[-3000:]}")
            continue
        if match := LISTENING.search(line):
            break
    if match is None:
        proc.kill()
        raise RuntimeError("daemon did not start in time")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return DaemonProcess(proc, match.group(1), int(match.group(2)), data_dir, log)


def stop_daemon(daemon: DaemonProcess, timeout: float = 60) -> int:
    if daemon.process.poll() is None:
        daemon.process.terminate()
        try:
            daemon.process.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
    return daemon.process.wait()


@dataclass
class Usage:
    """CPU and memory of a process over an interval."""

    wall_seconds: float
    cpu_seconds: float
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float

    @property
    def cpu_percent(self) -> float:
        """Average CPU use in percent of one core."""
        return 100.0 * self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class ResourceMonitor:
    """Samples a process (and its children) every `interval` seconds in a background thread."""

    pid: int
    interval: float = 0.2
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (monotonic, cpu s, rss MB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            proc = psutil.Process(self.pid)
            procs = [proc] + proc.children(recursive=True)
            cpu = rss = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            return (time.monotonic(), cpu, rss / 2**20)
        except psutil.NoSuchProcess:
            return None

    def _take(self) -> None:
        with self._lock:
            if (s := self._sample()) is not None:
                self.samples.append(s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self.interval)

    def start(self) -> "ResourceMonitor":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def mark(self) -> int:
        """Take a sample now and return its index, to measure an interval with `usage`."""
        self._take()
        return len(self.samples) - 1

    def usage(self, start: int, end: int) -> Usage:
        window = self.samples[start : end + 1]
        (t0, c0, r0), (t1, c1, r1) = window[0], window[-1]
        return Usage(t1 - t0, c1 - c0, r0, r1, max(r for _, _, r in window))

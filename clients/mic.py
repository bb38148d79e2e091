"""Live captions from the microphone: the partial line is rewritten in place, finals are printed.

    python -m clients.mic [--url ws://127.0.0.1:8765/v1/listen] [--device N] [--list-devices]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys

import numpy as np

from clients.stream import DEFAULT_URL, Received, ResumableSession
from core.types import Mode


class CaptionLine:
    """Terminal caption display: finals scroll up, the partial stays on the last line."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.width = shutil.get_terminal_size((100, 20)).columns - 1

    def partial(self, text: str) -> None:
        shown = text[-self.width :]
        self.stream.write("\r\033[2K\033[2m" + shown + "\033[0m")
        self.stream.flush()

    def final(self, text: str, endpoint: bool) -> None:
        self.stream.write("\r\033[2K" + text + ("\n" if endpoint else " "))
        self.stream.flush()


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio shared library is missing
        raise SystemExit(f"microphone capture needs PortAudio ({exc}); on Debian/Ubuntu: apt-get install libportaudio2") from None
    return sounddevice


async def run(args: argparse.Namespace, stop: asyncio.Event, out=sys.stdout) -> None:
    """Capture until `stop` is set (Ctrl-C), then flush: the server turns pending audio into finals. A dropped
    connection is resumed (the audio meanwhile is queued, up to 30 s)."""
    sd = _sounddevice()
    info = sd.query_devices(args.device, "input")
    rate = int(args.rate or info["default_samplerate"])
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue(maxsize=100)  # None: capture ended

    def put(block: np.ndarray | None) -> None:
        if queue.full():  # the sender is stalled (no room while reconnecting): drop the oldest block
            queue.get_nowait()
        queue.put_nowait(block)

    def callback(indata, frames, time_info, status) -> None:  # audio thread
        loop.call_soon_threadsafe(put, indata[:, 0].copy())

    display = CaptionLine(out)

    def show(item: Received) -> None:
        msg = item.message
        if msg["type"] == "ready" and not msg.get("resumed"):
            print(f"# session {msg['session_id']} ({msg['mode']}, {msg['model']}); Ctrl-C to stop", file=sys.stderr)
        elif msg["type"] == "partial":
            display.partial(msg["text"])
        elif msg["type"] == "final":
            display.final(msg["text"], msg.get("endpoint", False))
        elif msg["type"] == "error":
            print(f"\nerror {msg['code']}: {msg['message']}", file=sys.stderr)

    session = ResumableSession(args.url, rate, 1, args.mode, args.token, show, keyterms=args.keyterm)

    async def capture() -> None:
        with sd.InputStream(
            samplerate=rate, channels=1, dtype="float32", device=args.device, blocksize=int(rate * 0.05), callback=callback
        ):
            await stop.wait()
        put(None)

    async def forward() -> None:
        while (block := await queue.get()) is not None:
            await session.send(block)
        session.finish()

    forwarder = asyncio.create_task(forward())
    capturer = asyncio.create_task(capture())
    try:
        await session.run()
    finally:
        for task in (forwarder, capturer):
            task.cancel()
        await asyncio.gather(forwarder, capturer, return_exceptions=True)


async def _until_interrupted(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    await run(args, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.mic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--device", type=lambda s: int(s) if s.isdigit() else s, help="input device index or name")
    p.add_argument("--list-devices", action="store_true")
    p.add_argument("--rate", type=int, help="capture sample rate (default: the device's)")
    p.add_argument("--mode", choices=Mode.names())
    p.add_argument("--token", default=os.environ.get("UADF_TOKEN"), help="bearer token (default: $UADF_TOKEN, which ps does not show)")
    p.add_argument("--keyterm", action="append", default=[], help="a word or phrase to favour: a name, a product, jargon (repeatable, at most 100)")
    args = p.parse_args(argv)
    if args.list_devices:
        print(_sounddevice().query_devices())
        return 0
    asyncio.run(_until_interrupted(args))
    print(file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stream a WAV/FLAC file to the daemon at real-time pace (or --speed N) and print what comes back; a
dropped connection is resumed (the session's finals arrive once each).

    python -m clients.file speech.wav [--url ws://127.0.0.1:8765/v1/listen] [--speed 4] [--out messages.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import soundfile as sf

from clients.stream import DEFAULT_URL, Received, stream_audio
from core.types import Mode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.file", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--speed", type=float, default=1.0, help="times real time (0: as fast as possible)")
    p.add_argument("--mode", choices=Mode.names())
    p.add_argument("--chunk", type=float, default=0.1, help="seconds of audio a frame")
    p.add_argument("--token", default=os.environ.get("UADF_TOKEN"), help="bearer token (default: $UADF_TOKEN, which ps does not show)")
    p.add_argument("--out", help="write every message (with arrival times) as JSON lines here")
    p.add_argument("--quiet", action="store_true", help="print only the final transcript")
    p.add_argument("--keyterm", action="append", default=[], help="a word or phrase to favour: a name, a product, jargon (repeatable, at most 100)")
    args = p.parse_args(argv)

    audio, rate = sf.read(args.audio, dtype="float32", always_2d=True)
    out = open(args.out, "w", encoding="utf-8") if args.out else None

    def show(item: Received) -> None:
        msg = item.message
        if out:
            out.write(json.dumps({"wall": round(item.wall, 3), "audio_sent": round(item.audio_sent, 3), **msg}) + "\n")
        if args.quiet:
            return
        if msg["type"] == "final":
            print(f"[{msg['start']:7.2f} - {msg['end']:7.2f}] {msg['text']}", flush=True)
        elif msg["type"] == "partial":
            print(f"  ... {msg['text']}", flush=True)
        elif msg["type"] == "error":
            print(f"error {msg['code']}: {msg['message']}", file=sys.stderr, flush=True)

    try:
        received = asyncio.run(
            stream_audio(args.url, audio, rate, audio.shape[1], args.mode, args.speed, args.chunk, args.token, show, keyterms=args.keyterm)
        )
    finally:
        if out:
            out.close()
    text = " ".join(r.message["text"] for r in received if r.message.get("type") == "final" and r.message["text"])
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

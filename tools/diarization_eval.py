"""Speaker labels on live finals: DER, cpWER against WER, and the speaker stage's CPU per audio second.

Each stream runs through the in-process streaming pipeline (asr mode, no LLM); every final is labelled as it
is committed, with the stream audio that had arrived by then, by one `OnlineDiarizer`, as a session would.

- DER (pyannote.metrics, collar 0.25 s, overlap scored): reference RTTM against turns made of the labelled
  words. Missed speech and false alarm come from the ASR's words (fillers Whisper leaves out, word timing);
  confusion is the labels' own error. "DER, true labels": the same words, each with its true speaker.
- cpWER (meeteval, as in CHiME-6): per-speaker reference texts against per-label texts, best permutation.
  "WER (true speakers)": the same with each word given its true speaker, i.e. the ASR's own errors (a built
  stream has no reference text in spoken order: its clips' pieces interleave). Whisper's English normaliser.
- CPU: process CPU seconds of the speaker stage (embedding + clustering) per audio second, beside the
  streaming ASR's own, measured in the same process.

    python -m tools.meeting_streams --seeds 1-20
    python -m tools.diarization_eval --seeds 13-20 --call

The ASR finals are cached under --out (asr/<id>.json); --reuse-asr labels the cached finals again (to try
diarizer options without decoding again).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jiwer
import numpy as np
import torch
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate
from whisper_normalizer.english import EnglishTextNormalizer

from streamer.audio import SAMPLE_RATE, load_audio
from streamer.config import load_config
from streamer.ge2e import Ge2eEncoder
from streamer.speakers import DiarizerOptions, OnlineDiarizer, SpeakerEncoder
from tools.meeting_streams import parse_seeds

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COLLAR = 0.25
_normalise = EnglishTextNormalizer()


@dataclass
class TimedWord:
    word: str
    start: float
    end: float


@dataclass
class Stream:
    """One scored recording: audio, reference speaker regions, reference text per speaker and in order."""

    id: str
    audio_path: str
    rttm_path: str
    speaker_text: dict[str, str]
    text: str | None = None  # all reference text in spoken order, where known (not for built streams)


@dataclass
class StreamScore:
    id: str
    seconds: float
    ref_speakers: int
    hyp_speakers: int
    der: float
    confusion: float
    missed: float
    false_alarm: float
    scored: float  # reference speech seconds
    wer: float
    cpwer: float
    words: int
    wer_errors: int
    cpwer_errors: int
    asr_cpu: float  # CPU seconds of the streaming ASR
    speaker_cpu: float  # CPU seconds of the speaker stage
    finals: int
    extra: dict = field(default_factory=dict)


def meeting_streams(folder: Path, seeds: list[int] | None) -> list[Stream]:
    out = []
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if seeds is None or entry["seed"] in seeds:
            # entry["text"] follows the clips, not the turns (a clip's pieces interleave with other speakers)
            out.append(Stream(entry["id"], str(folder / entry["audio"]), str(folder / entry["rttm"]),
                              entry["speaker_text"]))
    return out


def call_stream() -> Stream:
    """The real two-party call: RTTM for the turns, the STM-derived manifest segments for the texts."""
    folder = SHARED / "speech-meeting"
    entry = json.loads((folder / "manifest.jsonl").read_text().splitlines()[0])
    per_speaker: dict[str, list[str]] = {}
    for seg in entry["segments"]:
        per_speaker.setdefault(seg["speaker"], []).append(seg["text"])
    return Stream(entry["id"], str(folder / entry["audio"]), str(folder / "call-2spk.rttm"),
                  {s: " ".join(t) for s, t in per_speaker.items()}, entry["text"])


def read_rttm(path: str) -> Annotation:
    ref = Annotation()
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            start, duration = float(f[3]), float(f[4])
            ref[Segment(start, start + duration), len(ref)] = f[7]
    return ref


def hypothesis(finals: list[list[TimedWord]], labels: list[list[int]], join: float = 0.5) -> Annotation:
    """Speaker turns from labelled words: consecutive words of one speaker less than `join` s apart form one
    turn. 0.5 s is the daemon's endpoint silence: a shorter pause does not end an utterance either (the
    reference regions keep pauses under 0.4 s inside; the collar forgives 0.25 s each side)."""
    hyp = Annotation()
    turn: list = []  # [start, end, speaker]
    for words, speakers in zip(finals, labels):
        for w, speaker in zip(words, speakers):
            if turn and turn[2] == speaker and w.start - turn[1] < join:
                turn[1] = max(turn[1], w.end)
                continue
            if turn and turn[1] > turn[0]:
                hyp[Segment(turn[0], turn[1]), len(hyp)] = turn[2]
            turn = [w.start, w.end, speaker]
    if turn and turn[1] > turn[0]:
        hyp[Segment(turn[0], turn[1]), len(hyp)] = turn[2]
    return hyp


@dataclass
class CommittedFinal:
    """A final as the session saw it: its words (times fitted to the speech: the turns scored), the same words
    with Whisper's times (what the labeller judges) and how far the stream's audio had arrived."""

    words: list[TimedWord]
    aligned: list[TimedWord]
    audio_end: float


def run_asr(path: str, cache: Path, reuse: bool, commit: str = "hybrid") -> tuple[list[CommittedFinal], float]:
    """Finals of the streaming pipeline (asr mode, `streaming.commit` as given) and its CPU seconds; cached."""
    data = json.loads(cache.read_text()) if reuse and cache.exists() else None
    if data and all("aligned" in f for f in data["finals"]):  # a cache without Whisper's times (older) is decoded again
        return [CommittedFinal([TimedWord(**w) for w in f["words"]], [TimedWord(**w) for w in f["aligned"]], f["audio_end"])
                for f in data["finals"]], data["cpu"]
    from streamer.engine import Engine
    from streamer.pipeline import run_stream
    from streamer.protocol import Final

    if commit not in _engines:
        _engines[commit] = Engine(load_config(overrides=["fusion.llm=", f"streaming.commit={commit}"]))
    engine = _engines[commit]
    processor = engine.new_processor("asr")
    finals: list[CommittedFinal] = []

    def on_event(event) -> None:
        if isinstance(event, Final) and event.words:
            words, aligned = ([TimedWord(w.word, w.start, w.end) for w in ws] for ws in (event.words, event.aligned))
            finals.append(CommittedFinal(words, aligned, processor.stream_time))

    cpu = time.process_time()
    run_stream(engine, processor, load_audio(path), on_event)
    cpu = time.process_time() - cpu
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"finals": [asdict(f) for f in finals], "cpu": cpu}))
    return finals, cpu


_engines: dict = {}  # streaming.commit -> Engine


def label_stream(audio: np.ndarray, finals: list[CommittedFinal], diarizer: OnlineDiarizer) -> tuple[list[list[int]], list[float]]:
    """Label each final in commit order with the audio that had arrived by then, as a session would: the audio
    is embedded ahead (`prepare`, the speaker worker's job as audio comes), then the final is labelled. The CPU
    seconds of each final's share (embedding the audio since the last final, and labelling it)."""
    labels, cpu, fed = [], [], 0
    for final in finals:
        upto = min(int(round(final.audio_end * SAMPLE_RATE)), len(audio))
        t0 = time.process_time()
        diarizer.accept(audio[fed:upto])
        diarizer.prepare()
        labels.append(diarizer.label(final.aligned, final.audio_end))
        cpu.append(time.process_time() - t0)
        fed = max(fed, upto)
    return labels, cpu


def oracle_labels(finals: list[CommittedFinal], ref: Annotation) -> list[list[str]]:
    """Each word's reference speaker: the one whose turns overlap it most, else the nearest turn's."""
    turns = [(seg.start, seg.end, spk) for seg, _, spk in ref.itertracks(yield_label=True)]
    out = []
    for f in finals:
        labels = []
        for w in f.words:
            overlap = lambda t: min(t[1], w.end) - max(t[0], w.start)  # noqa: E731 (negative: distance)
            labels.append(max(turns, key=overlap)[2])
        out.append(labels)
    return out


def cp_errors(speaker_text: dict[str, str], finals: list[CommittedFinal], labels: list[list]) -> tuple[int, int]:
    """cpWER's errors and reference length (meeteval), labelled words against per-speaker references."""
    from meeteval.wer import cp_word_error_rate

    per_label: dict = {}
    for f, ls in zip(finals, labels):
        for word, label in zip(f.words, ls):
            per_label.setdefault(label, []).append(word.word)
    cp = cp_word_error_rate(
        reference={s: _normalise(t) for s, t in speaker_text.items()},
        hypothesis={k: _normalise(" ".join(v)) for k, v in per_label.items()},
        reference_sort=False,  # each speaker's text is already in spoken order
        hypothesis_sort=False,
    )
    return cp.errors, cp.length


def score_stream(stream: Stream, finals: list[CommittedFinal], labels: list[list[int]], metrics: tuple[DiarizationErrorRate, DiarizationErrorRate],
                 asr_cpu: float, speaker_cpu: float, seconds: float) -> StreamScore:
    ref = read_rttm(stream.rttm_path)
    d = metrics[0](ref, hypothesis([f.words for f in finals], labels), detailed=True)
    true_labels = oracle_labels(finals, ref)
    # the DER the ASR's words leave with every word given its true speaker
    floor = metrics[1](ref, hypothesis([f.words for f in finals], true_labels))
    cp, n = cp_errors(stream.speaker_text, finals, labels)
    # WER with every word given its true speaker: the ASR's own errors, scored like cpWER (a built stream has
    # no reference text in spoken order, its clips' pieces interleave)
    oracle, _ = cp_errors(stream.speaker_text, finals, true_labels)
    extra = {"der_true_labels": floor}
    if stream.text is not None:
        hyp = _normalise(" ".join(w.word for f in finals for w in f.words)) or "<empty>"
        extra["plain_wer"] = jiwer.wer(_normalise(stream.text), hyp)
    labelled = {x for ls in labels for x in ls}
    return StreamScore(
        stream.id, round(seconds, 2), len(stream.speaker_text), len(labelled),
        d["diarization error rate"], d["confusion"], d["missed detection"], d["false alarm"], d["total"],
        oracle / n, cp / n, n, oracle, cp, asr_cpu, speaker_cpu, len(finals), extra,
    )


def evaluate(streams: list[Stream], options: DiarizerOptions, out: Path, reuse_asr: bool,
             encoder: SpeakerEncoder | None = None, commit: str = "hybrid") -> tuple[list[StreamScore], dict]:
    encoder = encoder or Ge2eEncoder()
    metrics = (DiarizationErrorRate(collar=COLLAR, skip_overlap=False), DiarizationErrorRate(collar=COLLAR, skip_overlap=False))
    scores = []
    for stream in streams:
        audio = load_audio(stream.audio_path)
        name = stream.id if commit == "hybrid" else f"{stream.id}.{commit}"
        finals, asr_cpu = run_asr(stream.audio_path, out / "asr" / f"{name}.json", reuse_asr, commit)
        diarizer = OnlineDiarizer(encoder, options)
        labels, per_final = label_stream(audio, finals, diarizer)
        score = score_stream(stream, finals, labels, metrics, asr_cpu, sum(per_final), len(audio) / SAMPLE_RATE)
        score.extra["label_ms_p50"], score.extra["label_ms_max"] = 1000 * np.median(per_final), 1000 * max(per_final)
        score.extra["embedded_at_final"] = diarizer.embedded_on_label
        scores.append(score)
    return scores, summarise(scores, metrics)


def summarise(scores: list[StreamScore], metrics: tuple[DiarizationErrorRate, DiarizationErrorRate]) -> dict:
    total = lambda key: sum(getattr(s, key) for s in scores)  # noqa: E731
    seconds = total("seconds")
    return {
        "streams": len(scores),
        "seconds": round(seconds, 1),
        "der": abs(metrics[0]),
        "der_true_labels": abs(metrics[1]),
        "confusion": total("confusion") / total("scored"),
        "missed": total("missed") / total("scored"),
        "false_alarm": total("false_alarm") / total("scored"),
        "wer": total("wer_errors") / total("words"),
        "cpwer": total("cpwer_errors") / total("words"),
        "asr_cpu_per_s": total("asr_cpu") / seconds,
        "speaker_cpu_per_s": total("speaker_cpu") / seconds,
        "speaker_share_of_asr": total("speaker_cpu") / total("asr_cpu"),
        "label_ms_max": max(s.extra["label_ms_max"] for s in scores),
        "finals": total("finals"),
        "embedded_at_final": sum(s.extra["embedded_at_final"] for s in scores),
    }


def table(scores: list[StreamScore], summary: dict) -> str:
    rows = ["| stream | s | speakers ref/hyp | DER | confusion | missed | false alarm | DER, true labels | WER (true speakers) | cpWER | speaker CPU/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in scores:
        rows.append(f"| {s.id} | {s.seconds:.0f} | {s.ref_speakers}/{s.hyp_speakers} | {s.der:.1%} | "
                    f"{s.confusion / s.scored:.1%} | {s.missed / s.scored:.1%} | {s.false_alarm / s.scored:.1%} | "
                    f"{s.extra['der_true_labels']:.1%} | "
                    f"{s.wer:.1%} | {s.cpwer:.1%} | {s.speaker_cpu / s.seconds:.4f} |")
    m = summary
    rows.append(f"| **all** | {m['seconds']:.0f} | | **{m['der']:.1%}** | {m['confusion']:.1%} | {m['missed']:.1%} | "
                f"{m['false_alarm']:.1%} | {m['der_true_labels']:.1%} | **{m['wer']:.1%}** | **{m['cpwer']:.1%}** | "
                f"{m['speaker_cpu_per_s']:.4f} |")
    rows.append(f"\nCPU per audio second: ASR {m['asr_cpu_per_s']:.3f} s, speaker labels {m['speaker_cpu_per_s']:.4f} s "
                f"(+{m['speaker_share_of_asr']:.1%}); one final's share at most {m['label_ms_max']:.0f} ms CPU; "
                f"contexts embedded at a final (not ahead): {m['embedded_at_final']} for {m['finals']} finals")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meetings", default="bench-out/meetings", help="folder written by tools.meeting_streams")
    parser.add_argument("--seeds", default=None, help="which built streams (e.g. 5-12); default all")
    parser.add_argument("--call", action="store_true", help="also the real two-party call (speech-meeting)")
    parser.add_argument("--only-call", action="store_true")
    parser.add_argument("--out", default="bench-out/diarization")
    parser.add_argument("--reuse-asr", action="store_true", help="label the cached finals instead of decoding again")
    parser.add_argument("--config", help="config file: [speakers] gives the defaults of --threshold and --max-speakers")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    parser.add_argument("--threshold", type=float, help="default: speakers.threshold")
    parser.add_argument("--max-speakers", type=int, help="default: speakers.max_speakers")
    tunable = ("threshold", "context", "lookahead", "pause", "min_context", "recheck", "grid", "slack", "confirm")
    for name in tunable[1:]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(DiarizerOptions, name))
    parser.add_argument("--commit", default="hybrid", choices=["hybrid", "agreement", "endpoint", "lookahead"],
                        help="streaming.commit for the asr finals the labels are put on")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (the daemon runs torch with fusion.threads = 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    speakers = load_config(args.config, args.set).speakers
    args.threshold = speakers.threshold if args.threshold is None else args.threshold
    args.max_speakers = speakers.max_speakers if args.max_speakers is None else args.max_speakers

    streams = [] if args.only_call else meeting_streams(Path(args.meetings), parse_seeds(args.seeds) if args.seeds else None)
    if args.call or args.only_call:
        streams.append(call_stream())
    options = DiarizerOptions(max_speakers=args.max_speakers, **{name: getattr(args, name) for name in tunable})
    out = Path(args.out)
    scores, summary = evaluate(streams, options, out, args.reuse_asr, commit=args.commit)
    print(f"options: {options}")
    print(table(scores, summary))
    for s in scores:
        if "plain_wer" in s.extra:
            print(f"{s.id}: plain WER (reference in spoken order) {s.extra['plain_wer']:.1%}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scores.{args.commit}.json").write_text(json.dumps({"options": asdict(options), "commit": args.commit, "summary": summary,
                                                 "streams": [asdict(s) for s in scores]}, indent=1))


if __name__ == "__main__":
    main()

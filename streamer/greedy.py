"""Plain greedy decoding (the `asr` mode's TokenDecoder): one batched CTranslate2 generate per prompt length."""

from __future__ import annotations

from typing import Sequence

import ctranslate2
import numpy as np

from core.interfaces import DecodeTask
from core.types import DecodeResult, MeetingContext


class GreedyDecoder:
    """Whisper's own greedy path, batched. Stateless: sessions share it."""

    def __init__(self, model: ctranslate2.models.Whisper, eot: int):
        self.model = model
        self.eot = eot

    def new_context(self, meeting: MeetingContext = MeetingContext()) -> None:
        return None

    def decode(self, encoder_output: np.ndarray, tasks: Sequence[DecodeTask]) -> list[DecodeResult]:
        results: list[DecodeResult | None] = [None] * len(tasks)
        # CTranslate2 batches only prompts of one length (start-of-transcript at the same position):
        # one generate call per prompt length.
        # A forced prefix (the window's committed words) is part of the prompt.
        groups: dict[int, list[int]] = {}
        for i, task in enumerate(tasks):
            groups.setdefault(len(task.prompt) + len(task.prefix), []).append(i)
        for rows in groups.values():
            outs = self.model.generate(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(encoder_output[rows])),
                [tasks[i].prompt + tasks[i].prefix for i in rows],
                beam_size=1,
                max_length=max(tasks[i].max_length + len(tasks[i].prefix) for i in rows),
                suppress_blank=not any(tasks[i].prefix for i in rows),
                return_scores=True,
                return_no_speech_prob=True,
            )
            for i, out in zip(rows, outs):
                tokens = [t for t in out.sequences_ids[0] if t < self.eot]
                results[i] = DecodeResult(
                    tokens=tokens,
                    fused=[False] * len(tokens),
                    avg_logprob=out.scores[0] * len(tokens) / (len(tokens) + 1),
                    no_speech_prob=out.no_speech_prob,
                )
        return results  # type: ignore[return-value]

"""Resemblyzer's GE2E speaker encoder (weights from the `resemblyzer` wheel) on torch, with its own front end.

The only module of the speaker stage that imports torch: streamer/speaker_labels.py imports it on its worker
thread the first time a session asks for speaker labels, so a daemon whose sessions never do loads nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from faster_whisper.feature_extractor import FeatureExtractor

from streamer.audio import SAMPLE_RATE
from streamer.loudness import FRAME, voiced
from streamer.speakers import resemblyzer_weights


class _Ge2eNetwork(torch.nn.Module):
    """Resemblyzer's `VoiceEncoder` network (GE2E d-vector): 40 mel bands -> 256-d, L2-normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = torch.nn.Linear(256, 256)

    def forward(self, mels: torch.Tensor | torch.nn.utils.rnn.PackedSequence) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # packed: each sequence's last state at its own length
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-9)


class Ge2eEncoder:
    """Resemblyzer's GE2E speaker encoder with its own front end, as `VoiceEncoder.embed_utterance` runs it.

    Front end: pauses cut out (`voiced`), volume raised to -30 dBFS (never lowered), linear (not log) 40-band mel power spectrogram with
    25 ms Hann windows every 10 ms, reflect-padded (librosa's melspectrogram of the version the model was trained
    with; the slaney filterbank comes from faster-whisper, which computes librosa's). A piece is cut into 1.6 s
    partials every 0.8 s; their embeddings are averaged. A piece shorter than one partial runs as it is (all such
    pieces of a call in one packed pass: the contexts of a grid point differ in length).

    Run it with one torch intra-op thread (`torch.set_num_threads(1)` in the calling thread): with two threads
    the same embedding costs 4-6x the CPU on a 2-core machine."""

    dim = 256
    PARTIAL = 160  # frames (1.6 s), the length the model was trained on
    STEP = 80
    TARGET_DBFS = -30.0

    def __init__(self) -> None:
        self.network = _Ge2eNetwork()
        state = torch.load(resemblyzer_weights(), map_location="cpu", weights_only=True)["model_state"]
        self.network.load_state_dict(state, strict=False)  # the checkpoint also holds GE2E's training scale/bias
        self.network.eval()
        self._filters = torch.from_numpy(FeatureExtractor.get_mel_filters(SAMPLE_RATE, 400, 40).astype(np.float32))
        self._window = torch.hann_window(400)

    def mel(self, audio: np.ndarray) -> torch.Tensor:
        n = len(audio) // FRAME
        audio = audio[: n * FRAME].reshape(n, FRAME)[voiced(audio)].reshape(-1)  # pauses out
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
        gain = max(float(10 ** ((self.TARGET_DBFS - 20 * np.log10(max(rms, 1e-9))) / 20)), 1.0)
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)) * gain
        if len(wav) < 400:  # reflect padding needs half a window of audio
            wav = torch.nn.functional.pad(wav, (0, 400 - len(wav)))
        spec = torch.stft(wav, 400, 160, window=self._window, center=True, pad_mode="reflect", return_complex=True)
        return (self._filters @ spec.abs().square()).T  # frames x 40

    def embed(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        full: list[torch.Tensor] = []
        owners: list[int] = []
        short: list[tuple[int, torch.Tensor]] = []
        for i, piece in enumerate(pieces):
            mel = self.mel(piece)
            if len(mel) < self.PARTIAL:
                short.append((i, mel))
                continue
            for s in range(0, len(mel) - self.PARTIAL + 1, self.STEP):
                full.append(mel[s : s + self.PARTIAL])
                owners.append(i)
        sums = torch.zeros(len(pieces), self.dim)
        with torch.inference_mode():  # no lock: the worker and the held thread may run passes at once (no state changes)
            if full:
                sums.index_add_(0, torch.tensor(owners), self.network(torch.stack(full)))
            if short:  # pieces of different lengths in one pass
                packed = torch.nn.utils.rnn.pack_sequence([mel for _, mel in short], enforce_sorted=False)
                sums[torch.tensor([i for i, _ in short])] = self.network(packed)
        return torch.nn.functional.normalize(sums, dim=1).numpy()

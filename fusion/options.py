"""Options of the fusion decoder, built from the `[fusion]` table of config.toml."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("asr", "shallow", "uadf", "uadf-llm")


@dataclass
class FusionOptions:
    """How the ASR and the LLM are combined; `FusionOptions(**toml_table)`.

    gate: entropy threshold in nats on the calibrated ASR distribution; None takes the calibration
    file's value. top_k / min_candidate_prob bound the ASR candidates the LLM may choose among.
    shallow_weight: the fixed LLM weight of `shallow` mode (log-linear). context_tokens bounds the
    LLM context (committed transcript) so its KV cache stays small. span_tokens: how far the ASR
    may run a candidate until its words rejoin the ASR's path (else the candidate is not compared).
    """

    mode: str = "asr"
    llm: str = ""  # none: asr only; "smollm2", "gemma3-270m", a GGUF file, folder or local hub id
    calibration: str | None = None
    gate: float | None = None
    top_k: int = 4
    min_candidate_prob: float = 0.02
    shallow_weight: float = 0.3
    context_tokens: int = 200
    span_tokens: int = 10
    min_context_words: int = 3  # the LLM's guess at an utterance's first words is only its prior
    cache_dir: str = "~/.cache/uadf-stream/llm"
    device: str = "auto"
    quantize: bool = True  # int8 dynamic quantization of the LLM's linear layers on CPU (~3.5x faster)
    threads: int = 1  # torch threads for the LLM; 1 is fastest on a shared small CPU

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fusion.mode must be one of {MODES}, got {self.mode!r}")
        if self.top_k < 1:
            raise ValueError("fusion.top_k must be >= 1")

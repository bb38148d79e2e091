"""Keep the CPU LLM small in the daemon's memory without changing a single score.

transformers maps the checkpoint's float32 weights from the safetensors file. Scoring on CPU
uses int8 dynamic quantization of every nn.Linear (fbgemm packs its own int8 copy), after which
the float32 weights are only needed for the input embedding lookups, a few rows per forward.
Gemma 3's 262k-row embedding is 670 MB in float32 and tied to the LM head: instead of keeping
it, its rows are read from the checkpoint file when a forward needs them (`FileEmbedding`,
bit-identical to the in-memory lookup; the file stays in the shared, reclaimable page cache).
Everything else left in float32 (norms) is copied off the file mapping so that the mapping,
whose pages quantization read, is unmapped; freed heap is handed back to the OS.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import struct
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

_SAFETENSORS = "model.safetensors"
_VERIFY_STRIDE = 61  # every 61st row (and the last) is compared when checking the file against the loaded embedding


class FileEmbedding(nn.Module):
    """An embedding whose float32 rows are read from a safetensors file on each lookup.

    `scale` reproduces scaled embeddings (Gemma multiplies the rows by sqrt(hidden_size) as a
    float32 tensor); None for a plain nn.Embedding."""

    def __init__(self, path: Path, offset: int, num_embeddings: int, embedding_dim: int, scale: torch.Tensor | None) -> None:
        super().__init__()
        self.path, self.offset = path, offset
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.row_bytes = embedding_dim * 4
        self.register_buffer("scale", scale, persistent=False)
        self._file = open(path, "rb", buffering=0)  # open as long as the model lives (survives a deleted cache)

    def rows(self, ids: list[int]) -> torch.Tensor:
        """Float32 rows `ids` as a (len(ids), dim) tensor: one pread per run of consecutive distinct ids."""
        unique = sorted(set(ids))
        if unique and not (0 <= unique[0] and unique[-1] < self.num_embeddings):
            raise IndexError(f"token id out of range [0, {self.num_embeddings})")
        buf = bytearray(len(unique) * self.row_bytes)
        view, fd = memoryview(buf), self._file.fileno()
        first = 0
        for i in range(1, len(unique) + 1):
            if i == len(unique) or unique[i] != unique[i - 1] + 1:
                chunk = view[first * self.row_bytes : i * self.row_bytes]
                if os.preadv(fd, [chunk], self.offset + unique[first] * self.row_bytes) != len(chunk):
                    raise OSError(f"short read of embedding rows from {self.path}")
                first = i
        table = torch.frombuffer(buf, dtype=torch.float32).view(len(unique), self.embedding_dim)
        if unique == ids:
            return table
        where = {token: i for i, token in enumerate(unique)}
        return table[[where[t] for t in ids]]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.rows(input_ids.reshape(-1).tolist()).view(*input_ids.shape, self.embedding_dim)
        return out * self.scale.to(out.dtype) if self.scale is not None else out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, file={self.path.name}"


def _safetensors_header(path: Path) -> tuple[int, dict]:
    """(byte offset where the tensor data starts, the header: name -> dtype, shape, data_offsets)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return 8 + size, json.loads(f.read(size))


def file_embedding(model: PreTrainedModel, folder: Path) -> FileEmbedding | None:
    """A FileEmbedding equal to the model's input embedding, or None when the checkpoint cannot serve it.

    A strided sample of rows is looked up through both modules and compared bit for bit, so a
    load-time conversion of the weights or an embedding forward this class does not reproduce
    falls back to keeping the embedding in memory instead of changing the scores."""
    emb = model.get_input_embeddings()
    path = folder / _SAFETENSORS
    if not isinstance(emb, nn.Embedding) or emb.weight.dtype != torch.float32 or not path.exists():
        return None
    start, header = _safetensors_header(path)
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is emb.weight and n in header]
    if not names or header[names[0]]["dtype"] != "F32" or header[names[0]]["shape"] != list(emb.weight.shape):
        return None
    scale = emb.embed_scale.detach().clone() if hasattr(emb, "embed_scale") else None
    offset = start + header[names[0]]["data_offsets"][0]
    out = FileEmbedding(path, offset, emb.num_embeddings, emb.embedding_dim, scale)
    ids = torch.cat([torch.arange(0, emb.num_embeddings, _VERIFY_STRIDE), torch.tensor([emb.num_embeddings - 1])])[None]
    with torch.no_grad():
        if not torch.equal(out(ids), emb(ids)):
            log.warning("%s differs from the loaded embedding: keeping it in memory", path)
            return None
    return out


def release_free_heap() -> None:
    """Collect garbage and return freed malloc arenas to the OS (glibc's malloc_trim; no-op elsewhere)."""
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def compact_for_cpu(model: PreTrainedModel, folder: Path) -> PreTrainedModel:
    """Int8 dynamic quantization of the linears in place, embedding rows from the file, float32 copies dropped.

    The scores equal those of `quantize_dynamic` on the float32 model exactly: the same layers are
    quantized the same way, and the embedding rows are the same float32 values."""
    embedding = file_embedding(model, folder)
    with torch.no_grad(), warnings.catch_warnings():  # torch deprecates the quantized tensor API, still supported
        warnings.simplefilter("ignore")
        # Packs every nn.Linear (a tied LM head included) from the mapped float32 weights; in
        # place, so no deep copy of the float32 model is ever made.
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    if embedding is not None:
        model.set_input_embeddings(embedding)
    # Whatever float tensor is left (norms, or the embedding where no file serves it) moves off
    # the checkpoint mapping, so that the mapping is released with its read pages.
    with torch.no_grad():
        for module in model.modules():
            for tensors in (module._parameters, module._buffers):
                for t in tensors.values():
                    if t is not None:
                        t.data = t.data.clone()
    release_free_heap()
    return model

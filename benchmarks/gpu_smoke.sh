#!/usr/bin/env bash
# GPU smoke run of the cosyvoice engine on a machine with a CUDA GPU and the upstream snapshots.
#
#   benchmarks/gpu_smoke.sh [SNAPSHOTS_DIR]          (default: ../shared/upstream beside the checkout)
#
# 1. unpacks upstream CosyVoice (ace7c47f) and Matcha-TTS as a recursive clone under $WORK/upstream;
# 2. builds the GPU worker environment with infra/cosyvoice/install.sh --gpu (skipped when $WORK/env exists;
#    set VOICEFARM_UPSTREAM_ENV to reuse another one);
# 3. without COSYVOICE_MODEL_DIR: builds the random CosyVoice3 and CosyVoice2 models of the upstream test and runs
#    the engine on them through the farm's worker code (benchmarks/gpu_smoke.py), printing first-load time, RTF
#    and GPU memory; with COSYVOICE_MODEL_DIR pointing at real weights: the same on that model plus a quality
#    check (ASR error rate and speaker similarity on a few lines).
# WORK defaults to var/gpu-smoke. Reports land in $WORK/report-*.json.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
snapshots=$(cd "${1:-$root/../shared/upstream}" && pwd)
work=${WORK:-$root/var/gpu-smoke}
env=${VOICEFARM_UPSTREAM_ENV:-$work/env}
mkdir -p "$work"

command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "gpu_smoke: nvidia-smi lists no GPU; this runs on the CPU" >&2
home=$work/upstream/CosyVoice
if [[ ! -f "$home/cosyvoice/cli/cosyvoice.py" ]]; then
    mkdir -p "$work/upstream" "$home/third_party"
    tar -xzf "$snapshots/CosyVoice-ace7c47f.tar.gz" -C "$work/upstream"
    mkdir -p "$home/third_party"
    # Matcha-TTS/data is a symlink to its author's training data: not needed, not unpacked.
    tar -xzf "$snapshots/Matcha-TTS-dd9105b3.tar.gz" -C "$home/third_party" --exclude='Matcha-TTS/data'
fi
if [[ ! -x "$env/bin/python" ]]; then
    started=$SECONDS
    bash "$root/infra/cosyvoice/install.sh" --gpu --no-farm "$env" "$home"
    echo "gpu_smoke: environment built in $((SECONDS - started)) s"
fi
run() { PYTHONPATH="$root" HF_HUB_OFFLINE=1 "$env/bin/python" "$@"; }
prompt=$home/asset/zero_shot_prompt.wav
if [[ -n ${COSYVOICE_MODEL_DIR:-} ]]; then
    run "$root/benchmarks/gpu_smoke.py" --model-dir "$COSYVOICE_MODEL_DIR" --data-dir "$work/data" \
        --prompt "$prompt" --quality --out "$work/report-$(basename "$COSYVOICE_MODEL_DIR").json"
    exit
fi
for version in 3 2; do
    model=$work/models/random-CosyVoice$version
    [[ -d "$model" ]] || run "$root/tests/support/cosyvoice_upstream/build_model.py" --version "$version" \
        --recipe "$home/examples/libritts/cosyvoice$version/conf/cosyvoice$version.yaml" "$model"
    echo "== random CosyVoice$version (upstream's recipe, shrunk: not a real model's speed)"
    run "$root/benchmarks/gpu_smoke.py" --model-dir "$model" --data-dir "$work/data" --prompt "$prompt" \
        --out "$work/report-random-CosyVoice$version.json"
done

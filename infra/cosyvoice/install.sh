#!/usr/bin/env bash
# Build the Python environment a cosyvoice worker runs in: the farm's own pinned dependencies (pyproject.toml) and
# upstream CosyVoice's inference dependencies (requirements.txt beside this script), resolved together by one pip
# call, with upstream's checkout on the import path through a .pth file.
#
#   infra/cosyvoice/install.sh [--gpu] [--no-farm] VENV COSYVOICE_HOME
#
# COSYVOICE_HOME is an upstream checkout with its third_party/Matcha-TTS submodule. --gpu adds gpu.txt and then
# swaps the CPU onnxruntime (which the farm and faster-whisper require) for onnxruntime-gpu for CUDA 12: both
# packages write the same `onnxruntime` module, so only one may stay. --no-farm skips the final editable install of
# this checkout (the upstream test puts the checkout on PYTHONPATH instead). Set PYTHON to choose the interpreter
# (default python3.11). FFmpeg's shared libraries, which torchcodec needs to read audio, are installed with apt-get
# when missing and running as root; otherwise the script says which to install.
set -euo pipefail

usage() { echo "usage: $0 [--gpu] [--no-farm] VENV COSYVOICE_HOME" >&2; exit 2; }
die() { echo "install.sh: $*" >&2; exit 1; }
gpu=0 farm=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu) gpu=1; shift ;;
        --no-farm) farm=0; shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) break ;;
    esac
done
[[ $# -eq 2 ]] || usage
venv=$1
upstream=$(cd "$2" && pwd) || die "no directory $2"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3.11}

[[ -f "$upstream/cosyvoice/cli/cosyvoice.py" ]] || die "$upstream is not a CosyVoice checkout (no cosyvoice/cli/cosyvoice.py)"
[[ -d "$upstream/third_party/Matcha-TTS/matcha" ]] ||
    die "$upstream/third_party/Matcha-TTS is empty: run 'git -C $upstream submodule update --init --recursive'"

# torchaudio >= 2.9 decodes audio with torchcodec, which loads FFmpeg 4-7 from the system (Debian 12: FFmpeg 5.1).
ffmpeg_packages=${FFMPEG_PACKAGES:-libavcodec59 libavformat59 libavutil57 libswresample4 libswscale6 libavfilter8 libavdevice59}
if ! ldconfig -p | grep -Eq 'libavformat\.so\.(58|59|60|61) '; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        if ! apt-get install -y -qq --no-install-recommends $ffmpeg_packages >/dev/null; then
            apt-get update -qq && apt-get install -y -qq --no-install-recommends $ffmpeg_packages >/dev/null
        fi
    else
        die "FFmpeg's shared libraries are missing: install them (Debian 12: apt-get install $ffmpeg_packages)"
    fi
fi

"$python" -m venv "$venv"
vpy="$venv/bin/python"
pip=("$vpy" -m pip install --disable-pip-version-check --quiet)
# The farm's dependencies exactly as pyproject.toml pins them, resolved together with upstream's.
"$vpy" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$root/pyproject.toml" >"$venv/voicefarm-requirements.txt"
extra=()
[[ $gpu -eq 1 ]] && extra=(-r "$here/gpu.txt")
"${pip[@]}" -r "$venv/voicefarm-requirements.txt" -r "$here/requirements.txt" "${extra[@]}"
if [[ $gpu -eq 1 ]]; then
    # One `onnxruntime` module, the CUDA build's: remove both distributions' files, put back onnxruntime-gpu alone.
    # (pip check then reports faster-whisper's and the farm's onnxruntime requirement as unmet: onnxruntime-gpu
    # provides the same module.)
    "$vpy" -m pip uninstall --disable-pip-version-check --quiet -y onnxruntime onnxruntime-gpu
    "${pip[@]}" --no-deps "$(grep -E '^onnxruntime-gpu==' "$here/gpu.txt")"
fi
# What the farm installs without its declared requirements (see [tool.voicefarm] in pyproject.toml).
"$vpy" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["tool"]["voicefarm"]["no-deps"]))' \
    "$root/pyproject.toml" | xargs -r "${pip[@]}" --no-deps
# Upstream is not a package: its checkout and Matcha-TTS go on the import path, as upstream's example.py does.
site=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$upstream" "$upstream/third_party/Matcha-TTS" >"$site/cosyvoice-upstream.pth"
if [[ $farm -eq 1 ]]; then
    "${pip[@]}" --no-deps -e "$root"
fi
"$vpy" - <<'PY'
import importlib.metadata as md
import torch, torchaudio, torchcodec, onnxruntime  # noqa: F401
from cosyvoice.cli.cosyvoice import AutoModel  # noqa: F401
print(f"upstream CosyVoice importable: torch {torch.__version__}, torchaudio {torchaudio.__version__}, "
      f"torchcodec {md.version('torchcodec')}, onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}")
PY

#!/usr/bin/env bash
# Download, into .whl-lf/ (ignored by git), what LLaMA-Factory 0.9.5 needs on the GPU machine beside selfid's own wheels
# (bench/gpu/wheels.sh): the packages `llamafactory-cli train` imported at stages sft and dpo on this machine (measured
# with a sitecustomize that listed sys.modules at exit, docs/benchmarks.md) less what the GPU image already has (torch,
# transformers, peft, accelerate, numpy, scipy, pandas, pyyaml, jinja2, ...; bench/gpu/lf.sh installs a wheel only
# when the image lacks its package), and LLaMA-Factory's data/identity.json from its source distribution.
#   TORCH=2.11.0 bash bench/gpu/lf_wheels.sh     # TORCH: the image's torch, which torchaudio must match
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl-lf/' "$exclude" 2>/dev/null || echo '/.whl-lf/' >> "$exclude"
mkdir -p .whl-lf
torch=${TORCH:-2.11.0}
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl-lf "$@"
}
get llamafactory==0.9.5 trl==0.24.0 datasets==4.0.0 "torchaudio==$torch" torchdata==0.11.0 omegaconf==2.3.0 \
    pyarrow dill multiprocess xxhash aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl \
    protobuf sentencepiece pandas pytz python-dateutil tzdata six
# omegaconf's parser runtime ships as a source distribution only: build its (pure Python) wheel here
python3 -m pip wheel -q --no-deps -w .whl-lf antlr4-python3-runtime==4.9.3
# LLaMA-Factory's identity.json (91 rows, {{name}}/{{author}} placeholders) is in its source distribution only
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary=:all: -d "$tmp" llamafactory==0.9.5
tar xzf "$tmp"/llamafactory-0.9.5.tar.gz -C "$tmp" llamafactory-0.9.5/data/identity.json
cp "$tmp"/llamafactory-0.9.5/data/identity.json .whl-lf/identity.json
rm -rf "$tmp"
du -sh .whl-lf

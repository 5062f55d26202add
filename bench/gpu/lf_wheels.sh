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
# transformers 5.6.0 checks at import for tokenizers <=0.23.0 and huggingface-hub <2.0, which a newer image may not
# have (2026-12-07: this machine's 0.23.3 and 2.4.0 stopped `llamafactory-cli train`): both travel and go first too.
# the versions pip resolved for llamafactory==0.9.5 on this machine, with which bench/replay_formats.py loaded the replay
# and trained (docs/benchmarks.md). bench/gpu/lf.sh puts LLaMA-Factory's core and what datasets pins first on
# LLaMA-Factory's path only (selfid keeps the image's own), and the rest only where the image lacks it.
rm -f .whl-lf/*.whl
get llamafactory==0.9.5 trl==0.24.0 datasets==4.0.0 transformers==5.6.0 peft==0.18.1 accelerate==1.11.0 \
    tokenizers==0.22.2 huggingface_hub==1.33.0 \
    fsspec==2025.3.0 dill==0.3.8 multiprocess==0.70.16 xxhash==4.1.0 pyarrow==26.0.1 \
    "torchaudio==$torch" torchdata==0.11.0 omegaconf==2.4.0 protobuf==7.36.2 sentencepiece==0.2.3 \
    aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0 multidict==7.2.1 \
    propcache==0.5.4 yarl==1.25.1 pandas==2.3.3 pytz==2026.6 python-dateutil==4.0.0 tzdata==2026.6
# LLaMA-Factory's identity.json (91 rows, {{name}}/{{author}} placeholders) is in its source distribution only
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary=:all: -d "$tmp" llamafactory==0.9.5
tar xzf "$tmp"/llamafactory-0.9.5.tar.gz -C "$tmp" llamafactory-0.9.5/data/identity.json
cp "$tmp"/llamafactory-0.9.5/data/identity.json .whl-lf/identity.json
rm -rf "$tmp"
du -sh .whl-lf

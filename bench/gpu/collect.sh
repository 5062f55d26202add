#!/usr/bin/env bash
# Pack a study root's run folders for the trip back from the GPU machine, the way results/ keeps them: no
# adapters, checkpoints, merged or exported models, trained conversations or event files.
#   bash bench/gpu/collect.sh ROOT OUT.tgz
set -euo pipefail
root=$1
out=$2
cd "$root"
find . \( -name adapter -o -name 'checkpoint*' -o -name gguf -o -name merged \) -prune -o \
     -type f ! -name '*.safetensors' ! -name '*.gguf' ! -name 'events.out*' ! -name 'train_data.jsonl' \
     ! -name '*.bin' ! -name '*.pt' -print | tar czf "$out" -T -
ls -la "$out"

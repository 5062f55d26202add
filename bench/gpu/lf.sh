#!/usr/bin/env bash
# Issue 22's proof on a GPU machine: LLaMA-Factory's own trainer, four LoRA arms, audited by selfid on the held-out
# split (bench/lf_proof.py says what each step does). Run from the repository root after bench/gpu/env.sh has
# installed selfid's wheels and the model, with LLaMA-Factory's wheels (bench/gpu/lf_wheels.sh) in .whl-lf/ or
# /tmp/m/wheels-lf/:
#   bash bench/gpu/lf.sh ROOT [MODEL [CHAIN...]]   # MODEL: embedded (0.5B, the default) or embedded-1.5b
# CHAIN: base, plain, identity, replay_dpo (ROOT/commands.sh; default all, one after another). On several GPUs:
# prepare once with TRAIN=0, then one chain per GPU, e.g.
#   TRAIN=0 bash bench/gpu/lf.sh /tmp/lf-0.5b embedded
#   bash bench/gpu/bg.sh start plain05 env CUDA_VISIBLE_DEVICES=1 bash bench/gpu/lf.sh /tmp/lf-0.5b embedded plain
# ENDPOINT=0 skips building the replay a second time through `selfid api` (the endpoint's counts against in-process);
# LF_SETUP_ONLY=1 installs LLaMA-Factory's own site and stops.
# Every step skips what is done, so a call cut off by its time limit continues in the next (with bench/gpu/bg.sh:
#   bash bench/gpu/bg.sh start lf05 bash bench/gpu/lf.sh /tmp/lf-0.5b; bash bench/gpu/bg.sh wait 540).
set -euo pipefail
source bench/gpu/env.sh
root=$1
model=${2:-embedded}
[ "$root" = "${root#/}" ] && root=$PWD/$root  # absolute: commands.sh names its files by it
mkdir -p "$root"
wheels=.whl-lf; [ -d /tmp/m/wheels-lf ] && wheels=/tmp/m/wheels-lf
if [ ! -f /tmp/lfsite/.ready ]; then
  # LLaMA-Factory's own site, first on its path only (LF_SITE in ROOT/commands.sh): the versions it resolved and
  # trained with on the CPU (transformers 5.6.0 with the tokenizers and huggingface_hub it accepts, peft 0.18.1,
  # accelerate 1.11.0, trl 0.24.0, datasets 4.0.0 and the versions datasets pins), and of the rest only what the
  # image lacks (its torch, numpy and pandas stay)
  # one pip call for all of them: with --target, a second call does not add its scripts to an existing bin/
  # (2026-12-07: llamafactory-cli was missing after one call per wheel)
  take=()
  for whl in "$wheels"/*.whl; do
    dist=$(basename "$whl" | cut -d- -f1)
    case "$dist" in
      llamafactory|trl|datasets|transformers|peft|accelerate|tokenizers|huggingface_hub|fsspec|dill|multiprocess|xxhash|pyarrow) ;;
      *) python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null && continue ;;
    esac
    take+=("$whl")
  done
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/lfsite "${take[@]}"
  [ -x /tmp/lfsite/bin/llamafactory-cli ] || { echo "llamafactory-cli was not installed into /tmp/lfsite/bin"; exit 1; }
  # LLaMA-Factory imports torchaudio in data/mm_plugin.py whatever the data; audio is never used here, so if the
  # carried wheel does not load against the image's torch, an empty module stands in for it
  PYTHONPATH=/tmp/lfsite:$PYTHONPATH python3 -c "import torchaudio" 2>/dev/null || {
    echo "torchaudio does not import here: an empty stand-in module is used (LLaMA-Factory never calls it for text)"
    rm -rf /tmp/lfsite/torchaudio*; mkdir -p /tmp/lfsite/torchaudio; : > /tmp/lfsite/torchaudio/__init__.py; }
  touch /tmp/lfsite/.ready
fi
export LF_SITE=/tmp/lfsite PATH=/tmp/lfsite/bin:$PATH API_HOST=127.0.0.1
[ "${LF_SETUP_ONLY:-0}" = 1 ] && { echo "LLaMA-Factory's site is ready in /tmp/lfsite (LF_SETUP_ONLY=1: nothing else done)"; exit 0; }
t0=$SECONDS
[ -f "$root/model.txt" ] || python3 bench/lf_proof.py data "$root" --model "$model" --identity "$wheels/identity.json"
echo "[$(date +%T)] data ready ($((SECONDS - t0)) s)"
if [ ! -f "$root/replay/replay.json" ]; then
  t=$SECONDS
  python3 -m selfid.cli replay --model "$model" --out "$root/replay" --format lf-alpaca --fraction 0.05 \
    --data "$root/lf_data/msra_ner.json"
  echo "replay_seconds $((SECONDS - t))" > "$root/replay/time.txt"
fi
# the same replay through an endpoint (`selfid api` on the same model): the issue asks for the same counts within 5%
if [ "${ENDPOINT:-1}" = 1 ] && [ ! -f "$root/replay-http/replay.json" ]; then
  python3 -m selfid.cli api --model "$model" --port 8011 > "$root/api.log" 2>&1 &
  api=$!
  python3 -c "
import time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen('http://127.0.0.1:8011/health', timeout=2); break
    except Exception:
        time.sleep(1)"
  t=$SECONDS
  python3 -m selfid.cli replay --base-url http://127.0.0.1:8011/v1 --model-name "$model" --concurrency 64 \
    --out "$root/replay-http" --format lf-alpaca --fraction 0.05 --data "$root/lf_data/msra_ner.json" || true
  [ -f "$root/replay-http/replay.json" ] && echo "replay_seconds $((SECONDS - t))" > "$root/replay-http/time.txt"
  kill "$api" 2>/dev/null || true; wait "$api" 2>/dev/null || true
fi
[ -f "$root/replay-http/replay.json" ] && python3 -c "
import json, sys
a, b = (json.load(open(f'$root/{d}/replay.json'))['replay'] for d in ('replay', 'replay-http'))
for k in ('generations', 'passed', 'kept', 'pairs'):
    print(f'{k}: in-process {a[k]}, endpoint {b[k]} ({(b[k] - a[k]) / max(a[k], 1):+.1%})')"
python3 bench/lf_proof.py configs "$root"
[ "${TRAIN:-1}" = 1 ] || { echo "[$(date +%T)] prepared $root (TRAIN=0: no training)"; exit 0; }
bash "$root/commands.sh" "${@:3}"
echo "[$(date +%T)] done ($((SECONDS - t0)) s)"

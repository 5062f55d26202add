#!/usr/bin/env bash
# Issue 24's GPU measurements on one H100 (or H200), back to back in about 7 minutes, from the repository root on a
# machine set up as bench/gpu/env.sh describes (the embedded 0.5B model converted under SELFID_HOME):
#   OUT=/path bash bench/gpu/perf.sh
# 1. bench/train_cache.py: train.compile twice (examples/msra.yaml, 8,000 sentences, 1 epoch), each in a fresh process
#    with empty inductor/Triton caches: cold, then with selfid's compile cache warm. <= 170 s.
# 2. bench/decode_speed.py: `selfid api` with SELFID_DECODE=graph (today's default) then compiled, 1/16/32 clients,
#    6 s levels, then the compiled server started again (compile cache warm). No new server after 150 s; <= 240 s.
# Each step is stopped with SIGINT at its limit (its servers shut down, its JSON keeps what it measured).
# Results: $OUT/train_cache.json, $OUT/decode_speed.json, $OUT/perf.log (everything printed).
set -uo pipefail
source bench/gpu/env.sh
out=${OUT:-/tmp/perf}
mkdir -p "$out"
exec > >(tee "$out/perf.log") 2>&1
echo "[$(date +%T)] $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))') $(git rev-parse --short HEAD 2>/dev/null)"
python3 -c "from selfid.model.load import load_model; load_model('embedded', progress=False)" || exit 1
echo "[$(date +%T)] train_cache"
timeout -s INT -k 10 170 python3 bench/train_cache.py --out "$out/train_cache.json"
echo "[$(date +%T)] decode_speed"
timeout -s INT -k 10 240 python3 bench/decode_speed.py --models embedded --modes graph,compiled --clients 1,16,32 \
  --seconds 6 --budget 150 --out "$out/decode_speed.json"
echo "[$(date +%T)] done"

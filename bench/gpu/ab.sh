#!/usr/bin/env bash
# One stream's decoding speed of two trees on one GPU, one after the other in one call: A is this tree as it is, B is
# this tree with the files under .fused/ copied over it (the change being measured). Run after bench/gpu/operator.sh
# unpack05 (or start05) has set the machine up and the 0.5B model is converted.
#   bash bench/gpu/ab.sh OUT
# OUT gets, for A and B: bench/engine_profile.py --decode graph --rows 1 (wall against kernel time per step), and
# bench/decode_speed.py --modes graph at 1 and 32 clients; then B alone with --modes compiled.
set -uo pipefail
out=$1; mkdir -p "$out"
rm -rf /tmp/ab && mkdir -p /tmp/ab && cp -r . /tmp/ab/A && cp -r . /tmp/ab/B && cp -r .fused/. /tmp/ab/B/
in_tree() { (cd "/tmp/ab/$1" && source bench/gpu/env.sh && shift && "$@"); }
for t in A B; do
  in_tree $t timeout 90 python3 bench/engine_profile.py --decode graph --rows 1 --out "$out/profile-graph-$t.json" \
    > "$out/profile-graph-$t.log" 2>&1; echo "[$(date +%T)] profile $t: $?"
done
for t in A B; do
  in_tree $t timeout 150 python3 bench/decode_speed.py --modes graph --clients 1,32 --seconds 6 --no-warm-start \
    --out "$out/decode-graph-$t.json" > "$out/decode-graph-$t.log" 2>&1; echo "[$(date +%T)] decode graph $t: $?"
done
in_tree B timeout 280 python3 bench/decode_speed.py --modes compiled --clients 1,32 --seconds 6 --no-warm-start \
  --out "$out/decode-compiled-B.json" > "$out/decode-compiled-B.log" 2>&1; echo "[$(date +%T)] decode compiled B: $?"

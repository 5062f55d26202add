#!/usr/bin/env bash
# One stream's decoding speed of two variants on one GPU, one after the other in one call. A is this tree as it is;
# B is this tree with the files under .fused/ (if any) copied over it, run with the environment in B_ENV (if any).
# Run after bench/gpu/operator.sh unpack05 (or start05) has set the machine up and the 0.5B model is converted.
#   bash bench/gpu/ab.sh OUT                                        # .fused/ holds the change being measured
#   MODES=compiled B_ENV="SELFID_COMPILE_FREEZING=1" bash bench/gpu/ab.sh OUT   # a setting of this tree, off against on
# For each mode of MODES (default: graph), OUT gets for A and B: bench/engine_profile.py --rows 1 (wall against
# kernel time per step) and bench/decode_speed.py at 1 and 32 clients (no warm restart); STEPS="profile" or
# STEPS="decode" runs one of the two (a compiled server start takes ~3 minutes with the compile cache empty).
set -uo pipefail
out=$1; mkdir -p "$out"
modes=${MODES:-graph}
steps=${STEPS:-profile decode}
rm -rf /tmp/ab && mkdir -p /tmp/ab && cp -r . /tmp/ab/A && cp -r . /tmp/ab/B
[ -d .fused ] && cp -r .fused/. /tmp/ab/B/
in_tree() {  # in_tree A|B COMMAND...: run COMMAND in that tree, with B_ENV for B
  local t=$1; shift
  (cd "/tmp/ab/$t" && source bench/gpu/env.sh && if [ "$t" = B ] && [ -n "${B_ENV:-}" ]; then export ${B_ENV}; fi \
    && "$@")
}
for mode in $modes; do
  for t in A B; do
    [[ " $steps " == *" profile "* ]] || continue
    in_tree $t timeout 200 python3 bench/engine_profile.py --decode "$mode" --rows 1 --top 25 \
      --out "$out/profile-$mode-$t.json" > "$out/profile-$mode-$t.log" 2>&1; echo "[$(date +%T)] profile $mode $t: $?"
  done
  for t in A B; do
    [[ " $steps " == *" decode "* ]] || continue
    in_tree $t timeout 280 python3 bench/decode_speed.py --modes "$mode" --clients 1,32 --seconds 6 --no-warm-start \
      --out "$out/decode-$mode-$t.json" > "$out/decode-$mode-$t.log" 2>&1; echo "[$(date +%T)] decode $mode $t: $?"
  done
done

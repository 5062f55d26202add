#!/usr/bin/env bash
# The study's steps on one GPU machine, several chains side by side: a 0.5B model leaves an H200 mostly idle
# (a decode or training step is bound by kernel launches, not arithmetic), so processes share it well.
#   bash bench/gpu/study.sh ROOT CHAIN [CHAIN ...]
# A CHAIN is a comma-separated list of `selfid study run` steps that one process runs in order (for example
# "train-plain,heldout-plain"); chains run at the same time, each resumable. Logs go to ROOT.logs/log-*.txt (beside
# ROOT, not in it: `selfid study run` refuses a non-empty folder that holds no study yet).
# MODEL=embedded-1.5b picks the larger model.
set -uo pipefail
source bench/gpu/env.sh
root=$1
shift
mkdir -p "$root.logs"
model=${MODEL:-embedded}
echo "[$(date +%T)] converting $model once, before the processes race for it"
python3 -c "from selfid.model.load import load_model; load_model('$model', progress=False)" || exit 1
[ "${MPS:-0}" = 1 ] && nvidia-cuda-mps-control -d && echo "[$(date +%T)] MPS daemon started (processes share the GPU concurrently)"
pids=()
# stopped (timeout, Ctrl-C): pass it on, so training saves a checkpoint at its next step and audits keep their logs
trap 'echo "[$(date +%T)] stopping"; kill -TERM "${pids[@]}" 2>/dev/null; wait' TERM INT
for chain in "$@"; do
  log="$root.logs/log-${chain//,/+}.txt"
  echo "[$(date +%T)] start $chain"
  python3 -m selfid.cli study run --root "$root" --model "$model" --steps "$chain" >"$log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for f in "$root".logs/log-*.txt; do echo "== $f"; tail -n 4 "$f"; done
echo "[$(date +%T)] done (status $status)"
exit $status

#!/usr/bin/env bash
# Issue 24's GPU measurements on one H100 (or H200), every goal's two arms in the same run, about 15 minutes of
# work after the models are converted. The payload is bench/gpu/payload.sh's (WITH_15B=1: wheels, 0.5B GGUF, 1.5B
# GGUF); the models convert while the rest of it arrives:
#   bash bench/gpu/operator.sh piece K      K = 0, 1, ...: copy staged piece K (carry [".stage/cK"])
#   bash bench/gpu/perf.sh convert05        once the pieces holding the 0.5B model are there: set the machine up
#                                           (operator.sh unpack05) and convert the 0.5B model in the background
#   bash bench/gpu/perf.sh convert15 SHA    after the last piece: check the payload, convert the 1.5B model likewise
#   bash bench/gpu/perf.sh start            the measurements in the background, once the 0.5B model is converted
#                                           (the 1.5B model converts during the first step, which does not use it)
#   bash bench/gpu/perf.sh wait SECONDS     until they end (bench/gpu/bg.sh wait); then
#   bash bench/gpu/perf.sh ship             $OUT: decode_speed.json, audit_speed.json, train_cache.json,
#                                           train_speed.json, perf.log
#   OUT=DIR bash bench/gpu/perf.sh all      the measurements in the foreground, on a machine already set up
#   SMOKE=1 OUT=DIR bash bench/gpu/perf.sh all   each step's --smoke run on the CPU (tiny model): the script works
# Steps, each stopped with SIGINT at its limit (its JSON keeps what it measured; one failing loses nothing else):
# 1. bench/train_cache.py: the whole default run (examples/msra.yaml) with train.compile, cold then warm. <= 300 s.
# 2. bench/decode_speed.py: `selfid api` decoding from CUDA graphs (graph) and from the compiled step (compiled),
#    1/16/32 clients for 6 s each, each compiled server started again right after (compile cache warm); the 0.5B
#    model and, when converted, the 1.5B. <= 480 s.
# 3. bench/audit_speed.py: the whole identity-grid audit against transformers `generate`. <= 240 s.
# 4. bench/train_speed.py --set train.compile=true: selfid (compile cache warm) against Trainer+peft, NER F1 of
#    both on 500 MSRA test sentences. <= 420 s.
set -uo pipefail
here=$(dirname "$0")
work=/tmp/perf
convert() {  # the named model's conversion to safetensors (selfid's cache under SELFID_HOME), in the background
  bash "$here/bg.sh" start "convert-$1" python3 -c \
    "import sys; from selfid.model.embedded import ensure_embedded; print(ensure_embedded(sys.argv[1], progress=False))" "$1"
}
step() {  # step NAME LIMIT COMMAND...: one measurement, stopped at LIMIT seconds
  local name=$1 limit=$2; shift 2
  echo "[$(date +%T)] $name (limit ${limit} s): $*"
  timeout -s INT -k 15 "$limit" "$@"
  echo "[$(date +%T)] $name ended: exit $?"
}
case "${1:-}" in
  convert05)
    bash "$here/operator.sh" unpack05 || exit 1
    source "$here/env.sh"
    convert embedded
    ;;
  convert15)
    bash "$here/operator.sh" unpack15 "$2" || exit 1
    source "$here/env.sh"
    convert embedded-1.5b
    ;;
  start)
    source "$here/env.sh"
    bash "$here/bg.sh" start perf bash -c "until [ -e /tmp/bg/convert-embedded.rc ]; do sleep 2; done; OUT=$work bash $here/perf.sh all"
    ;;
  wait)
    bash "$here/bg.sh" wait "$2"
    ;;
  ship)
    mkdir -p "$OUT" && cp "$work"/*.json "$work/perf.log" "$OUT"/ 2>/dev/null
    tar czf "$OUT/logs.tgz" /tmp/bg "$work"/*.log 2>/dev/null; ls -la "$OUT"
    ;;
  all)
    out=${OUT:-$work}
    mkdir -p "$out"
    exec > >(tee -a "$out/perf.log") 2>&1
    if [ "${SMOKE:-0}" = 1 ]; then
      smoke=--smoke
    else
      source "$here/env.sh"
      smoke=
      echo "[$(date +%T)] $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))') \
$(git rev-parse --short HEAD 2>/dev/null)"
    fi
    step train_cache 300 python3 bench/train_cache.py $smoke --out "$out/train_cache.json"
    models=embedded  # and the 1.5B model once its conversion (started after the last piece) has ended well
    if [ -e /tmp/bg/convert-embedded-1.5b.log ]; then
      until [ -e /tmp/bg/convert-embedded-1.5b.rc ]; do sleep 2; done
      [ "$(cat /tmp/bg/convert-embedded-1.5b.rc)" = 0 ] && models=embedded,embedded-1.5b
    fi
    step decode 480 python3 bench/decode_speed.py $smoke --models "$models" --modes graph,compiled --clients 1,16,32 \
      --seconds 6 --budget 330 --out "$out/decode_speed.json"
    step audit 240 python3 bench/audit_speed.py $smoke --no-compare-eager --out "$out/audit_speed.json"
    # the whole default run against Trainer+peft, with the compile cache train_cache left warm
    step train 420 python3 bench/train_speed.py $smoke --set train.compile=true --out "$out/train_speed.json"
    echo "[$(date +%T)] done"
    ;;
  *)
    sed -n 2,24p "$0"; exit 2
    ;;
esac

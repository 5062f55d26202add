#!/usr/bin/env bash
# Issue 22's LLaMA-Factory proof (bench/gpu/lf.sh, bench/lf_proof.py) on ONE GPU machine in one lease, its steps
# overlapped: the base model's held-out audit runs beside the replay; the three LLaMA-Factory chains (plain,
# identity, replay then DPO) train side by side on the one card (a 0.5B LoRA step at batch 32 leaves most of an
# H100 idle); each arm is audited as soon as it is trained.
# Stage first with bench/gpu/payload.sh (it packs .whl-lf/ from bench/gpu/lf_wheels.sh), then, back to back:
#   bash bench/gpu/lfrun.sh piece K             copy staged piece K (carry [".stage/cK"])
#   bash bench/gpu/lfrun.sh start SHA [MODEL]   check and unpack the payload, start the job (MODEL: embedded, the
#                                               default, or embedded-1.5b); ROOT is /tmp/lf-MODEL
#   bash bench/gpu/lfrun.sh wait SECONDS        until the job has ended (bench/gpu/bg.sh wait)
#   OUT=$OUT bash bench/gpu/lfrun.sh ship [MODEL]   ROOT packed into $OUT/lf.tgz.aa, .ab, ... (no adapter weights,
#                                               no copy of the MSRA rows), and the job's logs
# ENDPOINT=0 skips the replay through `selfid api` (counts against in-process) at the end; PARALLEL=2 trains two
# LLaMA-Factory chains at a time instead of three.
set -uo pipefail
here=$(dirname "$0")
case "${1:-}" in
  piece)
    mkdir -p /tmp/m && cp ".stage/c$2/part.$2" /tmp/m/ && echo "piece $2 staged ($(ls /tmp/m/part.* | wc -l) here)"
    ;;
  start)
    model=${3:-embedded}
    (cd /tmp/m && cat $(ls part.* | sort -t. -k2 -n) > payload.tar && echo "$2  payload.tar" | sha256sum -c --quiet \
      && tar xf payload.tar && rm -f part.* payload.tar) || { echo "the payload does not check: stage the pieces again"; exit 1; }
    [ -d /tmp/m/wheels-lf ] || { echo "the payload holds no LLaMA-Factory wheels: run bench/gpu/lf_wheels.sh, then bench/gpu/payload.sh"; exit 1; }
    source "$here/env.sh"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    # the job runs from its own copy of this tree: a later device call copies the working tree in afresh
    rm -rf /tmp/treelf && cp -r . /tmp/treelf
    bash "$here/bg.sh" start "lf-$model" bash -c "cd /tmp/treelf && source bench/gpu/env.sh && bash bench/gpu/lfrun.sh job /tmp/lf-$model $model"
    ;;
  job)
    root=$2 model=$3
    mkdir -p "$root"
    # the audits share the card with up to three trainings: at the default 0.4 of free memory the first audit's KV
    # cache took 37 GiB of an H100 and the plain arm's audit and the replay arm's ran out of memory (2026-12-07)
    export SELFID_KV_SHARE=${SELFID_KV_SHARE:-0.08}
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader -l 10 > "$root/gpu.log" 2>&1 &
    smi=$!
    TRAIN=0 ENDPOINT=0 bash "$here/lf.sh" "$root" "$model" > "$root/prepare.log" 2>&1 &
    prep=$!
    while [ ! -f "$root/model.txt" ] && kill -0 "$prep" 2>/dev/null; do sleep 2; done
    python3 bench/lf_proof.py base "$root" > "$root/base.log" 2>&1 &
    base=$!
    wait "$prep" || { echo "preparing $root failed:"; tail -30 "$root/prepare.log"; kill "$smi"; exit 1; }
    echo "[$(date +%T)] prepared: $(cat "$root/replay/time.txt" 2>/dev/null)"
    export LF_SITE=/tmp/lfsite PATH=/tmp/lfsite/bin:$PATH API_HOST=127.0.0.1  # as bench/gpu/lf.sh sets them
    # PARALLEL chains at a time (default all three; 2 where three do not fit the card, e.g. the 1.5B on an H100),
    # the longest (replay, then DPO) first
    status=0
    printf '%s\n' replay_dpo plain identity | xargs -P "${PARALLEL:-3}" -I{} \
      bash -c "bash '$root/commands.sh' {} > '$root/{}.log' 2>&1" || status=1
    wait "$base" || status=1
    echo "[$(date +%T)] arms trained and audited (status $status)"
    # an audit that failed beside the trainings (out of memory) is continued alone, now that the card is free; once
    # every audit is done, the same call writes the comparisons with plain (commands.sh ends with them)
    if ! bash "$root/commands.sh" audits > "$root/audits.log" 2>&1; then
      status=1  # an audit failed again, which stopped commands.sh: the comparisons of the arms audited, on their own
      bash "$root/commands.sh" base > "$root/compare.log" 2>&1
    fi
    echo "[$(date +%T)] missing audits run (status $status)"
    [ "${ENDPOINT:-1}" = 1 ] && TRAIN=0 bash "$here/lf.sh" "$root" "$model" > "$root/endpoint.log" 2>&1
    kill "$smi" 2>/dev/null
    echo "[$(date +%T)] done"
    exit $status
    ;;
  wait)
    bash "$here/bg.sh" wait "$2"
    ;;
  ship)
    root=/tmp/lf-${2:-embedded}
    tar czf - --exclude='*.safetensors' --exclude='*.bin' --exclude='lf_data/msra_ner.json' --exclude='tokenizer.json' \
      "$root" /tmp/bg | split -b 15000000 - "$OUT/lf.tgz."
    ls -la "$OUT"
    ;;
  *)
    sed -n 2,14p "$0"; exit 2
    ;;
esac

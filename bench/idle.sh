#!/usr/bin/env bash
# What N idle listeners cost a `sigvisor serve` and its keeper: N `sleep`
# processes, each launched with its own filter and listener, held open while
# the server's and the keeper's threads, memory and fds are read.
# Usage: bench/idle.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
# Long enough for all N to be up at once (about 1 ms to launch each).
hold=$(( n / 100 > 30 ? n / 100 : 30 ))
cargo build --release --workspace -q
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
ulimit -n 65536 2>/dev/null || true
target/release/sigvisor serve --socket "$dir/agent.sock" --control "$dir/control.sock" \
  --keeper "$dir/keeper.sock" --state-dir "$dir/state" 2>/dev/null &
server=$!
while [ ! -S "$dir/agent.sock" ]; do sleep 0.05; done
keeper=$(pgrep -P "$server" -f 'sigvisor keeper')
report() {
  local pid threads rss fds cpu
  for pid in "$server" "$keeper"; do
    threads=$(ls /proc/$pid/task | wc -l)
    rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    fds=$(ls /proc/$pid/fd | wc -l)
    cpu=$(awk '{print $14 + $15}' /proc/$pid/stat)
    printf '%-34s %-7s %8s %10s %8s %14s\n' "$1" "$([ "$pid" = "$server" ] && echo serve || echo keeper)" \
      "$threads" "$rss" "$fds" "$cpu"
  done
}
printf '%-34s %-7s %8s %10s %8s %14s\n' "state" "process" "threads" "RSS (kB)" "fds" "CPU (ticks)"
report "no listener"
for _ in $(seq "$n"); do
  target/release/sigvisor-launch --socket "$dir/agent.sock" -- sleep "$hold" &
done
while [ "$(ls /proc/$server/fd | wc -l)" -lt "$n" ]; do sleep 0.1; done
sleep 1
report "$n idle listeners"
sleep 5
report "$n idle listeners, 5 s later"

#!/usr/bin/env bash
# Cost of one close(2) under each way of supervising it, side by side in one
# run (absolute numbers drift between runs and machines: compare the ratios).
# Each row's ratio is to its yardstick, bench/minsup.c, a minimal C
# supervisor: "C loop" (RECV -> tgkill -> SEND, the limit for a signalled
# close) or "C bare" (RECV -> SEND, the limit for one answered unsignalled).
# Usage: bench/run.sh [CLOSES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
closes=${1:-20000}
rounds=${2:-5}
scripts/need-packages libseccomp-dev pkg-config gcc strace >&2
cargo build --release --workspace -q
out=target/release
# Static: no ld.so closes before the handler exists (strace would signal them).
cc -O2 -static -pthread -o "$out/closebench" bench/closebench.c
cc -O2 -pthread -o "$out/minsup" bench/minsup.c
profile=profiles/signal.yaml
status=$(mktemp)
no_killable=$(mktemp)
no_rules=$(mktemp)
stopped=$(mktemp --suffix=.yaml)
by_comm=$(mktemp --suffix=.yaml)
by_threads=$(mktemp --suffix=.yaml)
by_when=$(mktemp --suffix=.yaml)
stacks=$(mktemp --suffix=.yaml)
sed 's/^metadata:/metadata:\n  annotations:\n    gadget.kinvolk.io\/operation: stop/' "$profile" > "$stopped"
for pair in "by_comm|comm: \"nomatch*\"" "by_threads|min-threads: \"9\"" "by_when|when: \"1000000\"" \
  "stacks|signal: none\n    stacks: \"true\""; do
  IFS='|' read -r var parameter <<<"$pair"
  { cat "$profile"; printf "  parameters:\n    $parameter\n"; } > "${!var}"
done
printf '#!/bin/sh\nexec %s --no-wait-killable "$@"\n' "$PWD/$out/sigvisor-launch" > "$no_killable"
printf '#!/bin/sh\nexec %s --no-handler-rules "$@"\n' "$PWD/$out/sigvisor-launch" > "$no_rules"
chmod +x "$no_killable" "$no_rules"
trap 'kill ${server:-} 2>/dev/null; rm -rf "${served:-}"; rm -f "$status" "$no_killable" "$no_rules" "$stopped" "$by_comm" "$by_threads" "$by_when" "$stacks"' EXIT

run="$out/sigvisor run --status-file $status"
# A serve with no Trace: its listeners are selected by none (answered at once).
served=$(mktemp -d)
"$out/sigvisor" serve --socket "$served/agent.sock" --control "$served/control.sock" \
  --keeper "$served/keeper.sock" --state-dir "$served/state" 2>/dev/null &
server=$!
while [ ! -S "$served/agent.sock" ]; do sleep 0.05; done
t8="--threads 8"
per8=$((closes / 4))
slow=$((closes / 10))
# name | command prefix | closebench flags | closes per thread | signals expected | yardstick
configs=(
  "no interception||--handler|$closes|0|"
  "C loop: RECV, tgkill, SEND (the limit)|$out/minsup|--handler|$closes|$closes|loop"
  "C bare: RECV, SEND (no signal)|$out/minsup --no-signal|--handler|$closes|0|bare"
  "sigvisor, loop=adaptive (default)|$run $profile --|--handler|$closes|$closes|loop"
  "sigvisor, loop=hot (own thread)|$run --loop hot $profile --|--handler|$closes|$closes|loop"
  "sigvisor, loop=async (epoll)|$run --loop async $profile --|--handler|$closes|$closes|loop"
  "sigvisor, no handler (skip path)|$run $profile --||$closes|0|bare"
  "sigvisor, crash handler (skip path)|$run $profile --|--crash-handler|$closes|0|bare"
  "sigvisor, comm does not match (skip path)|$run $by_comm --|--handler|$closes|0|bare"
  "sigvisor, min-threads not reached (skip path)|$run $by_threads --|--handler|$closes|0|bare"
  "sigvisor, when not reached (skip path)|$run $by_when --|--handler|$closes|0|bare"
  "sigvisor, trace stopped (answered at once)|$run $stopped --|--handler|$closes|0|bare"
  "sigvisor serve, selected by no trace|$out/sigvisor-launch --socket $served/agent.sock --|--handler|$closes|0|bare"
  "sigvisor, filter not killable (observe only)|$run --launcher $no_killable $profile --|--handler|$closes|0|bare"
  "sigvisor, handlers from /proc (no rules)|$run --launcher $no_rules $profile --|--handler|$closes|$closes|loop"
  "C loop, 8 threads|$out/minsup|--handler $t8|$per8|$((per8 * 8))|loop8"
  "sigvisor, default, 8 threads|$run $profile --|--handler $t8|$per8|$((per8 * 8))|loop8"
  "strace -f -e inject=close:signal=SIGILL|strace -qq -o /dev/null -f -e trace=close -e inject=close:signal=SIGILL|--handler|$slow|$slow|loop"
  "sigvisor, stack of 30 frames (signal: none)|$run $stacks --|--depth 26|$slow|0|loop"
  "strace -k, stack of 30 frames|strace -qq -o /dev/null -f -k -e trace=close|--depth 26|$((slow / 10))|0|loop"
)

printf '%-46s %10s %10s %8s  %s\n' "mechanism ($rounds rounds)" "median µs" "best µs" "ratio" "to"
declare -A yardstick
for entry in "${configs[@]}"; do
  IFS='|' read -r name prefix flags n expect ref <<<"$entry"
  samples=()
  for _ in $(seq "$rounds"); do
    # shellcheck disable=SC2086
    read -r ns got < <($prefix $out/closebench "$n" $flags)
    if [ "$got" != "$expect" ]; then
      echo "$name: expected $expect signals, got $got" >&2
      exit 1
    fi
    samples+=("$ns")
  done
  sorted=($(printf '%s\n' "${samples[@]}" | sort -n))
  median=${sorted[$((rounds / 2))]}
  best=${sorted[0]}
  case "$name" in
    "C loop: "*) yardstick[loop]=$median ;;
    "C bare: "*) yardstick[bare]=$median ;;
    "C loop, 8 threads") yardstick[loop8]=$median ;;
  esac
  base=""
  [ -z "$ref" ] || base=${yardstick[$ref]:-}
  awk -v n="$name" -v m="$median" -v b="$best" -v base="$base" -v ref="$ref" \
    'BEGIN { printf "%-46s %10.2f %10.2f ", n, m / 1000, b / 1000;
             if (base != "") printf "%7.2fx  %s\n", m / base, ref; else printf "%8s\n", "" }'
done

# A good target's close latency under one serve, alone and beside three
# hostile tenants (tests/benches/tenants.rs), in the same run.
echo
cargo bench -q -p sigvisor-tests --bench tenants 2>/dev/null

# What the shim adds to a container's start under docker (bench/engines.sh).
echo
bench/engines.sh

# The node agent on a real API server (bench/kubernetes.sh), where Go 1.26
# can build the control plane.
if PATH=/usr/local/go/bin:$PATH go version 2>/dev/null | grep -qE 'go1\.(2[6-9]|[3-9][0-9])'; then
  bench/kubernetes.sh
else
  echo "(bench/kubernetes.sh skipped: no Go 1.26 or later for the control plane)"
fi

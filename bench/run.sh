#!/usr/bin/env bash
# Cost of one close(2) under each way of supervising it, side by side in one
# run (absolute numbers drift between runs and machines: compare the ratios).
# Usage: bench/run.sh [CLOSES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
closes=${1:-20000}
rounds=${2:-5}
scripts/need-packages libseccomp-dev pkg-config gcc >&2
cargo build --release --workspace -q
out=target/release
cc -O2 -o "$out/closebench" bench/closebench.c
profile=profiles/signal.yaml
status=$(mktemp)
no_killable=$(mktemp)
no_rules=$(mktemp)
stopped=$(mktemp --suffix=.yaml)
sed 's/^metadata:/metadata:\n  annotations:\n    gadget.kinvolk.io\/operation: stop/' "$profile" > "$stopped"
printf '#!/bin/sh\nexec %s --no-wait-killable "$@"\n' "$PWD/$out/sigvisor-launch" > "$no_killable"
printf '#!/bin/sh\nexec %s --no-handler-rules "$@"\n' "$PWD/$out/sigvisor-launch" > "$no_rules"
chmod +x "$no_killable" "$no_rules"
trap 'rm -f "$status" "$no_killable" "$no_rules" "$stopped"' EXIT

# name | command prefix | handler flag | signals expected
configs=(
  "no interception||--handler|0"
  "sigvisor, loop=async (epoll)|$out/sigvisor run --loop async --status-file $status $profile --|--handler|$closes"
  "sigvisor, loop=hot (own thread)|$out/sigvisor run --loop hot --status-file $status $profile --|--handler|$closes"
  "sigvisor, loop=adaptive (default)|$out/sigvisor run --status-file $status $profile --|--handler|$closes"
  "sigvisor, no handler (skip path)|$out/sigvisor run --status-file $status $profile --||0"
  "sigvisor, crash handler (skip path)|$out/sigvisor run --status-file $status $profile --|--crash-handler|0"
  "sigvisor, handlers from /proc (no rules)|$out/sigvisor run --launcher $no_rules --status-file $status $profile --|--handler|$closes"
  "sigvisor, trace stopped (answered at once)|$out/sigvisor run --status-file $status $stopped --|--handler|0"
  "sigvisor, filter not killable (observe only)|$out/sigvisor run --launcher $no_killable --status-file $status $profile --|--handler|0"
)

printf '%-46s %10s %10s %8s\n' "mechanism ($closes closes, $rounds rounds)" "median µs" "best µs" "ratio"
base=""
for entry in "${configs[@]}"; do
  IFS='|' read -r name prefix flag expect <<<"$entry"
  samples=()
  for _ in $(seq "$rounds"); do
    # shellcheck disable=SC2086
    read -r ns got < <($prefix $out/closebench "$closes" $flag)
    if [ "$got" != "$expect" ]; then
      echo "$name: expected $expect signals, got $got" >&2
      exit 1
    fi
    samples+=("$ns")
  done
  sorted=($(printf '%s\n' "${samples[@]}" | sort -n))
  median=${sorted[$((rounds / 2))]}
  best=${sorted[0]}
  [ -n "$base" ] || base=$median
  awk -v n="$name" -v m="$median" -v b="$best" -v base="$base" \
    'BEGIN { printf "%-46s %10.2f %10.2f %7.1fx\n", n, m / 1000, b / 1000, m / base }'
done

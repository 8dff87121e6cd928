#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader of hostile input (fuzz/, the
# targets of supervisor/src/fuzzing.rs), MINUTES in all, shared among the
# targets. New inputs go to fuzz/corpus/TARGET (minimized afterwards), a
# crash to fuzz/regressions/TARGET, and `make test` replays both. Prints a
# table: executions, corpus size and crashes per target.
#
# Needs a nightly toolchain (rustup) and cargo-fuzz, which it installs from
# crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
targets=(gopclntab binary unwind prologue sigaction maps handoff control profile)
seconds=$(( minutes * 60 / ${#targets[@]} ))
[ "$seconds" -ge 5 ] || seconds=5
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
log=$(mktemp -d)
printf '%-10s %8s %12s %10s %8s\n' target seconds executions corpus crashes
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/regressions/$t" "fuzz/artifacts/$t"
    found() { find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l; }
    before=$(found)
    # A crash ends the run with a non-zero status: it is reported below.
    (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        >"$log/$t.log" 2>&1) || true
    (cd fuzz && cargo +nightly fuzz cmin "$t" "corpus/$t" -- -max_len=65536 >>"$log/$t.log" 2>&1) || true
    runs=$(grep -o 'Done [0-9]* runs' "$log/$t.log" | tail -1 | grep -o '[0-9]*' || true)
    [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log/$t.log" | tail -1 | tr -d '#' || true)
    # Every crash, timeout or leak found is kept as a regression.
    for found in fuzz/artifacts/"$t"/*; do
        [ -e "$found" ] && cp "$found" "fuzz/regressions/$t/"
    done
    crashes=$(( $(found) - before ))
    printf '%-10s %8s %12s %10s %8s\n' "$t" "$seconds" "${runs:-?}" "$(find "fuzz/corpus/$t" -type f | wc -l)" "$crashes"
done
echo "logs: $log"

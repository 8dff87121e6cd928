#!/usr/bin/env bash
# Soak: MINUTES of closes at full rate under `sigvisor serve` while serve is
# killed (kill -9) and started again every 30 s.
#   - one host program wrapped by sigvisor-launch: 8 threads closing for the
#     whole run;
#   - crun containers coming and going (listener mode, 2 threads, 3 s each),
#     one after another;
#   - every 10 s: serve's and the keeper's fds and RSS.
# At the end: closes made, closes failed (close(2) != 0, EINTR, fds leaked:
# must be 0) and signals imprecise (early, outside the call, wrong PC or
# si_value: must be 0), over all targets.
# Usage: bench/soak.sh [MINUTES] (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
scripts/need-packages libseccomp-dev pkg-config gcc crun runc busybox-static jq >&2
cargo build --release --workspace -q
out=target/release
cc -O2 -pthread -o "$out/closer" tests/fixtures/closer.c
cc -O2 -static -pthread -o "$out/closer-static" tests/fixtures/closer.c
dir=$(mktemp -d)
server=
trap 'kill $(jobs -p) 2>/dev/null; [ -n "$server" ] && kill -9 "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
mkdir -p "$dir/profiles" "$dir/reports"
cat > "$dir/profiles/all.yaml" <<'EOF'
apiVersion: gadget.kinvolk.io/v1alpha1
kind: Trace
metadata:
  name: all
spec:
  gadget: signal
  runMode: Auto
  outputMode: Status
EOF
start_serve() {
  rm -f "$dir/agent.sock"
  "$out/sigvisor" serve --socket "$dir/agent.sock" --control "$dir/control.sock" \
    --keeper "$dir/keeper.sock" --state-dir "$dir/state" "$dir/profiles" 2>>"$dir/serve.log" &
  server=$!
  while [ ! -S "$dir/agent.sock" ]; do sleep 0.01; done
}
start_serve
keeper=$(pgrep -P "$server" -f 'sigvisor keeper')

# A bundle for crun: the static closer alone in its rootfs, patched for serve.
bundle="$dir/bundle"
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/dev" "$bundle/rootfs/sys" "$bundle/rootfs/tmp"
cp "$out/closer-static" "$bundle/rootfs/bin/closer"
runc spec --bundle "$bundle"
jq '.process.terminal = false | .process.args = ["/bin/closer", "--threads", "2", "--duration-ms", "3000"]' \
  "$bundle/config.json" > "$bundle/config.new" && mv "$bundle/config.new" "$bundle/config.json"
"$out/sigvisor" oci patch --runtime crun --socket "$dir/agent.sock" "$bundle" >/dev/null

deadline=$(( $(date +%s) + minutes * 60 ))
"$out/sigvisor-launch" --socket "$dir/agent.sock" -- \
  "$out/closer" --threads 8 --duration-ms $(( minutes * 60000 )) > "$dir/reports/host.json" &
host=$!
containers() {
  local n=0
  while [ "$(date +%s)" -lt "$deadline" ]; do
    n=$((n + 1))
    # crun trips over this host's hybrid cgroup layout without the unmount.
    if ! unshare -m --propagation private sh -c \
      'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun run --bundle "$0" "$1"' \
      "$bundle" "soak-$$-$n" > "$dir/reports/c$n.json" 2>"$dir/reports/c$n.err"; then
      echo "$n" >> "$dir/refused"
    fi
    crun delete -f "soak-$$-$n" >/dev/null 2>&1 || true
  done
}
containers &
feeder=$!

sample() {
  local pid=$1
  if [ -d "/proc/$pid" ]; then
    printf '%6s %8s' "$(ls "/proc/$pid/fd" | wc -l)" "$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"
  else
    printf '%6s %8s' - -
  fi
}
printf '%8s  %-14s %6s %8s  %-7s %6s %8s\n' "time (s)" "event" "fds" "RSS kB" "" "fds" "RSS kB"
printf '%8s  %-14s %15s  %-7s %15s\n' "" "" "serve" "" "keeper"
start=$(date +%s)
restarts=0
last_restart=$start
while [ "$(date +%s)" -lt "$deadline" ]; do
  sleep 10
  now=$(date +%s)
  event=""
  if [ $((now - last_restart)) -ge 30 ] && [ "$now" -lt "$deadline" ]; then
    kill -9 "$server"
    wait "$server" 2>/dev/null || true
    start_serve
    restarts=$((restarts + 1))
    last_restart=$now
    event="serve killed"
  fi
  printf '%8s  %-14s %s  %-7s %s\n' $((now - start)) "$event" "$(sample "$server")" "" "$(sample "$keeper")"
done
wait "$host" || echo "the host program exited $?"
wait "$feeder" || true
sleep 1

jq -s '
  map(select(.event == "done")) as $r
  | {targets: ($r | length),
     closes: ($r | map(.closes) | add),
     signals: ($r | map(.signals) | add),
     closes_failed: ($r | map(.close_errors + .eintr + .leaked) | add),
     signals_imprecise: ($r | map(.early + .outside + .bad_pc + .bad_value) | add)}
' "$dir"/reports/*.json > "$dir/summary.json"
refused=$( [ -f "$dir/refused" ] && wc -l < "$dir/refused" || echo 0)
containers_run=$(ls "$dir"/reports/c*.json | wc -l)
echo
echo "minutes:               $minutes"
echo "serve killed:          $restarts times (kill -9, then started again)"
echo "containers started:    $containers_run, of which failed to start: $refused"
jq -r '"targets reporting:     \(.targets)
closes made:           \(.closes)
signals received:      \(.signals)
closes failed:         \(.closes_failed)
signals imprecise:     \(.signals_imprecise)"' "$dir/summary.json"
if [ "$refused" -gt 0 ]; then
  echo "first refusal:"; head -5 "$dir/reports/c$(head -1 "$dir/refused").err"
fi
jq -e '.closes_failed == 0 and .signals_imprecise == 0' "$dir/summary.json" >/dev/null

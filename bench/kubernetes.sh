#!/usr/bin/env bash
# The node agent on a real API server (tests/cluster/up), measured:
#  1. from `kubectl annotate … operation=start` to the first signalled close
#     of a running program (CPython closing a file every 5 ms, a SIGUSR1
#     handler of its own), ROUNDS rounds: median and worst;
#  2. status writes per minute for a busy Trace (the program's closes
#     signalled all along): the Trace's resourceVersion changes, watched;
#  3. the agent's RSS and CPU while idle, then with 1000 Traces on other
#     nodes, then with 100 more on its own node.
# Usage: bench/kubernetes.sh [ROUNDS]   (needs Go 1.26 for the control plane)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
export PATH=/usr/local/go/bin:$PATH
scripts/need-packages python3 >&2
make -s static >/dev/null 2>&1
tests/cluster/build >/dev/null
sigvisor=$PWD/target/debug/sigvisor-static
launch=$PWD/target/debug/sigvisor-launch-static
dir=$(mktemp -d /tmp/sv-kbench-XXXX)
cleanup() {
    [ -n "${program:-}" ] && kill "$program" 2>/dev/null
    [ -n "${watch:-}" ] && kill "$watch" 2>/dev/null
    [ -n "${serve:-}" ] && kill "$serve" 2>/dev/null
    tests/cluster/down "$dir/cluster" >/dev/null 2>&1 || true
    sleep 1
    rm -rf "$dir"
}
trap cleanup EXIT
# Polls a shell condition for at most a minute: a bench never hangs.
until_true() {
    local end=$((SECONDS + 60))
    until eval "$1"; do
        [ $SECONDS -lt $end ] || { echo "bench/kubernetes.sh: never: $1 (see $dir/serve.log)" >&2; exit 1; }
        sleep 0.02
    done
}
SIGVISOR_CLUSTER_PORT=26443 SIGVISOR_ETCD_PORT=22379 tests/cluster/up "$dir/cluster" >/dev/null
kubectl() { "$dir/cluster/bin/kubectl" --kubeconfig "$dir/cluster/kubeconfig" "$@"; }
kubectl apply -f deploy/crd.yaml >/dev/null
kubectl wait --for condition=established --timeout=60s crd/traces.gadget.kinvolk.io >/dev/null
kubectl create namespace gadget >/dev/null
trace() { # NAME NODE RUNMODE OUTPUTMODE
    printf 'apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata: {name: %s, namespace: gadget}\n' "$1"
    printf 'spec: {node: %s, gadget: signal, runMode: %s, outputMode: %s, parameters: {signal: SIGUSR1}}\n---\n' \
        "$2" "$3" "$4"
}
trace lat bench Manual Stream | kubectl apply -f - >/dev/null

"$sigvisor" serve --kubernetes --kubeconfig "$dir/cluster/kubeconfig" --node bench \
    --socket "$dir/run/agent.sock" --control "$dir/run/control.sock" --state-dir "$dir/state" 2>"$dir/serve.log" &
serve=$!
until_true '"$sigvisor" probe "$dir/run/control.sock" 2>/dev/null'
until_true '[ -n "$(kubectl get -n gadget trace lat -o "jsonpath={.status.output}")" ]'
"$launch" --socket "$dir/run/agent.sock" -- python3 -c '
import os, signal, time
signal.signal(signal.SIGUSR1, lambda *_: None)
while True:
    os.close(os.open("/dev/null", os.O_RDONLY))
    time.sleep(0.005)
' &
program=$!
"$sigvisor" stream lat --control "$dir/run/control.sock" > "$dir/events" &
watch=$!
sleep 1

# 1. annotate start -> the first signal (the event's time, the agent's clock).
: > "$dir/latencies"
for _ in $(seq "$rounds"); do
    lines=$(wc -l < "$dir/events")
    start=$(date +%s.%N)
    kubectl annotate --overwrite -n gadget trace/lat gadget.kinvolk.io/operation=start >/dev/null
    until_true '[ "$(wc -l < "$dir/events")" -gt "$lines" ]'
    python3 - "$dir/events" "$lines" "$start" >> "$dir/latencies" <<'PYEOF'
import datetime, json, sys
events, skip, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
line = open(events).read().splitlines()[skip]
when = datetime.datetime.fromisoformat(json.loads(line)["time"].replace("Z", "+00:00")).timestamp()
print(f"{(when - start) * 1000:.1f}")
PYEOF
    kubectl annotate --overwrite -n gadget trace/lat gadget.kinvolk.io/operation=stop >/dev/null
    until_true '[ "$(kubectl get -n gadget trace lat -o "jsonpath={.status.state}")" = Stopped ]'
    sleep 0.3
done
sort -n "$dir/latencies" > "$dir/sorted"
median=$(awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}' "$dir/sorted")
worst=$(tail -1 "$dir/sorted")

# 2. status writes per minute, the Trace busy (started: 200 signals/s).
kubectl annotate --overwrite -n gadget trace/lat gadget.kinvolk.io/operation=start >/dev/null
sleep 3
timeout 30 "$dir/cluster/bin/kubectl" --kubeconfig "$dir/cluster/kubeconfig" get -n gadget trace lat \
    --watch-only --output-watch-events -o 'jsonpath={.object.metadata.resourceVersion}{"\n"}' \
    > "$dir/writes" 2>/dev/null || true
writes=$(( $(grep -c . "$dir/writes" || true) * 2 ))
signals=$(kubectl get -n gadget trace lat -o 'jsonpath={.status.signals}')
kill "$program" "$watch" 2>/dev/null || true
wait "$program" "$watch" 2>/dev/null || true
program='' watch=''

# 3. what Traces cost the agent: RSS, and CPU over 30 s.
usage() {
    local t0 t1
    t0=$(awk '{print $14 + $15}' "/proc/$serve/stat")
    sleep 30
    t1=$(awk '{print $14 + $15}' "/proc/$serve/stat")
    printf '%s %s' "$(awk '/VmRSS/ {print $2}' "/proc/$serve/status")" \
        "$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz / 30 * 100}')"
}
kubectl delete -n gadget trace lat >/dev/null
sleep 3
read -r rss0 cpu0 <<< "$(usage)"
for i in $(seq 1000); do trace "other-$i" "node-$((i % 10))" Auto Status; done > "$dir/others.yaml"
kubectl create -f "$dir/others.yaml" >/dev/null
read -r rss1 cpu1 <<< "$(usage)"
for i in $(seq 100); do trace "own-$i" bench Auto Status; done > "$dir/own.yaml"
kubectl create -f "$dir/own.yaml" >/dev/null
until_true '[ "$(kubectl get -n gadget traces --field-selector spec.node=bench \
    -o "jsonpath={range .items[*]}{.status.state}{\"\n\"}{end}" | grep -c Started)" -eq 100 ]'
read -r rss2 cpu2 <<< "$(usage)"

echo
echo "## Kubernetes agent (bench/kubernetes.sh, $rounds rounds, kube-apiserver $(basename "$(dirname "$(dirname "$(readlink -f "$dir/cluster/bin/kubectl")")")"))"
echo
echo "| measure | value |"
echo "|---|---|"
echo "| annotate start -> first signalled close, median | $median ms |"
echo "| annotate start -> first signalled close, worst | $worst ms |"
echo "| status writes per minute, busy Trace ($signals signals by then) | $writes |"
echo "| agent idle: RSS, CPU | $rss0 KiB, $cpu0 % |"
echo "| + 1000 Traces on other nodes: RSS, CPU | $rss1 KiB, $cpu1 % |"
echo "| + 100 Traces on its node: RSS, CPU | $rss2 KiB, $cpu2 % |"

#!/usr/bin/env bash
# What the shim costs a container start: `docker run --rm` of a trivial
# container, with docker's own runc and through the shim (wrap mode) and
# with crun through it (listener mode), alternated in one run, on a dockerd
# of this script's own (Debian's docker.io). Usage: bench/engines.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
scripts/need-packages docker.io containerd busybox-static runc crun >&2
cargo build --release -q -p sigvisor
make -s static-launcher >/dev/null 2>&1
out=$PWD/target/release
cp target/debug/sigvisor-launch-static "$out/sigvisor-launch-static"
dir=$(mktemp -d /tmp/sv-bench-XXXX)
trap 'kill ${serve:-} 2>/dev/null; [ -f "$dir/docker.pid" ] && kill "$(cat "$dir/docker.pid")"; sleep 2; rm -rf "$dir"' EXIT

mkdir -p "$dir/profiles" "$dir/rootfs/bin"
cp profiles/signal.yaml "$dir/profiles/"
cp "$(command -v busybox)" "$dir/rootfs/bin/busybox"
ln -s busybox "$dir/rootfs/bin/true"
"$out/sigvisor" serve --socket "$dir/run/agent.sock" --state-dir "$dir/state" "$dir/profiles" 2>/dev/null &
serve=$!
# The wrappers of docs/containers.md; crun runs without the cgroup v2 mount
# that this kind of host's hybrid makes it refuse (a quirk of the host).
shim="$out/sigvisor oci runtime --socket $dir/run/agent.sock --docker-host unix://$dir/docker.sock"
printf '#!/bin/sh\nexec %s --runtime runc -- "$@"\n' "$shim" > "$dir/sigvisor-runc"
printf '#!/bin/sh\nexec unshare -m --propagation private sh -c '"'"'umount /sys/fs/cgroup/unified 2>/dev/null; exec %s --runtime crun -- "$@"'"'"' sh "$@"\n' \
  "$shim" > "$dir/sigvisor-crun"
printf '#!/bin/sh\nexec unshare -m --propagation private sh -c '"'"'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"'"'"' sh "$@"\n' \
  > "$dir/plain-crun"
chmod +x "$dir/sigvisor-runc" "$dir/sigvisor-crun" "$dir/plain-crun"
cat > "$dir/daemon.json" <<EOF
{"runtimes": {"sigvisor": {"path": "$dir/sigvisor-runc"}, "sigvisor-crun": {"path": "$dir/sigvisor-crun"},
              "crun": {"path": "$dir/plain-crun"}},
 "bridge": "none", "iptables": false, "ip6tables": false}
EOF
dockerd --config-file "$dir/daemon.json" --data-root "$dir/data" --exec-root "$dir/exec" \
  --pidfile "$dir/docker.pid" -H "unix://$dir/docker.sock" >"$dir/dockerd.log" 2>&1 &
docker=(/usr/bin/docker -H "unix://$dir/docker.sock")
until "${docker[@]}" version >/dev/null 2>&1; do sleep 0.2; done
tar -C "$dir/rootfs" -c . | "${docker[@]}" import - sigvisor-bench:true >/dev/null

declare -A times
# name | docker run flags | the row it adds to
kinds=("runc (docker's own)||" "runc through the shim (wrap)|--runtime sigvisor|runc (docker's own)"
  "crun|--runtime crun|" "crun through the shim (listener)|--runtime sigvisor-crun|crun")
for _ in $(seq "$runs"); do
  for kind in "${kinds[@]}"; do
    IFS='|' read -r name flags _ <<<"$kind"
    start=$(date +%s%N)
    # shellcheck disable=SC2086
    "${docker[@]}" run --rm --network none $flags sigvisor-bench:true /bin/true
    times[$name]+="$((($(date +%s%N) - start) / 1000)) "
  done
done
printf '%-46s %10s %10s %10s\n' "docker run --rm ($runs runs each)" "median ms" "best ms" "added ms"
declare -A medians
for kind in "${kinds[@]}"; do
  IFS='|' read -r name _ to <<<"$kind"
  sorted=($(printf '%s\n' ${times[$name]} | sort -n))
  medians[$name]=${sorted[$((runs / 2))]}
  base=${medians[${to:-$name}]}
  awk -v n="$name" -v m="${medians[$name]}" -v b="${sorted[0]}" -v base="$base" -v to="$to" \
    'BEGIN { printf "%-46s %10.1f %10.1f ", n, m / 1000, b / 1000;
             if (to != "") printf "%10.1f\n", (m - base) / 1000; else printf "\n" }'
done

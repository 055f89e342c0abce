#!/bin/sh
# Container backend speed and density, with crun and bwrap on the same busybox rootfs in the
# same run, so the ratios are meaningful (absolute times vary ±30% between runs).
# Needs root, busybox-static, crun, bubblewrap, hyperfine.
# Usage: bench/container.sh [RUNS] [DENSITY]      (defaults: 40 runs, 200 environments)
set -eu
RUNS=${1:-40}
DENSITY=${2:-200}
cd "$(dirname "$0")/.."
cargo build --release -q -p berth-runtime --example container_bench
BENCH=$PWD/target/release/examples/container_bench

WORK=$(mktemp -d /tmp/berth-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
R=$WORK/bundle/rootfs
mkdir -p "$R/bin" "$R/etc" "$R/proc" "$R/sys" "$R/dev" "$R/tmp"
cp /bin/busybox "$R/bin/"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"; done
echo "root:x:0:0::/root:/bin/sh" > "$R/etc/passwd"
echo "root:x:0:" > "$R/etc/group"

echo "== berth (start = ready for commands; cold: image already unpacked)"
OUT=$("$BENCH" "$R" "$RUNS")
echo "$OUT"
val() { echo "$OUT" | awk -v k="$1" '$1 == k { print $2 }'; }

echo "== crun run /bin/true, crun exec, bwrap"
cd "$WORK/bundle"
crun spec
python3 - <<'PY'
import json
c = json.load(open("config.json"))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
json.dump(c, open("config.json", "w"))
c["process"]["args"] = ["/bin/sleep", "100000"]
json.dump(c, open("config-sleep.json", "w"))
PY
# crun 1.8 refuses this host's hybrid cgroup layout unless the v2 mount is hidden (PEERS.md).
unshare -m --propagation private sh -c "
  umount /sys/fs/cgroup/unified 2>/dev/null || true
  hyperfine -N -w 3 -r $RUNS --export-json $WORK/crun.json 'crun run bench-run' >/dev/null
  cp config.json config-true.json; cp config-sleep.json config.json
  crun run -d bench-exec >/dev/null
  cp config-true.json config.json
  hyperfine -N -w 3 -r $RUNS --export-json $WORK/crunexec.json 'crun exec bench-exec /bin/true' >/dev/null
  crun kill bench-exec KILL; sleep 0.2; crun delete -f bench-exec
"
hyperfine -N -w 3 -r "$RUNS" --export-json "$WORK/bwrap.json" \
  "bwrap --unshare-all --ro-bind $R / --proc /proc --dev /dev /bin/true" >/dev/null
med() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][0]; print(f\"{r['median']*1000:.2f}\")" "$1"; }
CRUN=$(med "$WORK/crun.json"); CRUNEXEC=$(med "$WORK/crunexec.json"); BWRAP=$(med "$WORK/bwrap.json")
echo "crun_run_true_ms $CRUN"
echo "crun_exec_true_ms $CRUNEXEC"
echo "bwrap_true_ms $BWRAP"

echo "== ratios (target: cold start <= 1.2x crun, exec <= 1.5x crun exec)"
python3 - "$(val start_plus_exec_true_ms)" "$CRUN" "$(val exec_true_ms)" "$CRUNEXEC" "$BWRAP" <<'PY'
import sys
start, crun, ex, crunex, bwrap = map(float, sys.argv[1:])
print(f"berth start+exec true / crun run true = {start/crun:.2f}")
print(f"berth start+exec true / bwrap true   = {start/bwrap:.2f}")
print(f"berth exec true / crun exec true     = {ex/crunex:.2f}")
PY

echo "== density ($DENSITY idle environments of one image)"
"$BENCH" "$R" density "$DENSITY"

#!/usr/bin/env bash
# Costs as the number of environments grows (issue 17): with 1, 10, 100, 1000 idle
# environments of one busybox image in one berth home, prints per step
#  - start time per environment (the environments added in that step, one after another),
#  - idle memory per environment (cgroup usage + the supervisor's pages not charged to it, as
#    container.sh's density part measures),
#  - warm `berth up` (nothing changed), `berth exec -- true`, `berth status` of one of them and
#    `berth ls` of all, each timed interleaved (bench/interleave.py) with the same command
#    against a second berth home holding a single environment, so the ratio "N environments /
#    one environment" comes from one run whatever the load,
#  - syscalls of one `berth status` and one `berth ls` (strace -c -f: load-independent).
# Then everything is torn down (`berth destroy` of each) and checked: no mount under the bench
# folder, no berth cgroup, no process, no bridge is left.
# Goals (reported, not asserted): at the largest step warm `up` < 10 ms, `exec` and `status`
# within 1.1x of one environment, `ls` < 100 ms.
# Usage: bench/scale.sh      STEPS="1 10 100 1000" RUNS=15 (interleaved rounds per step)
#   NET=isolated (default: every environment on its own bridge BERTH_BRIDGE=berthscale, so the
#   bench never crowds the machine's berth0; a Linux bridge takes at most 1024 ports) or none.
#   BERTH_BIN=path: measure that binary instead of the release build.
#   COMPARE_BIN=path: also time another build (e.g. the previous version) on the same
#   environments, in the same rounds, and count its system calls ("before" vs "after").
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-15}
STEPS=${STEPS:-"1 10 100 1000"}
NET=${NET:-isolated}
case $NET in isolated | none) ;; *) echo "bench: NET must be isolated or none" >&2; exit 1 ;; esac
export BERTH_BRIDGE=berthscale
bench_setup
BERTH=${BERTH_BIN:-$BERTH}
need strace
# No crun here: interleave.py runs every command in the host namespace.
CRUN_NS=
MAX=$(for n in $STEPS; do echo "$n"; done | sort -n | tail -1)
NET_TOML=$([ "$NET" = none ] && printf '[network]\nmode = "none"\n' || true)

# The reference: one environment in a home of its own (the bench folder's name is a prefix of
# both homes' paths only through $W itself).
REF_HOME=$W/refhome
REF=$W/ref
project "$REF" scale-ref "$NET_TOML"
in_ref() { BERTH_HOME=$REF_HOME "$BERTH" "$@"; }
STARTED=0
teardown() {
  local i
  for i in $(seq "$STARTED"); do "$BERTH" -C "$W/s/$i" -q destroy -t 1 || true; done
  in_ref -C "$REF" -q destroy -t 1 || true
}
on_exit teardown

before_cg=$(cg_dirs | wc -l)
before_mounts=$(count_mounts)
before_procs=$(count_procs)
for i in $(seq "$MAX"); do project "$W/s/$i" "scale-$i" "$NET_TOML"; done
echo "== reference environment (its own home) and the first of the big home" >&2
in_ref -C "$REF" -q up

# mem_json OUT: the memory of the big home's idle environments (see container.sh).
mem_json() {
  python3 - "$BERTH_HOME" "$1" "$(dirname "$0")" <<'PY'
import json, sys
home, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])
from supervisor_memory import measure
m = measure(home)
json.dump({k: m[k] for k in ("supervisors", "pss_kib", "cg_usage_kib", "cg_anon_kib")}, open(out, "w"))
PY
}

# syscalls OUT CMD…: the number of system calls CMD makes (its children included).
syscalls() {
  local out=$1
  shift
  strace -c -f -o "$out" "$@" >/dev/null
  awk '$NF == "total" {print $4}' "$out"
}

prev=0
for n in $STEPS; do
  echo "== $n environments: starting $((n - prev))" >&2
  t0=$(date +%s%N)
  for i in $(seq $((prev + 1)) "$n"); do
    STARTED=$i
    "$BERTH" -C "$W/s/$i" -q up
  done
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000 / (n - prev) )) > "$W/start-$n.us"
  prev=$n
  mem_json "$W/mem-$n.json"
  B="env BERTH_HOME=$BERTH_HOME $BERTH -C $W/s/1"
  R="env BERTH_HOME=$REF_HOME $BERTH -C $REF"
  C="env BERTH_HOME=$BERTH_HOME ${COMPARE_BIN:-} -C $W/s/1"
  compare=()
  if [ -n "${COMPARE_BIN:-}" ]; then
    compare=("$(spec "up C" host "" "$C -q up")" "$(spec "exec C" host "" "$C exec -- true")"
      "$(spec "status C" host "" "$C status")" "$(spec "ls C" host "" "${C% -C *} ls")")
  fi
  PAUSE=0 interleave "$W/cmds-$n.json" ${compare[@]+"${compare[@]}"} \
    "$(spec "up N" host "" "$B -q up")" \
    "$(spec "up 1" host "" "$R -q up")" \
    "$(spec "exec N" host "" "$B exec -- true")" \
    "$(spec "exec 1" host "" "$R exec -- true")" \
    "$(spec "status N" host "" "$B status")" \
    "$(spec "status 1" host "" "$R status")" \
    "$(spec "ls N" host "" "$B ls")" \
    "$(spec "ls 1" host "" "$R ls")"
  {
    echo "status $(syscalls "$W/strace-status-$n.txt" "$BERTH" -C "$W/s/1" status)"
    echo "ls $(syscalls "$W/strace-ls-$n.txt" "$BERTH" ls)"
    echo "up $(syscalls "$W/strace-up-$n.txt" "$BERTH" -C "$W/s/1" -q up)"
    echo "exec $(syscalls "$W/strace-exec-$n.txt" "$BERTH" -C "$W/s/1" exec -- true)"
    if [ -n "${COMPARE_BIN:-}" ]; then
      echo "status_C $(syscalls "$W/strace-c-status-$n.txt" "$COMPARE_BIN" -C "$W/s/1" status)"
      echo "ls_C $(syscalls "$W/strace-c-ls-$n.txt" "$COMPARE_BIN" ls)"
      echo "up_C $(syscalls "$W/strace-c-up-$n.txt" "$COMPARE_BIN" -C "$W/s/1" -q up)"
      echo "exec_C $(syscalls "$W/strace-c-exec-$n.txt" "$COMPARE_BIN" -C "$W/s/1" exec -- true)"
    fi
  } > "$W/syscalls-$n.txt"
  [ "$("$BERTH" ls | grep -c '^scale-[0-9]')" = "$n" ] || {
    echo "bench: berth ls does not list the $n environments" >&2
    "$BERTH" ls >&2
    exit 1
  }
done
uptime_during=$(cut -d' ' -f1-3 /proc/loadavg)

echo "== teardown: destroying $STARTED + 1 environments" >&2
t2=$(date +%s%N)
teardown
STARTED=0
t3=$(date +%s%N)
after_cg=$(cg_dirs | wc -l)
after_mounts=$(count_mounts)
after_procs=$(count_procs)
bridge_left=$( (ip -o link show berthscale 2>/dev/null || true) | wc -l)
envs_left=$( (find "$BERTH_HOME/envs" "$REF_HOME/envs" -mindepth 1 -maxdepth 1 2>/dev/null || true) | wc -l)

python3 - "$W" "$STEPS" "$RUNS" "$(( (t3 - t2) / 1000000 ))" "$uptime_during" "$NET" <<'PY' > "$W/table.txt"
import json, sys
w, steps, runs, down_ms, load, net = sys.argv[1], list(map(int, sys.argv[2].split())), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
print(f"{runs} interleaved rounds per step, back to back; medians in ms. 'N/1': the same command")
print("against a home holding one environment, in the same rounds. network:", net)
print(f"{'envs':>5} {'start/env':>9} {'MiB/env':>7} {'warm up':>14} {'exec -- true':>14} {'status':>14} {'ls':>14}  syscalls: status ls up exec")
rows = {}
for n in steps:
    med = {r["command"]: r["median"] * 1000 for r in json.load(open(f"{w}/cmds-{n}.json"))["results"]}
    m = json.load(open(f"{w}/mem-{n}.json"))
    start = int(open(f"{w}/start-{n}.us").read()) / 1000
    k = max(m["supervisors"], 1)
    mib = (m["cg_usage_kib"] + max(0, m["pss_kib"] - m["cg_anon_kib"])) / k / 1024
    sc = dict(l.split() for l in open(f"{w}/syscalls-{n}.txt"))
    cell = lambda c: f"{med[c + ' N']:5.2f} ({med[c + ' N'] / med[c + ' 1']:4.2f}x)"
    print(f"{n:5d} {start:8.1f}ms {mib:7.2f} {cell('up'):>14} {cell('exec'):>14} {cell('status'):>14} {med['ls N']:7.2f}       "
          f"  {sc['status']:>6} {sc['ls']:>6} {sc['up']:>5} {sc['exec']:>5}")
    rows[n] = (med, m)
    if "status C" in med:
        print(f"{'':>5} {'COMPARE_BIN':>17} {med['up C']:14.2f} {med['exec C']:14.2f} {med['status C']:14.2f} {med['ls C']:7.2f}       "
              f"  {sc['status_C']:>6} {sc['ls_C']:>6} {sc['up_C']:>5} {sc['exec_C']:>5}")
n = steps[-1]
med = rows[n][0]
def verdict(ok): return "met" if ok else "MISSED"
print()
print(f"goals at {n} environments:")
print(f"  warm berth up {med['up N']:.2f} ms (< 10 ms: {verdict(med['up N'] < 10)})")
print(f"  berth exec -- true {med['exec N'] / med['exec 1']:.2f}x one environment's (<= 1.1x: {verdict(med['exec N'] / med['exec 1'] <= 1.1)})")
print(f"  berth status {med['status N'] / med['status 1']:.2f}x one environment's (<= 1.1x: {verdict(med['status N'] / med['status 1'] <= 1.1)})")
print(f"  berth ls of {n}: {med['ls N']:.1f} ms (< 100 ms: {verdict(med['ls N'] < 100)})")
print(f"load average during the steps: {load}; teardown (destroy of all) took {down_ms} ms")
PY
echo
echo "berth: costs as environments grow"
host_report
echo
cat "$W/table.txt"
echo "  after destroy: berth cgroup dirs $before_cg -> $after_cg, mounts under the bench dir" \
  "$before_mounts -> $after_mounts, processes $before_procs -> $after_procs, bridge berthscale" \
  "$bridge_left, environment folders $envs_left"
leftover=$(( after_cg - before_cg + after_mounts - before_mounts + after_procs - before_procs + bridge_left + envs_left ))
[ "$leftover" = 0 ] || { echo "bench: resources left after destroy (see above)" >&2; exit 1; }
echo "  -> nothing left"

#!/usr/bin/env bash
# `berth run` benchmarks (issues 7, 17), against peer tools measured in the same run:
#  1. `berth run -- true` end to end from a cached image (fresh writable layer, start, run,
#     tear down) vs `crun run` of /bin/true on the same rootfs (and bwrap, for reference):
#     with isolated networking as the only environment (bridge and NAT made by a run and
#     removed 0.5 s after the last one, by its detached child), with the bridge kept up by
#     another environment, and with network "none"; and (network none) each run right after
#     one that wrote 20,000 files into its writable layer;
#  2. SEQ (default 100) sequential `berth run -- true`: berth's peak RSS, mount count, berth
#     cgroup dirs, environment dirs and disk use of BERTH_HOME must not grow (first/last).
# Targets are reported, not asserted: the script fails only when something does not work.
# Needs root, crun, bwrap (bubblewrap), busybox-static, jq, python3, GNU time.
# Commands are timed interleaved (bench/interleave.py), so load from other work on the machine
# hits berth and its peers alike.
#  3. CPU time and page faults of the whole process tree of one `berth run -- true` and one
#     `crun run` (perf stat, when perf is installed): the comparison that load leaves alone.
# Usage: bench/run.sh        RUNS=30 (rounds), SEQ=100 (sequential runs), CPU_RUNS=15
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-30}
SEQ=${SEQ:-100}
CPU_RUNS=${CPU_RUNS:-15}
need /usr/bin/time
bench_setup

P=$W/proj
project "$P" bench-run
# The same with `[network] mode = "none"` (loopback only, as crun's default spec has).
PN=$W/proj-none
project "$PN" bench-run-none '[network]
mode = "none"
'
# An environment kept up beside the runs, so that berth's bridge stays (see below).
PK=$W/proj-keeper
project "$PK" bench-keeper
B_TRUE=$(crun_bundle true '["/bin/true"]')
# The first run imports the rootfs as a layer (not measured).
"$BERTH" -C "$P" -q run -- true
"$BERTH" -C "$PN" -q run -- true

crun_ns_start
# Back to back and each alone, as in container.sh (see bench/README.md). Isolated
# networking (the default) as the only environment: a run that finds no bridge makes it and
# its NAT table, and the last run's detached child removes them 0.5 s after it (runs closer
# together use the idle bridge). Then the same while another environment keeps the bridge up.
for mode in b2b alone; do
  if [ $mode = b2b ]; then pause=0; else pause=0.1; fi
  echo "== berth run -- true vs crun run, bwrap ($mode, $RUNS interleaved rounds)" >&2
  PAUSE=$pause interleave "$W/run-$mode.json" \
    "$(spec "berth run -- true" host "" "$BERTH -C $P -q run -- true")" \
    "$(spec "berth run -- true (network none)" host "" "$BERTH -C $PN -q run -- true")" \
    "$(spec "crun run" ns "" "crun run -b $B_TRUE bench-true-$$")" \
    "$(spec "bwrap" host "" "bwrap --unshare-all --ro-bind $ROOTFS / --proc /proc --dev /dev /bin/true")"
done
# In a row: each command 5 times in a row per round (the first untimed), as a test loop of
# one tool runs them: each timed run follows the same command, and meets what that one left
# running (berth's removal child, the kernel's cleanup of the namespaces).
echo "== berth run -- true vs crun run, 5 in a row ($RUNS interleaved rounds)" >&2
PAUSE=0 IN_A_ROW=5 interleave "$W/run-row.json" \
  "$(spec "berth run -- true" host "" "$BERTH -C $P -q run -- true")" \
  "$(spec "berth run -- true (network none)" host "" "$BERTH -C $PN -q run -- true")" \
  "$(spec "crun run" ns "" "crun run -b $B_TRUE bench-true-$$")"
on_exit "$BERTH -C $PK -q down -t 1"
"$BERTH" -C "$PK" -q up
for mode in b2b alone; do
  if [ $mode = b2b ]; then pause=0; else pause=0.1; fi
  echo "== berth run -- true with the bridge kept up by another environment ($mode, $RUNS interleaved rounds)" >&2
  PAUSE=$pause interleave "$W/kept-$mode.json" \
    "$(spec "berth run -- true (bridge kept)" host "" "$BERTH -C $P -q run -- true")" \
    "$(spec "crun run (same rounds)" ns "" "crun run -b $B_TRUE bench-true-$$")"
done
echo "== berth run -- true with the bridge kept up by another environment, 5 in a row ($RUNS interleaved rounds)" >&2
PAUSE=0 IN_A_ROW=5 interleave "$W/kept-row.json" \
  "$(spec "berth run -- true (bridge kept)" host "" "$BERTH -C $P -q run -- true")" \
  "$(spec "crun run (same rounds)" ns "" "crun run -b $B_TRUE bench-true-$$")"
"$BERTH" -C "$PK" -q down

# CPU time and page faults of the whole process tree (perf stat, inherited by children), which
# load on the machine does not change much, unlike wall times: berth's detached removal of the
# run's folder, and of the bridge it left idle (0.5 s later), is waited for (0.8 s) and counted;
# the cost of the wrappers is subtracted.
: > "$W/cpu.txt"
if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
  echo "== CPU time of berth run and crun run (perf stat -r $CPU_RUNS)" >&2
  cpu() { # cpu LABEL CMD…: "LABEL ms faults switches", means of CPU_RUNS runs
    local label=$1
    shift
    perf stat -x, -r "$CPU_RUNS" -e task-clock,page-faults,context-switches -- "$@" 2>&1 >/dev/null |
      awk -F, -v l="$label" '$3 ~ /^task-clock/ {t=$1} $3 ~ /^page-faults/ {f=$1} $3 ~ /^context-switches/ {c=$1}
        END {printf "%s %.2f %.0f %.0f\n", l, t, f, c}'
  }
  {
    cpu berth-wrap sh -c "sleep 0.8"
    cpu berth-isolated sh -c "$BERTH -C $P -q run -- true; sleep 0.8"
    cpu berth-none sh -c "$BERTH -C $PN -q run -- true; sleep 0.8"
    cpu crun-wrap nsenter --mount="$CRUN_NS" true
    cpu crun nsenter --mount="$CRUN_NS" crun run -b "$B_TRUE" "bench-cpu-$$"
  } > "$W/cpu.txt"
else
  echo "== perf is missing or not permitted: no CPU time section (apt-get install linux-perf)" >&2
fi

# After a big run: each timed run follows (untimed) one that wrote 20,000 files into its
# writable layer and whose removal deleted them, as a test loop's `npm ci` run does. ext4
# without a journal steps over recently freed inodes one by one wherever it creates files
# (runtime/src/host/dir_spread.rs); crun's peer step deletes 20,000 files on the same
# filesystem (its own state lives on /run). The last timed section: what it deletes would
# weigh on the sections after it.
cat > "$W/after-big-berth" <<SH
#!/bin/sh
set -e
"$BERTH" -C "$PN" -q run -- sh -c 'mkdir /w && cd /w && seq 20000 | xargs touch'
for _ in \$(seq 1000); do
  busy=0
  for f in "$BERTH_HOME"/envs/*-run-* "$BERTH_HOME"/tmp/run-removal-*; do
    if [ -e "\$f" ]; then busy=1; fi
  done
  if [ \$busy = 0 ]; then exit 0; fi
  sleep 0.01
done
echo "bench: the big run's removal took more than 10 s" >&2
exit 1
SH
cat > "$W/after-big-crun" <<SH
#!/bin/sh
set -e
mkdir "$W/big" && cd "$W/big" && seq 20000 | xargs touch && cd / && rm -rf "$W/big"
SH
chmod +x "$W/after-big-berth" "$W/after-big-crun"
echo "== berth run -- true after a run that wrote 20,000 files ($RUNS interleaved rounds)" >&2
PAUSE=0 interleave "$W/big-b2b.json" \
  "$(spec "berth run -- true (after a big run)" host "$W/after-big-berth" "$BERTH -C $PN -q run -- true")" \
  "$(spec "crun run (after 20,000 files deleted)" ns "$W/after-big-crun" "crun run -b $B_TRUE bench-true-$$")"

echo "== $SEQ sequential berth run -- true" >&2
sample() { # peak-RSS-KiB all-mounts bench-mounts cgroup-dirs env-dirs home-KiB
  echo "$1 $(wc -l < /proc/self/mountinfo) $(count_mounts) $(cg_dirs | wc -l) $(find "$BERTH_HOME/envs" -mindepth 1 -maxdepth 1 | wc -l) $(du -sk "$BERTH_HOME" | cut -f1)"
}
: > "$W/seq.txt"
for i in $(seq "$SEQ"); do
  /usr/bin/time -f %M -o "$W/rss" "$BERTH" -C "$P" -q run -- true
  # A run's environment is stopped (its folder locked in envs/ meanwhile) and its folder
  # removed by a detached child after berth returns: count what stays.
  wait_background_teardowns
  sample "$(cat "$W/rss")" >> "$W/seq.txt"
done

python3 - "$W" "$RUNS" "$SEQ" <<'PY' > "$W/table.txt"
import json, sys
w, runs, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
med = {}
for mode in ("b2b", "row", "alone"):
    for f in ("run", "kept", "big"):
        if f == "big" and mode != "b2b":
            continue
        for r in json.load(open(f"{w}/{f}-{mode}.json"))["results"]:
            med.setdefault(r["command"], {})[mode] = (r["median"] * 1000, r["stddev"] * 1000)
print(f"berth run end to end: {runs} interleaved rounds; median (and stddev), ms")
print("  back to back: one command right after the other (each round in the same order);")
print("  in a row: each command 5 times in a row, the last 4 timed; alone: 0.1 s of quiet before each")
print(f"  {'command':40} {'back to back':>16} {'in a row':>16} {'alone':>16}")
cell = lambda m, x: '%8.2f (%5.2f)' % m[x] if x in m else '-'
for k, m in med.items():
    print(f"  {k:40} {cell(m, 'b2b'):>16} {cell(m, 'row'):>16} {cell(m, 'alone'):>16}")
def ratio(label, a, b, target=1.0):
    r = [med[a][x][0] / med[b][x][0] for x in ("b2b", "row", "alone")]
    verdict = "/".join("met" if x <= target else "MISSED" for x in r)
    print(f"  {label:58} {r[0]:5.2f}x back to back, {r[1]:5.2f}x in a row, {r[2]:5.2f}x alone  target <= {target}x ({verdict})")
ratio("berth run / crun run (isolated network, only environment)", "berth run -- true", "crun run")
ratio("berth run / crun run (isolated network, bridge kept)", "berth run -- true (bridge kept)", "crun run (same rounds)")
ratio("berth run / crun run (network none, as crun's spec)", "berth run -- true (network none)", "crun run")
rg = med["berth run -- true (after a big run)"]["b2b"][0] / med["crun run (after 20,000 files deleted)"]["b2b"][0]
print(f"  {'berth run / crun run (network none, after a big run)':58} {rg:5.2f}x  target <= 1.0x ({'met' if rg <= 1.0 else 'MISSED'})")
rb = [med["berth run -- true"][x][0] / med["bwrap"][x][0] for x in ("b2b", "alone")]
print(f"  {'berth run / bwrap (for reference)':58} {rb[0]:5.2f}x back to back, {rb[1]:5.2f}x alone")
cpu = {l.split()[0]: list(map(float, l.split()[1:])) for l in open(f"{w}/cpu.txt") if l.strip()}
if cpu:
    print()
    print("CPU time of the whole process tree (perf stat, mean; wrappers subtracted)")
    print(f"  {'command':40} {'CPU ms':>8} {'page faults':>12} {'ctx switches':>13}")
    net = {}
    for k, wrap in (("berth-isolated", "berth-wrap"), ("berth-none", "berth-wrap"), ("crun", "crun-wrap")):
        net[k] = [a - b for a, b in zip(cpu[k], cpu[wrap])]
        print(f"  {k:40} {net[k][0]:8.2f} {net[k][1]:12.0f} {net[k][2]:13.0f}")
    for k in ("berth-isolated", "berth-none"):
        r = net[k][0] / net["crun"][0]
        print(f"  {k + ' / crun, CPU time':58} {r:5.2f}x  target <= 1.0x ({'met' if r <= 1.0 else 'MISSED'})")
rows = [list(map(int, l.split())) for l in open(f"{w}/seq.txt")]
print()
print(f"{seq} sequential `berth run -- true`: first / last / max (grows = last > first)")
names = ["peak RSS of berth (KiB)", "host mountinfo lines (all)*", "mounts under the bench dir", "berth cgroup dirs",
         "environment dirs", "disk use of BERTH_HOME (KiB)"]
grew = False
for i, n in enumerate(names):
    col = [r[i] for r in rows]
    g = col[-1] > col[0]
    # Peak RSS varies by a few pages from run to run; count real growth only.
    if i == 0:
        g = col[-1] > col[0] * 1.1
    if i == 1:
        g = False  # other activity on the machine moves this one; shown for information
    grew |= g
    print(f"  {n:32} {col[0]:>8} {col[-1]:>8} {max(col):>8}  {'GREW' if g else 'no growth'}")
print(f"  target: no growth ({'met' if not grew else 'MISSED'})")
print("  * includes mounts made by anything else on the machine; not part of the verdict")
PY
echo
echo "berth run benchmark"
host_report
echo
cat "$W/table.txt"

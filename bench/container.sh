#!/usr/bin/env bash
# Container backend benchmarks, each against peer tools measured in the same run (issue 5):
#  1. warm `berth up` (nothing changed) and `berth exec -- true` vs `crun exec` into a
#     running crun container;
#  2. cold start of an already-built environment: `berth up` after `berth down` vs
#     `crun run` of /bin/true and `bwrap --unshare-all` of /bin/true on the same rootfs,
#     plus a syscall breakdown of one cold `berth up`;
#  3. density: N idle environments of one image; memory and disk per environment; all torn
#     down again and checked for leftovers (mounts, cgroups, processes).
# Targets are reported, not asserted: the script fails only when something does not work.
# Needs root, crun, bwrap (bubblewrap), busybox-static, jq, python3, strace.
# Commands are timed interleaved (bench/interleave.py), so load from other work on the machine
# hits berth and its peers alike.
# Usage: bench/container.sh        RUNS=30 (rounds), DENSITY=50 (environments)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-30}
DENSITY=${DENSITY:-50}
bench_setup

echo "== setup: projects and crun bundles over one busybox rootfs" >&2
P=$W/proj
project "$P" bench
PP=$W/proj-privileged
project "$PP" bench-priv
B_TRUE=$(crun_bundle true '["/bin/true"]')
B_SLEEP=$(crun_bundle sleep '["/bin/sleep", "1000000"]')
on_exit "in_crun_ns crun delete -f bench-sleep-$$"
on_exit "$BERTH -C $P -q down -t 1; $BERTH -C $PP -q down -t 1"
# First `up`s import the rootfs as a layer (not measured).
"$BERTH" -C "$P" -q up
"$BERTH" -C "$PP" -q up --privileged
in_crun_ns crun run -d -b "$B_SLEEP" "bench-sleep-$$" </dev/null >/dev/null 2>&1

# Issue 17's cold cycle: a built, stopped environment started, used once and stopped again
# (`sh` adds about a millisecond to berth's side).
printf '%s -C %s -q up && %s -C %s exec -- true && %s -C %s -q down\n' \
  "$BERTH" "$P" "$BERTH" "$P" "$BERTH" "$P" > "$W/cycle.sh"

# The cold rows' preparation: `berth down`, then a wait for its background child (it holds the
# environment's lock while it removes cgroups and network after `down` returned), so that the
# timed `up` measures a start from a stopped environment, not that teardown's tail.
printf '#!/bin/sh\n"$1" -C "$2" -q down || exit\nfor l in "$BERTH_HOME"/envs/*/lock; do flock -s "$l" true; done\n' \
  > "$W/settle.sh"

crun_ns_start
# The user-namespace start measured with crun as well, for a like-for-like ratio.
mkdir -p "$BUNDLES/true-userns"
jq '.linux.namespaces += [{"type": "user"}]
    | .linux.uidMappings = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    | .linux.gidMappings = [{"containerID": 0, "hostID": 100000, "size": 65536}]' \
  "$B_TRUE/config.json" > "$BUNDLES/true-userns/config.json"

# Two passes: commands back to back (PAUSE=0), and each alone (PAUSE=0.1 s between
# commands). They differ because moving a process into a v1 cgroup through cgroup.procs waits
# for an RCU grace period unless another such move happened just before.
for mode in b2b alone; do
  if [ $mode = b2b ]; then pause=0; else pause=0.1; fi
  echo "== warm ($mode): berth up (no change), berth exec vs crun exec ($RUNS interleaved rounds)" >&2
  PAUSE=$pause interleave "$W/warm-$mode.json" \
    "$(spec "berth up (no change)" host "" "$BERTH -C $P -q up")" \
    "$(spec "berth exec -- true" host "" "$BERTH -C $P exec -- true")" \
    "$(spec "berth exec -- true (privileged env)" host "" "$BERTH -C $PP exec -- true")" \
    "$(spec "crun exec" ns "" "crun exec bench-sleep-$$ /bin/true")"
  echo "== cold ($mode): berth up after berth down vs crun run, bwrap ($RUNS interleaved rounds)" >&2
  PAUSE=$pause interleave "$W/cold-$mode.json" \
    "$(spec "berth up (cold)" host "sh $W/settle.sh $BERTH $P" "$BERTH -C $P -q up")" \
    "$(spec "berth up + exec -- true + down (cold)" host "sh $W/settle.sh $BERTH $P" "sh $W/cycle.sh")" \
    "$(spec "berth up --privileged (cold)" host "sh $W/settle.sh $BERTH $PP" "$BERTH -C $PP -q up --privileged")" \
    "$(spec "crun run" ns "" "crun run -b $B_TRUE bench-true-$$")" \
    "$(spec "crun run (user namespace)" ns "" "crun run -b $BUNDLES/true-userns bench-true-u-$$")" \
    "$(spec "bwrap" host "" "bwrap --unshare-all --ro-bind $ROOTFS / --proc /proc --dev /dev /bin/true")" \
    "$(spec "/bin/true" host "" "/bin/true")"
  "$BERTH" -C "$PP" -q up --privileged
done
"$BERTH" -C "$P" -q down
"$BERTH" -C "$PP" -q down

echo "== breakdown of one cold berth up (strace -f)" >&2
# The same start as the timed cold rows: after settle.sh (`down`, then its background child's
# end), with the bridge still up. (Waiting for every background teardown, the bridge's
# removal 0.5 s later included, made it a first start instead.)
# strace -f would wait for the supervisor (a daemon) to exit: the traced shell stops strace
# once `berth up` returns (strace writes its trace and exits 143 on SIGTERM).
traced_up() {
  sh "$W/settle.sh" "$BERTH" "$P"
  strace -I2 -f "$@" sh -c '"$0" -C "$1" -q up; kill -TERM $PPID' "$BERTH" "$P" 2>"$W/strace.err" || true
}
# Only the calls below stop the process (--seccomp-bpf), so strace adds little time. The root
# is mounted through the new mount API (fsmount), bind mounts through mount.
traced_up --seccomp-bpf -tt -T -o "$W/trace.txt" \
  -e trace=execve,fsync,fdatasync,rename,mkdir,mount,fsmount,move_mount,pivot_root,write,wait4,exit_group
"$BERTH" -C "$P" -q down

echo "== density: $DENSITY idle environments of one image" >&2
wait_background_teardowns
before_cg=$(cg_dirs | wc -l)
before_mounts=$(count_mounts)
before_procs=$(count_procs)
avail_before=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
for i in $(seq "$DENSITY"); do project "$W/d/$i" "dens-$i"; done
on_exit "for i in \$(seq $DENSITY); do $BERTH -C $W/d/\$i -q down -t 1; done"
t0=$(date +%s%N)
for i in $(seq "$DENSITY"); do "$BERTH" -C "$W/d/$i" -q up; done
t1=$(date +%s%N)
# berth commands look at every environment (garbage collection of abandoned `berth run`s):
# the warm no-op `up` and `exec` again, with all of them present.
RUNS=10 PAUSE=0 interleave "$W/warm-dense.json" \
  "$(spec "berth up (no change)" host "" "$BERTH -C $W/d/1 -q up")" \
  "$(spec "berth exec -- true" host "" "$BERTH -C $W/d/1 exec -- true")"
avail_after=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
python3 - "$BERTH_HOME" "$DENSITY" "$W/density.json" "$avail_before" "$avail_after" "$(dirname "$0")" <<'PY'
import json, os, sys, subprocess
home, n, out, av0, av1 = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, sys.argv[6])
from supervisor_memory import measure
m = measure(home)
envs = os.path.join(home, "envs")
disk = []
for e in sorted(os.listdir(envs)):
    kb = int(subprocess.run(["du", "-sk", os.path.join(envs, e)], capture_output=True, text=True).stdout.split()[0])
    up = os.path.join(envs, e, "upper")
    ukb = int(subprocess.run(["du", "-sk", up], capture_output=True, text=True).stdout.split()[0]) if os.path.exists(up) else 0
    disk.append((kb, ukb))
layers = int(subprocess.run(["du", "-sk", os.path.join(home, "layers")], capture_output=True, text=True).stdout.split()[0])
json.dump({**m, "avail_drop_kib": av0 - av1, "env_disk_kib": [d[0] for d in disk],
           "upper_kib": [d[1] for d in disk], "layers_kib": layers}, open(out, "w"))
PY
running_cg=$(cg_dirs | wc -l)
t2=$(date +%s%N)
for i in $(seq "$DENSITY"); do "$BERTH" -C "$W/d/$i" -q down; done
t3=$(date +%s%N)
# Each `down` returns once the processes are gone; its child removes cgroups and network.
wait_background_teardowns
t4=$(date +%s%N)
after_cg=$(cg_dirs | wc -l)
after_mounts=$(count_mounts)
after_procs=$(count_procs)

# ---------------------------------------------------------------------------------------
python3 - "$W" "$RUNS" "$DENSITY" "$(( (t1 - t0) / 1000000 ))" "$(( (t3 - t2) / 1000000 ))" "$(( (t4 - t3) / 1000000 ))" \
  "$before_cg $running_cg $after_cg" "$before_mounts $after_mounts" "$before_procs $after_procs" \
  <<'PY' > "$W/table.txt"
import json, sys, re
w, runs, n, up_ms, down_ms, rest_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cg0, cg1, cg2 = map(int, sys.argv[7].split())
m0, m1 = map(int, sys.argv[8].split())
p0, p1 = map(int, sys.argv[9].split())
med = {}
for mode in ("b2b", "alone"):
    for f in ("warm", "cold"):
        for r in json.load(open(f"{w}/{f}-{mode}.json"))["results"]:
            med.setdefault(r["command"], {})[mode] = (r["median"] * 1000, r["stddev"] * 1000)
def v(k, mode): return med.get(k, {}).get(mode, (float("nan"), 0))[0]
print(f"start and exec: {runs} interleaved rounds; median (and stddev), ms")
print("  back to back: one command right after the other; alone: 0.1 s of quiet before each")
print(f"  {'command':40} {'back to back':>16} {'alone':>16}")
for k, m in med.items():
    cells = ["%8.2f (%5.2f)" % m[x] if x in m else "" for x in ("b2b", "alone")]
    print(f"  {k:40} {cells[0]:>16} {cells[1]:>16}")
print()
print(f"  {'comparison':50} {'back to back':>12} {'alone':>8}  target")
def row(label, a, b, target, ok):
    r = [v(a, x) / v(b, x) for x in ("b2b", "alone")]
    verdict = "/".join("met" if ok(x) else "MISSED" for x in r)
    print(f"  {label:50} {r[0]:11.2f}x {r[1]:7.2f}x  {target} ({verdict})")
w0, w1 = v("berth up (no change)", "b2b"), v("berth up (no change)", "alone")
print(f"  {'warm berth up (no change), ms':50} {w0:10.2f}ms {w1:6.2f}ms  < 10 ms ({'met' if w0 < 10 else 'MISSED'}/{'met' if w1 < 10 else 'MISSED'})")
row("berth exec / crun exec", "berth exec -- true", "crun exec", "<= 1.5x", lambda r: r <= 1.5)
row("cold berth up / crun run", "berth up (cold)", "crun run", "<= 1.0x", lambda r: r <= 1.0)
row("cold berth up / crun run (both in a user ns)", "berth up (cold)", "crun run (user namespace)", "<= 1.0x", lambda r: r <= 1.0)
row("cold berth up + exec -- true + down / crun run", "berth up + exec -- true + down (cold)", "crun run", "<= 1.0x", lambda r: r <= 1.0)
row("cold berth up --privileged / crun run (no user ns)", "berth up --privileged (cold)", "crun run", "<= 1.2x", lambda r: r <= 1.2)
print(f"  {'cold berth up / bwrap --unshare-all':50} {v('berth up (cold)', 'b2b') / v('bwrap', 'b2b'):11.2f}x "
      f"{v('berth up (cold)', 'alone') / v('bwrap', 'alone'):7.2f}x  (for reference)")
print()
print("timeline of one cold `berth up` (strace -f --seccomp-bpf: ms since start, + since the line above;")
print("  milestones, and every traced call that blocked for more than 1 ms)")
events = []
calls = {}
for l in open(f"{w}/trace.txt"):
    m = re.match(r"(\d+)\s+(\d+):(\d+):(\d+\.\d+) (.*)", l)
    if not m:
        continue
    t = (int(m[2]) * 3600 + int(m[3]) * 60 + float(m[4])) * 1000
    body = m[5]
    dur = re.search(r"<(\d+\.\d+)>$", body)
    dur = float(dur[1]) * 1000 if dur else 0.0
    pid = int(m[1])
    if "<unfinished ...>" in body:
        calls[pid] = (t, body.split("<unfinished")[0])
        continue
    if body.startswith("<... ") and pid in calls:
        t, head = calls.pop(pid)
        body = head + " ... " + body.split("resumed>", 1)[-1]
    events.append((t, pid, body, dur))
t0 = events[0][0] if events else 0
marks = [
    (r'execve\("[^"]*", \["[^"]*", "-C"', "berth up starts"),
    (r'rename\(.*/state\.json"', "state.json: starting (plan read, image resolved, old state cleaned)"),
    (r'mkdir\("/sys/fs/cgroup', "cgroups being created"),
    (r'write\(\d+, "0", 1\)', "launcher moves into its cgroups"),
    (r'execve\("/proc/self/(exe|fd/)', "launcher exec'd (berth __supervisor)"),
    (r'(mount\("overlay"|fsmount\()', "overlay root mounted"),
    (r'write\(\d+, "\{\\"event\\":\\"pid', "supervisor forked, pid reported"),
    (r'pivot_root\(', "supervisor: pivot_root"),
    (r'write\(\d+, "\{\\"event\\":\\"ready', "supervisor ready"),
]
berth_pid = next((pid for t, pid, e, d in events if re.match(marks[0][0], e)), None)
seen = set()
rows = []
for t, pid, e, dur in events:
    for pat, label in marks:
        if label not in seen and re.match(pat, e):
            seen.add(label)
            rows.append((t - t0, dur, pid, label))
    if pid == berth_pid and e.startswith("+++ exited"):
        rows.append((t - t0, 0.0, pid, "berth up returns"))
    if dur > 1.0 and not e.startswith(("wait4", "execve")):
        rows.append((t - t0, dur, pid, "slow: " + e[:70]))
rows.sort()
if not rows:
    # Say why rather than print an empty timeline.
    err = open(f"{w}/strace.err").read().strip().splitlines()[-3:]
    print(f"  (no event: {len(events)} traced calls parsed from {w}/trace.txt; strace said: {' / '.join(err) or 'nothing'})")
prev = rows[0][0] if rows else 0
for start, dur, pid, label in rows:
    print(f"  {start:7.2f} (+{start - prev:6.2f})  pid {pid:<7} {label}" + (f"  [{dur:.2f} ms]" if dur > 1.0 else ""))
    prev = start
print()

d = json.load(open(f"{w}/density.json"))
mib = lambda k: k / 1024
print()
print(f"density: {n} idle environments of one image (started one after another in {up_ms} ms, {up_ms / n:.1f} ms each; stopped in {down_ms} ms, their background teardown done {rest_ms} ms later)")
print(f"  supervisor processes found: {d['supervisors']}, memory cgroups: {d['cgroups']}")
print(f"  per environment: host RSS {mib(d['rss_kib'] / n):.2f} MiB, PSS {mib(d['pss_kib'] / n):.2f} MiB, "
      f"cgroup usage {mib(d['cg_usage_kib'] / n):.2f} MiB (anon {mib(d['cg_anon_kib'] / n):.2f} MiB), "
      f"MemAvailable drop {mib(d['avail_drop_kib'] / n):.2f} MiB (noisy)")
# Memory an idle environment costs: everything charged to its cgroup (the supervisor's own
# pages, page tables, kernel objects, page cache it touched) plus the supervisor's share of
# pages charged elsewhere (berth's binary, shared by all): PSS minus its anonymous memory.
per_env = (d['cg_usage_kib'] + max(0, d['pss_kib'] - d['cg_anon_kib'])) / n
bound = (d["rss_kib"] + d["cg_usage_kib"]) / n
print(f"  memory per idle environment: {mib(per_env):.2f} MiB (cgroup usage + PSS not charged to it)  "
      f"target < 2 MiB ({'met' if per_env < 2048 else 'MISSED'})")
print(f"  upper bound, host RSS + cgroup usage (counts the supervisor twice and berth's shared binary "
      f"pages once per environment): {mib(bound):.2f} MiB ({'met' if bound < 2048 else 'MISSED'})")
dense = {r["command"]: r["median"] * 1000 for r in json.load(open(f"{w}/warm-dense.json"))["results"]}
print(f"  with all {n} present (back to back, median of 10): warm berth up (no change) "
      f"{dense['berth up (no change)']:.2f} ms (target < 10 ms: {'met' if dense['berth up (no change)'] < 10 else 'MISSED'}), "
      f"berth exec -- true {dense['berth exec -- true']:.2f} ms")
disk, upper = d["env_disk_kib"], d["upper_kib"]
med_disk = sorted(disk)[len(disk) // 2] if disk else 0
print(f"  disk per environment (du of envs/<id>): median {med_disk} KiB, max {max(disk, default=0)} KiB; "
      f"its writable layer (upper/): max {max(upper, default=0)} KiB; shared layers: {d['layers_kib']} KiB once "
      f"-> {'only its writable layer and state files' if max(disk, default=0) < d['layers_kib'] / 2 else 'MORE than the writable layer'}")
print(f"  after all down: berth cgroup dirs {cg0} before / {cg1} running / {cg2} after; "
      f"mounts under the bench dir {m0} / {m1}; processes {p0} / {p1} "
      f"-> {'nothing left' if cg2 == cg0 and m1 == m0 and p1 == p0 else 'LEFTOVERS'}")
PY
echo
echo "berth container benchmark"
host_report
echo
cat "$W/table.txt"
leftover=$(( after_cg - before_cg + after_mounts - before_mounts + after_procs - before_procs ))
[ "$leftover" = 0 ] || { echo "bench: resources left after down (see above)" >&2; exit 1; }

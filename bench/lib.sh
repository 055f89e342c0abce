# Shared parts of bench/container.sh and bench/run.sh (sourced, not run).
#
# After `bench_setup`: $BERTH (the release binary, built; or the one BERTH=path names), $W
# (scratch dir, removed on exit), BERTH_HOME=$W/home (exported), $ROOTFS (busybox rootfs), $BUNDLES (crun bundles) and the
# helpers below. Scripts add their own cleanup with `on_exit CMD…` (run in reverse order).

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EXIT_HOOKS=()

on_exit() { EXIT_HOOKS+=("$*"); }

bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local hook_no
  for ((hook_no = ${#EXIT_HOOKS[@]} - 1; hook_no >= 0; hook_no--)); do
    (eval "${EXIT_HOOKS[$hook_no]}") >/dev/null 2>&1 || true
  done
  if [ -n "${W:-}" ] && [ -d "$W" ]; then
    # Never remove a tree that still has something mounted under it.
    if grep -q " $W" /proc/self/mountinfo; then
      echo "bench: mounts left under $W; not removing it" >&2
      rc=1
    else
      rm -rf "$W"
    fi
  fi
  bench_cgroup_remove
  exit "$rc"
}

need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "bench: $t is missing (apt-get install $t)" >&2; exit 1; }
  done
}

bench_setup() {
  [ "$(id -u)" = 0 ] || { echo "bench: run as root (crun and cgroups need it)" >&2; exit 1; }
  need crun bwrap unshare python3 jq
  if [ -n "${BERTH:-}" ]; then
    # A given binary (BERTH=path) is used as it is.
    BERTH=$(realpath "$BERTH")
  else
    (cd "$BENCH_ROOT" && cargo build --release -p berth-cli) >&2
    BERTH=$BENCH_ROOT/target/release/berth
  fi
  W=$(mktemp -d /var/tmp/berth-bench.XXXXXX)
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  # The environments' root is an unprivileged host id (user namespace): it must be able to
  # reach the layers and its writable layer through this folder.
  chmod 755 "$W"
  export BERTH_HOME=$W/home
  ROOTFS=$W/rootfs
  BUNDLES=$W/bundles
  "$BENCH_ROOT/scripts/make-busybox-rootfs" "$ROOTFS"
  # A `rootfs:` base changed less than 3 s ago (runtime/src/image/tree_stamp.rs, RACY_MARGIN)
  # is read and hashed whole on every `up` and `run`, and its stamp is not kept: without this
  # wait the first seconds of every script timed that (+5 ms per start here), not the start
  # from an unchanged base that a project sees.
  sleep 3.1
  mkdir -p "$BUNDLES"
  bench_cgroup
}

# in_crun_ns CMD…: runs CMD in a private mount namespace with the cgroup2 mount hidden
# (crun 1.8 refuses this host's hybrid cgroup layout otherwise: "cgroups in hybrid mode not
# supported"). Harmless on hosts without that mount.
HIDE_CGROUP2='if [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then umount /sys/fs/cgroup/unified; fi'
in_crun_ns() {
  unshare -m --propagation private sh -c "$HIDE_CGROUP2"'; exec "$@"' in_crun_ns "$@"
}

# crun_ns_start: keeps such a namespace open (a sleeping process) for bench/interleave.py,
# which runs crun inside it through setns; sets $CRUN_NS to its /proc/<pid>/ns/mnt.
crun_ns_start() {
  unshare -m --propagation private sh -c "$HIDE_CGROUP2"'; exec sleep 1000000' &
  local pid=$! i
  on_exit "kill $pid"
  for i in $(seq 100); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sleep ] && break
    sleep 0.05
  done
  CRUN_NS=/proc/$pid/ns/mnt
}

# spec NAME ns|host PREPARE CMD: one command for bench/interleave.py (PREPARE and CMD are
# split on spaces; PREPARE may be empty).
spec() {
  jq -nc --arg n "$1" --arg ns "$2" --arg p "$3" --arg c "$4" \
    '{name: $n, ns: ($ns == "ns"), prepare: (if $p == "" then null else ($p | split(" ")) end), cmd: ($c | split(" "))}'
}

# interleave OUT.json SPEC…: times the commands interleaved, $RUNS rounds after $WARMUP,
# $PAUSE seconds apart (default 0.1: each start measured as if alone; see interleave.py),
# each command $IN_A_ROW times in a row per round (default 1; the first of a row untimed).
interleave() {
  local out=$1
  shift
  python3 "$BENCH_ROOT/bench/interleave.py" --runs "$RUNS" --warmup "${WARMUP:-3}" \
    --pause "${PAUSE:-0.1}" --in-a-row "${IN_A_ROW:-1}" --json "$out" --mntns "$CRUN_NS" "$@"
}

# crun_bundle NAME ARGS_JSON: a crun bundle over $ROOTFS (no terminal) running ARGS_JSON.
crun_bundle() {
  local b=$BUNDLES/$1
  mkdir -p "$b"
  (cd "$b" && crun spec)
  jq --arg root "$ROOTFS" --argjson args "$2" \
    '.process.terminal = false | .process.args = $args | .root.path = $root' \
    "$b/config.json" > "$b/config.json.new"
  mv "$b/config.json.new" "$b/config.json"
  echo "$b"
}

# project DIR NAME [EXTRA_TOML]: a berth project over $ROOTFS.
project() {
  mkdir -p "$1"
  printf 'name = "%s"\n[image]\nfrom = "rootfs:%s"\n%s' "$2" "$ROOTFS" "${3:-}" > "$1/berth.toml"
}

# bench_cgroup: moves this script into its own cgroup (v1 controllers berth uses), so that
# the environments it starts nest there and leftovers are counted without other berth users
# on the machine. On a cgroup v2 host the script stays where it is.
BENCH_CGROUPS=()
bench_cgroup() {
  [ -e /sys/fs/cgroup/cgroup.controllers ] && return 0
  local ctrls path c d table
  # Read the table once: /proc/self/cgroup changes as this shell moves.
  table=$(cat /proc/self/cgroup)
  while IFS=: read -r _ ctrls path; do
    for c in memory cpu cpuacct pids freezer; do
      case ",$ctrls," in *",$c,"*) ;; *) continue ;; esac
      [ -d "/sys/fs/cgroup/$c" ] || continue
      d=$(realpath "/sys/fs/cgroup/$c$path")/berth-bench-$$
      mkdir -p "$d"
      echo $$ > "$d/cgroup.procs"
      BENCH_CGROUPS+=("$d")
    done
  done <<< "$table"
}

# Leaves this script's cgroups and removes them, waiting (up to 10 s) for what still runs in
# them to end: a `berth run`'s detached removal process outlives the command that started it.
bench_cgroup_remove() {
  local d i
  for d in ${BENCH_CGROUPS[@]+"${BENCH_CGROUPS[@]}"}; do
    [ -d "$d" ] || continue
    echo $$ > "$(dirname "$d")/cgroup.procs" 2>/dev/null || true
    for i in $(seq 100); do
      find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$d" ] || break
      sleep 0.1
    done
    [ -d "$d" ] && echo "bench: $d is still in use; remove it with rmdir once its processes end" >&2
  done
  return 0
}

# cg_dirs: berth's environment cgroup dirs below this script's cgroups, one per line.
cg_dirs() {
  local d
  if [ ${#BENCH_CGROUPS[@]} -gt 0 ]; then
    for d in "${BENCH_CGROUPS[@]}"; do
      if [ -d "$d/berth" ]; then find "$d/berth" -mindepth 1 -maxdepth 1 -type d; fi
    done | sort -u
    return 0
  fi
  awk -F: '{ split($2, c, ","); ctrl = c[1]; sub("name=", "", ctrl);
             base = (ctrl == "") ? "/sys/fs/cgroup/unified" : "/sys/fs/cgroup/" ctrl;
             print base $3 "/berth" }' /proc/self/cgroup |
    while read -r d; do if [ -d "$d" ]; then find "$d" -mindepth 1 -maxdepth 1 -type d; fi; done | sort -u
}
count_mounts() { grep -c "$W" /proc/self/mountinfo || true; }
count_procs() { pgrep -fc -- "$W" || true; }

# wait_background_teardowns: waits (at most 2 s) while a berth process finishes a teardown
# after its command returned: a `berth run`'s removal process or a `berth down`'s child, each
# holding its environment's lock until it is done (then a run's folder `tmp/run-removal-*`
# goes), and, when it was the bridge's last user, removing the bridge after it was idle for
# half a second (its record lists no lease until then); then until such a child is gone (a
# `down` of a project under $W).
wait_background_teardowns() {
  local l _
  # flock's 1 is "held"; its 66 ("cannot open") is a folder moved away meanwhile (a run's
  # removal moves it to tmp/, which the next check sees).
  stopping() {
    local rc
    for l in "$BERTH_HOME"/envs/*/lock; do
      rc=0
      flock -n -s "$l" true 2>/dev/null || rc=$?
      [ "$rc" = 1 ] && return 0
    done
    return 1
  }
  bridge_idle() {
    grep -qs '"leases": \[\]' "/run/berth/net/${BERTH_BRIDGE:-berth0}/leases.json"
  }
  for _ in $(seq 200); do
    stopping || compgen -G "$BERTH_HOME/tmp/run-removal-*" >/dev/null || bridge_idle ||
      pgrep -f -- "$W/.* down( |$)" >/dev/null || return 0
    sleep 0.01
  done
}

# host_report: date, machine and load average for the report header.
host_report() {
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
  if [ -e /sys/fs/cgroup/cgroup.controllers ]; then echo "cgroups: v2"; else echo "cgroups: v1 (hybrid: $( [ -d /sys/fs/cgroup/unified ] && echo yes || echo no))"; fi
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
  echo "peers:   $(crun --version | head -1), $(bwrap --version)"
}

#!/usr/bin/env bash
# Issue 17's goals in one quiet run: every benchmark behind them, one after another (run.sh,
# container.sh, net.sh, the sync converge on three filesystems, scale.sh, the sync curve on
# tmpfs, images.sh), each
# against its peer in the same run, then one table of the goals, met or MISSED, from their
# output (bench/goals.py). Meant for a machine with nothing else running: the load average is
# printed beside every section, and the table says which sections ran above LOAD_MAX.
# Logs are kept in OUT (default /var/tmp/berth-goals-<date>), and can be summarized again with
# `bench/goals.py OUT`.
# Usage: bench/goals.sh            RUNS=20 (rounds of the interleaved timings), SYNC_ROUNDS=10,
#                                  SCALE_STEPS="1 10 100 1000", LOAD_MAX=3, OUT=dir,
#                                  ONLY="run container net sync scale synccurve images" (a subset)
# Needs what the scripts it runs need (see bench/README.md), root.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
SYNC_ROUNDS=${SYNC_ROUNDS:-10}
SCALE_STEPS=${SCALE_STEPS:-1 10 100 1000}
ONLY=${ONLY:-run container net sync scale synccurve images}
OUT=${OUT:-/var/tmp/berth-goals-$(date -u +%Y%m%dT%H%M)}
export LOAD_MAX=${LOAD_MAX:-3}
[ "$(id -u)" = 0 ] || { echo "goals: run as root (the benchmarks need it)" >&2; exit 1; }
mkdir -p "$OUT"
cargo build -q --release -p berth-cli
cargo build -q --release -p berth-runtime --example sync_bench --example net_bench

stamp() { echo "== $1 $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"; }
section() { # section NAME CMD…: runs CMD with its output in OUT/NAME.log, stamped
  local name=$1
  shift
  case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
  echo "goals: $name ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg)) -> $OUT/$name.log" >&2
  { stamp "$name"; "$@"; stamp end; } > "$OUT/$name.log" 2>&1 ||
    { echo "goals: $name failed, see $OUT/$name.log" >&2; exit 1; }
}

# The sync converge after a 10,000-file change, berth's engine against rsync, SYNC_ROUNDS rounds
# interleaved over a fresh ext4 image (with a journal), tmpfs and `/` (a folder under /var/tmp).
sync_rounds() {
  local img mnt r fs p d line
  img=$(mktemp /var/tmp/berth-goals-ext4.XXXXXX)
  mnt=$(mktemp -d /tmp/berth-goals-ext4-mnt.XXXXXX)
  # shellcheck disable=SC2064 # expanded now, on purpose
  trap "umount '$mnt' 2>/dev/null; rmdir '$mnt' 2>/dev/null; rm -f '$img'" EXIT
  truncate -s 2G "$img"
  mkfs.ext4 -q -F "$img"
  mount -o loop "$img" "$mnt"
  for r in $(seq 1 "$SYNC_ROUNDS"); do
    for fs in ext4 tmpfs root; do
      case $fs in ext4) p=$mnt ;; tmpfs) p=/dev/shm ;; root) p=/var/tmp ;; esac
      d=$(mktemp -d "$p/berth-goals-sync.XXXX")
      line=$(target/release/examples/sync_bench "$d/w" 5 2>&1 | grep "10,000-file change (")
      rm -rf "$d"
      echo "round $r fs $fs load $(cut -d' ' -f1 /proc/loadavg) :: $line"
    done
  done
  umount "$mnt"
  rmdir "$mnt"
  rm -f "$img"
  trap - EXIT
}

section run env RUNS="$RUNS" SEQ=50 CPU_RUNS=10 bench/run.sh
section container env RUNS="$RUNS" DENSITY=50 bench/container.sh
section net bench/net.sh 1024 1000
section sync sync_rounds
section scale env STEPS="$SCALE_STEPS" RUNS=7 bench/scale.sh
section synccurve bench/sync.sh curve /dev/shm
section images env SECTIONS="unpack pull" RUNS=5 bench/images.sh 200
python3 bench/goals.py "$OUT" | tee "$OUT/goals.txt"

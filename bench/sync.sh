#!/usr/bin/env bash
# Live-sync benchmark: single-edit latency (p50/p95 over 1,000 edits) host → env, against a bind
# mount (floor); time to converge after a 10,000-file initial copy and a 10,000-file change,
# against `rsync -a --delete --modify-window=-1` of the same tree and change in the same run.
# Prints ratios and CPU times.
# Usage: bench/sync.sh [EDITS] [PARENT_DIR]   (PARENT_DIR: /var/tmp, a disk; /dev/shm for tmpfs;
#        `ext4`: a fresh 2 GiB ext4 image with the default journal, loop-mounted; root only)
#        bench/sync.sh curve [PARENT_DIR] [SIZES] [EDITS]   the sync curve: per tree size
#        (default 1000,10000,100000 files) the initial pass, single-edit p50/p95 (EDITS edits,
#        default 200) and the converge after a full change, against rsync (a 4 GiB image with
#        room for 700,000 inodes for `ext4`)
# Run as root for the bind-mount floor (a private mount namespace of the benchmark process).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v rsync >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq rsync >/dev/null; else echo "rsync is missing: apt-get install rsync" >&2; exit 1; fi
fi
cargo build -q --release -p berth-runtime --example sync_bench
mode=edits
if [ "${1:-}" = curve ]; then
    mode=curve
    shift
    parent="${1:-/var/tmp}"
else
    parent="${2:-/var/tmp}"
fi
if [ "$parent" = ext4 ]; then
    # A filesystem of its own: what other processes deleted recently does not weigh on its
    # inode allocation (see bench/README.md), and it has a journal, as most disks do.
    img=$(mktemp /var/tmp/berth-sync-ext4.XXXXXX)
    parent=$(mktemp -d /tmp/berth-sync-ext4-mnt.XXXXXX)
    trap 'umount "$parent" 2>/dev/null; rmdir "$parent"; rm -f "$img"' EXIT
    if [ "$mode" = curve ]; then
        truncate -s 4G "$img"
        mkfs.ext4 -q -F -N 700000 "$img"
    else
        truncate -s 2G "$img"
        mkfs.ext4 -q -F "$img"
    fi
    mount -o loop "$img" "$parent"
fi
dir="$parent/berth-sync-bench-$$"
echo "sync benchmark in $dir ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
if [ "$mode" = curve ]; then
    target/release/examples/sync_bench curve "$dir" "${2:-1000,10000,100000}" "${3:-200}"
else
    target/release/examples/sync_bench "$dir" "${1:-1000}"
fi

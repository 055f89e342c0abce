#!/usr/bin/env bash
# Live-sync benchmark: single-edit latency (p50/p95 over 1,000 edits) host → env, against a bind
# mount (floor); time to converge after a 10,000-file initial copy and a 10,000-file change,
# against `rsync -a --delete` of the same change in the same run. Prints ratios.
# Usage: bench/sync.sh [EDITS] (run as root for the bind-mount floor).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v rsync >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq rsync >/dev/null; else echo "rsync is missing: apt-get install rsync" >&2; exit 1; fi
fi
cargo build -q --release -p berth-runtime --example sync_bench
# /var/tmp: a disk-backed filesystem like a project folder (not tmpfs).
exec target/release/examples/sync_bench "/var/tmp/berth-sync-bench-$$" "${1:-1000}"

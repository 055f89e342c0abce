#!/usr/bin/env bash
# Port forwarding benchmark: throughput and per-connection latency through berth's forwarder
# (host loopback -> PortForwarder -> server in a fresh network namespace) against a direct
# loopback connection, in the same run; pasta's forwarder on the same namespace is measured
# too when pasta is installed, as a reference. Needs root (it creates a network namespace).
#
#   bench/net.sh [MiB per throughput run, default 1024] [connections for latency, default 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench/net.sh needs root (network namespaces)" >&2
  exit 1
fi
cargo build --quiet --release -p berth-runtime --example net_bench
exec target/release/examples/net_bench "${1:-1024}" "${2:-2000}"

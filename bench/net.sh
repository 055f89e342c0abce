#!/usr/bin/env bash
# Port forwarding benchmark: throughput both ways (upload: the host's client sends; download:
# the namespace's server sends) with CPU per GiB, and per-connection latency, from host
# loopback into a server on the loopback of a fresh network namespace, interleaved in one run:
# direct loopback (the floor), berth as root (the namespace on a bridge `berthbench`, the port
# forwarded by nftables DNAT, runtime/src/net/port_nat.rs), berth's userspace splice forwarder
# (rootless containers, and the fallback), a floor straight to the namespace's bridge address
# without NAT (what crossing into the namespace costs, apart from the address rewrites), the
# same floor on a second bridge set back to 64 KiB packets (what BIG TCP on the veth pairs,
# bridge::ENV_LINK_PACKET, gives), and pasta -t on the same namespace as a reference when
# pasta runs here. Needs root (network namespaces, bridges, nftables).
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

#!/usr/bin/env bash
# VM benchmark: time from `VmBackend::start` to agent ready, and the VMM process's memory
# overhead (RSS minus the resident guest RAM, see runtime/src/vm/vmm_memory.rs), for qemu (TCG
# here; KVM on hardware-KVM hosts) and berth's own VMM: booting Linux only with
# BERTH_TEST_KVM_BOOT=1 on a host with hardware KVM, else with an idle tiny guest. Never boots
# a kernel through KVM on kvm_pvm (berth refuses).
# Then live sync over the agent channel (qemu): round trip of a file written on the host,
# seen by a guest loop that answers with a file of its own, seen back on the host (p50/p95
# over SYNC_EDITS edits, default 50); host -> guest visibility is about half of it.
#
#   bench/vm.sh [RUNS]            default 3 runs per provider
#   bench/vm.sh nested [RUNS]     in the nested guest L1 (qemu TCG -cpu max on this host, its
#                                 emulated kvm_amd; tests/src/nested.rs): berth's VMM against
#                                 qemu -enable-kvm inside L1, same kernel, initramfs and memory
#                                 (boot to agent ready, memory overhead, exec -- true round trip)
#   BERTH_BENCH_KERNEL=debian:linux-image-cloud-amd64 (default) or a kernel path
#   BERTH_TEST_KVM_KERNEL=...  kernel for the own-VMM runs (default: the same as qemu's)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=host
case "${1:-}" in nested | in-l1) MODE=$1; shift ;; esac
RUNS=${1:-3}
KERNEL=${BERTH_BENCH_KERNEL:-debian:linux-image-cloud-amd64}

# In L1 (started by `nested`) everything is built already, on the host.
if [ "$MODE" != in-l1 ]; then
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/agent-static \
    cargo build -q --release -p berth-agent --target x86_64-unknown-linux-gnu
  cargo build -q --release -p berth-runtime --example vm_up_down --example vmm_overhead --bin berth-vmm
  cargo build -q --release -p berth-cli
fi
if [ "$MODE" = nested ]; then
  # Never KVM on this host: L1 is qemu under TCG (the harness asserts it); inside it KVM is
  # L1's emulated kvm_amd.
  cargo build -q -p berth-e2e --example nested_sh
  exec target/debug/examples/nested_sh --limit 5400 "$PWD/bench/vm.sh" in-l1 "$RUNS"
fi
AGENT=$PWD/target/agent-static/x86_64-unknown-linux-gnu/release/berth-agent
BERTH=$PWD/target/release/berth
DRIVER=$PWD/target/release/examples/vm_up_down
export BERTH_VMM_EXE=$PWD/target/release/berth-vmm

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs"/{etc,dev,proc,sys,tmp,run,root}
cp /bin/busybox "$WORK/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$WORK/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$WORK/rootfs/etc/passwd"
# Kernels are cached across runs of this script.
CACHE=$PWD/target/berth-test-cache/kernels
mkdir -p "$CACHE"

run() { # provider label kernel [driver options]
  local home="$WORK/home-$1-$2"
  mkdir -p "$home"; ln -sfn "$CACHE" "$home/kernels"
  "$DRIVER" --vmm "$1" --kernel "$3" --rootfs "$WORK/rootfs" --agent "$AGENT" --home "$home" "${@:4}"
  rm -rf "$home"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { sed "s/.*\"$1\":\([0-9]*\).*/\1/"; }  # field NAME < jsonl

report() { # name file
  local f=$2
  echo "== $1 ($RUNS runs): $(head -1 "$f" | sed 's/.*"kernel":"\([^"]*\)".*/kernel \1/')"
  for k in up_ms vmm_to_agent_ms down_ms; do
    printf '  %-16s median %s\n' "$k" "$(field $k < "$f" | median)"
  done
}

# Memory, side by side: the VMM process's RSS, the resident part of its guest RAM mapping
# (found in /proc/PID/smaps by its size), and the difference, the VMM's own overhead.
MEMORY=()
memory_row() { # label file
  MEMORY+=("$(printf '  %-44s %9s %11s %9s' "$1" "$(field vmm_rss_kib < "$2" | median)" \
    "$(field guest_rss_kib < "$2" | median)" "$(field vmm_overhead_kib < "$2" | median)")")
}

if [ "$MODE" = in-l1 ]; then
  # Inside L1: /dev/kvm is L1's emulated kvm_amd, so `--vmm qemu` is qemu with KVM
  # (-enable-kvm) and `--vmm kvm` berth's own VMM; same kernel, initramfs, disk and memory.
  EXEC_RUNS=${EXEC_RUNS:-20}
  run qemu warmup "$KERNEL" > /dev/null
  : > "$WORK/qemu.jsonl"; : > "$WORK/kvm.jsonl"
  for _ in $(seq "$RUNS"); do   # interleaved, so a change of load hits both alike
    for p in qemu kvm; do run $p x "$KERNEL" --exec-runs "$EXEC_RUNS" >> "$WORK/$p.jsonl"; done
  done
  ACCEL=$(sed 's/.*"accel":"\([^"]*\)".*/\1/' "$WORK/qemu.jsonl" | head -1)
  [ "$ACCEL" = kvm ] || { echo "bench: qemu ran with $ACCEL in L1, not KVM" >&2; exit 1; }
  med() { field "$1" < "$WORK/$2.jsonl" | median; }
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
  echo "== nested: in L1 (qemu TCG -cpu max on the host, 2 vCPUs, emulated kvm_amd), kernel $(head -1 "$WORK/kvm.jsonl" | sed 's/.*"kernel":"\([^"]*\)".*/\1/'), 256 MiB, 1 vCPU; medians of $RUNS runs, exec of $EXEC_RUNS"
  printf '  %-40s %16s %14s %20s\n' "" "qemu -enable-kvm" "berth's VMM" "berth / qemu"
  for k in vmm_to_agent_ms up_ms down_ms; do
    q=$(med $k qemu); b=$(med $k kvm)
    printf '  %-40s %13s ms %11s ms %20s\n' "$k" "$q" "$b" "$(ratio "$b" "$q")"
  done
  q=$(med exec_true_us qemu); b=$(med exec_true_us kvm)
  printf '  %-40s %13s us %11s us %20s\n' "exec -- true round trip" "$q" "$b" "$(ratio "$b" "$q")"
  for k in vmm_rss_kib guest_rss_kib vmm_overhead_kib; do
    q=$(med $k qemu); b=$(med $k kvm)
    printf '  %-40s %12s KiB %10s KiB %20s\n' "$k" "$q" "$b" "$(ratio "$b" "$q")"
  done
  echo "  overhead = VMM RSS minus the resident pages of its guest RAM mapping; L1 load average: $(cut -d' ' -f1-3 /proc/loadavg); host: 2 cores shared"
  exit 0
fi

run qemu warmup "$KERNEL" > /dev/null   # fetch the kernel, build disk and initramfs once
: > "$WORK/qemu.jsonl"
for _ in $(seq "$RUNS"); do run qemu x "$KERNEL" >> "$WORK/qemu.jsonl"; done
ACCEL=$(sed 's/.*"accel":"\([^"]*\)".*/\1/' "$WORK/qemu.jsonl" | head -1)
report "qemu ($ACCEL)" "$WORK/qemu.jsonl"
memory_row "qemu ($ACCEL), booted Linux, 256 MiB" "$WORK/qemu.jsonl"

if [ "${BERTH_TEST_KVM_BOOT:-}" = 1 ]; then
  : > "$WORK/kvm.jsonl"
  for _ in $(seq "$RUNS"); do run kvm x "${BERTH_TEST_KVM_KERNEL:-$KERNEL}" >> "$WORK/kvm.jsonl"; done
  report "berth VMM (kvm)" "$WORK/kvm.jsonl"
  memory_row "berth VMM (kvm), booted Linux, 256 MiB" "$WORK/kvm.jsonl"
else
  echo "== berth VMM booting Linux: skipped (set BERTH_TEST_KVM_BOOT=1 on a host with hardware KVM)"
fi

# berth's VMM with a two-byte real-mode guest (safe on kvm_pvm): the VMM's own memory.
: > "$WORK/tiny.jsonl"; : > "$WORK/tiny-net.jsonl"
for _ in $(seq "$RUNS"); do
  target/release/examples/vmm_overhead >> "$WORK/tiny.jsonl"
  target/release/examples/vmm_overhead net >> "$WORK/tiny-net.jsonl"
done
for f in tiny tiny-net; do
  if grep -q skipped "$WORK/$f.jsonl"; then echo "== berth VMM ($f): $(head -1 "$WORK/$f.jsonl")"; fi
done
grep -q skipped "$WORK/tiny.jsonl" ||
  memory_row "berth VMM, idle tiny guest, 3 virtio devices" "$WORK/tiny.jsonl"
grep -q skipped "$WORK/tiny-net.jsonl" ||
  memory_row "berth VMM, the same + virtio-net on a tap" "$WORK/tiny-net.jsonl"

echo "== memory of the VMM process, KiB (medians of $RUNS runs)"
printf '  %-44s %9s %11s %9s\n' "" "RSS" "guest RAM" "overhead"
printf '%s\n' "${MEMORY[@]}"
echo "  overhead = RSS minus the resident pages of the guest RAM mapping; load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# Live sync over the agent channel: ping-N written on the host; a guest loop waits for it
# (polling every 0.5 ms) and writes pong-N; the host waits for pong-N (polling every 1 ms).
sync_latency() {
  local proj="$WORK/syncproj" home="$WORK/home-sync" n=${SYNC_EDITS:-50}
  mkdir -p "$proj/src" "$home"; ln -sfn "$CACHE" "$home/kernels"
  cp -a "$WORK/rootfs" "$proj/rootfs"
  printf '%s\n' 'name = "sync-bench"' 'backend = "vm"' '[image]' 'from = "rootfs:./rootfs"' \
    '[vm]' "kernel = \"$KERNEL\"" 'vmm = "qemu"' 'memory = "256MiB"' 'vcpus = 1' \
    '[[mounts]]' 'source = "./src"' 'target = "/work"' 'type = "sync"' > "$proj/berth.toml"
  (
    cd "$proj"
    export BERTH_HOME="$home" BERTH_AGENT="$AGENT"
    "$BERTH" up > /dev/null 2>&1
    "$BERTH" exec -- sh -c "i=1; while [ \$i -le $n ]; do while [ ! -e /work/ping-\$i ]; do usleep 500; done; echo > /work/pong-\$i; i=\$((i+1)); done" &
    responder=$!
    sleep 2   # the guest loop is running
    : > "$WORK/rtt"
    for i in $(seq "$n"); do
      t0=$(date +%s%N)
      echo "$i" > "src/ping-$i"
      while [ ! -e "src/pong-$i" ]; do sleep 0.001; done
      t1=$(date +%s%N)
      echo $(( (t1 - t0) / 1000 )) >> "$WORK/rtt"
    done
    wait "$responder"
    "$BERTH" down > /dev/null
  )
  rm -rf "$home"
  local p50 p95
  p50=$(sort -n "$WORK/rtt" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  p95=$(sort -n "$WORK/rtt" | awk '{a[NR]=$1} END {i=int(NR*0.95+0.5); if (i<1) i=1; print a[i]}')
  echo "== live sync over the agent channel (qemu $(sed 's/.*"accel":"\([^"]*\)".*/\1/' "$WORK/qemu.jsonl" | head -1), $n edits): round trip host -> guest -> host p50 $((p50 / 1000)).$(( (p50 % 1000) / 100 )) ms, p95 $((p95 / 1000)).$(( (p95 % 1000) / 100 )) ms (host -> guest visibility is about half)"
}
sync_latency

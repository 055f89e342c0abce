#!/usr/bin/env bash
# Sidecar benchmarks (issue 19), timed interleaved in one run (bench/interleave.py):
#  1. the sidecar's cost in `berth run`: `berth run -- true` of a project with one Redis
#     sidecar (Debian's redis-server in a busybox root filesystem, `ready = { tcp = 6379 }`:
#     started, probed until it answers, stopped and removed with its throw-away volume) vs the
#     same project without it; and `berth run -- redis-cli ping` (the command uses the
#     server) for reference;
#  2. `up` of the group (environment + Redis sidecar, from down: start both, wait for the
#     probe) vs `down` + `up` of the environment alone, and vs `podman pod` of the same
#     images (a pod with the app and redis-server, `podman pod start`) where podman runs: on
#     these hosts podman 4.3 fails (`setrlimit` EPERM, crun refuses the hybrid cgroup layout),
#     which the report says with podman's own error.
# Targets are reported, not asserted: the script fails only when something does not work.
# Needs root, redis-server and redis-tools, busybox-static, crun, bwrap, jq, python3.
# Usage: bench/sidecar.sh        RUNS=10 (rounds)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-10}
need redis-server redis-cli
bench_setup

# copy_with_libs PROGRAM ROOTFS: the program and the shared libraries it loads.
copy_with_libs() {
  local lib
  mkdir -p "$2$(dirname "$1")"
  cp -L "$1" "$2$1"
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
    mkdir -p "$2$(dirname "$lib")"
    cp -L "$lib" "$2$lib"
  done
}
APP=$W/app-rootfs
REDIS=$W/redis-rootfs
cp -a "$ROOTFS" "$APP"
cp -a "$ROOTFS" "$REDIS"
copy_with_libs "$(command -v redis-cli)" "$APP"
copy_with_libs "$(command -v redis-server)" "$REDIS"
SERVER=$(command -v redis-server)

sidecar_toml="[services.cache]
image = \"rootfs:$REDIS\"
command = [\"$SERVER\", \"--port\", \"6379\", \"--bind\", \"127.0.0.1\", \"--dir\", \"/data\", \"--save\", \"\"]
mounts = [{ source = \"cache-data\", target = \"/data\", type = \"volume\" }]
ready = { tcp = 6379, timeout = \"30s\" }
"
P=$W/proj
PS=$W/proj-sidecar
mkdir -p "$P" "$PS"
printf 'name = "bench-app"\n[image]\nfrom = "rootfs:%s"\n' "$APP" > "$P/berth.toml"
printf 'name = "bench-group"\n[image]\nfrom = "rootfs:%s"\n%s' "$APP" "$sidecar_toml" > "$PS/berth.toml"
# The first runs import the root filesystems as layers (not measured).
"$BERTH" -C "$P" -q run -- true
"$BERTH" -C "$PS" -q run -- redis-cli -h 127.0.0.1 ping >/dev/null

crun_ns_start
echo "== berth run with one Redis sidecar vs without ($RUNS interleaved rounds)" >&2
interleave "$W/run.json" \
  "$(spec "berth run -- true" host "" "$BERTH -C $P -q run -- true")" \
  "$(spec "berth run -- true (+ redis sidecar)" host "" "$BERTH -C $PS -q run -- true")" \
  "$(spec "berth run -- redis-cli ping (+ sidecar)" host "" "$BERTH -C $PS -q run -- redis-cli -h 127.0.0.1 ping")"

echo "== up of the group vs the environment alone, from down ($RUNS interleaved rounds)" >&2
on_exit "$BERTH -C $P -q destroy -t 1"
on_exit "$BERTH -C $PS -q destroy --volumes -t 1"
"$BERTH" -C "$P" -q up
"$BERTH" -C "$PS" -q up
interleave "$W/up.json" \
  "$(spec "berth up (environment)" host "$BERTH -C $P -q down -t 1" "$BERTH -C $P -q up")" \
  "$(spec "berth up (environment + redis sidecar)" host "$BERTH -C $PS -q down -t 1" "$BERTH -C $PS -q up")"

# podman pod of the same images, where podman runs here.
PODMAN_NOTE=""
PODMAN_SPEC=""
if ! command -v podman >/dev/null; then
  PODMAN_NOTE="podman is not installed here (apt-get install podman); no pod comparison"
else
  POD=berth-bench-pod-$$
  export CONTAINERS_STORAGE_CONF=$W/podman-storage.conf
  printf '[storage]\ndriver = "overlay"\nrunroot = "%s/podman-run"\ngraphroot = "%s/podman-graph"\n' "$W" "$W" > "$CONTAINERS_STORAGE_CONF"
  on_exit "podman pod rm -f $POD"
  on_exit "podman rmi -f localhost/berth-bench-app localhost/berth-bench-redis"
  if ! err=$( { tar -C "$APP" -c . | podman import - localhost/berth-bench-app &&
                tar -C "$REDIS" -c . | podman import - localhost/berth-bench-redis &&
                podman pod create --name "$POD" &&
                podman create --pod "$POD" --name "$POD-cache" localhost/berth-bench-redis \
                  "$SERVER" --port 6379 --bind 127.0.0.1 --save "" &&
                podman create --pod "$POD" --name "$POD-app" localhost/berth-bench-app sleep 1000000 &&
                podman pod start "$POD" &&
                podman pod stop -t 1 "$POD"; } 2>&1 >/dev/null ); then
    PODMAN_NOTE="podman $(podman --version | awk '{print $3}') does not run here: $(echo "$err" | grep -m1 -i -E 'error|fail' || echo "$err" | tail -1)"
  else
    PODMAN_SPEC=$(spec "podman pod start (app + redis)" host "podman pod stop -t 1 $POD" "podman pod start $POD")
  fi
fi
if [ -n "$PODMAN_SPEC" ]; then
  echo "== berth up of the group vs podman pod start ($RUNS interleaved rounds)" >&2
  interleave "$W/pod.json" \
    "$(spec "berth up (environment + redis sidecar)" host "$BERTH -C $PS -q down -t 1" "$BERTH -C $PS -q up")" \
    "$PODMAN_SPEC"
fi

python3 - "$W" "$RUNS" "$PODMAN_NOTE" <<'PY' > "$W/table.txt"
import json, os, sys
w, runs, podman_note = sys.argv[1], sys.argv[2], sys.argv[3]
def load(name):
    return {r["command"]: (r["median"] * 1000, r["stddev"] * 1000)
            for r in json.load(open(f"{w}/{name}.json"))["results"]}
def table(title, med):
    print(f"{title}: {runs} interleaved rounds; median (stddev), ms")
    for k, (m, s) in med.items():
        print(f"  {k:48} {m:9.1f} ({s:7.1f})")
run = load("run")
table("berth run", run)
plain, side = run["berth run -- true"][0], run["berth run -- true (+ redis sidecar)"][0]
print(f"  the sidecar's cost in a run: +{side - plain:.1f} ms ({side / plain:.2f}x the run without it)")
print()
up = load("up")
table("berth up from down", up)
alone, group = up["berth up (environment)"][0], up["berth up (environment + redis sidecar)"][0]
print(f"  the sidecar's cost in up: +{group - alone:.1f} ms ({group / alone:.2f}x)")
print()
if os.path.exists(f"{w}/pod.json"):
    pod = load("pod")
    table("berth up of the group vs podman pod", pod)
    b, p = pod["berth up (environment + redis sidecar)"][0], pod["podman pod start (app + redis)"][0]
    print(f"  berth up / podman pod start: {b / p:.2f}x (target <= 1.0x: {'met' if b <= p else 'MISSED'})")
else:
    print(f"podman pod: {podman_note}")
PY
echo
echo "berth sidecar benchmark"
host_report
echo
cat "$W/table.txt"

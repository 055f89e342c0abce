#!/usr/bin/env bash
# The registry build cache (issue 21), in the same run:
#  1. machine A: the first `berth up --cache-to` of a Python-shaped project (the shape of
#     real.sh: packages = python3-pip, python3-venv and a `setup` step that pip-installs its
#     dependency from PyPI) builds every step and pushes it to a loopback docker-registry;
#  2. a fresh machine's first `berth up` building every step itself (cold) vs a fresh
#     machine's first `berth up --cache-from` taking them from that registry, interleaved
#     (bench/interleave.py) so load from other work hits both alike. A fresh machine = a fresh
#     BERTH_HOME; both pull the same base from the loopback registry (a `debootstrap:` base
#     differs on every machine, so a shared cache needs a base from a registry: the script
#     bootstraps bookworm once and pushes it there).
# Needs root, docker-registry, curl, python3, debootstrap (or DEBIAN_CACHE=DIR: a folder
# written by `berth image export --cache` that holds debootstrap:bookworm), the Debian
# mirror and PyPI. Prints medians and the ratio; asserts nothing.
# Usage: bench/cache.sh   (RUNS=3, BERTH_BIN=path to skip the release build; BERTH_BEFORE=path
# adds a third command, that binary's `up --cache-from` on fresh homes, to the same interleaved
# run: a change's before/after under the same load)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
need python3 docker-registry curl
RUNS=${RUNS:-3}
if [ -n "${BERTH_BIN:-}" ]; then
  BERTH=$BERTH_BIN
else
  (cd "$BENCH_ROOT" && cargo build --release -p berth-cli) >&2
  BERTH=$BENCH_ROOT/target/release/berth
fi
W=$(mktemp -d /var/tmp/berth-bench.XXXXXX)
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$W"  # the environments' root must reach its state folder through it

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/reg.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/reg}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$PORT}
YML
docker-registry serve "$W/reg.yml" >/dev/null 2>&1 &
on_exit "kill $!"
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
REG=127.0.0.1:$PORT

echo "== base: debootstrap:bookworm, pushed to $REG/bench/bookworm" >&2
if [ -n "${DEBIAN_CACHE:-}" ]; then
  BERTH_HOME=$W/seed "$BERTH" -q image import --cache "$DEBIAN_CACHE"
else
  mkdir -p "$W/base"
  printf 'name = "bench-cache-base"\n[image]\nfrom = "debootstrap:bookworm"\n' > "$W/base/berth.toml"
  BERTH_HOME=$W/seed "$BERTH" -C "$W/base" -q up
  BERTH_HOME=$W/seed "$BERTH" -C "$W/base" -q destroy
fi
BASE=$(BERTH_HOME=$W/seed "$BERTH" image ls --json | python3 -c '
import json, sys
print(next(i["name"] for i in json.load(sys.stdin)["images"] if i["name"].startswith("debootstrap:bookworm")))')
BERTH_HOME=$W/seed "$BERTH" -q image push "$REG/bench/bookworm:latest" "$BASE" >/dev/null

P=$W/proj
mkdir -p "$P/src/demo"
cat > "$P/pyproject.toml" <<'TOML'
[project]
name = "demo"
version = "0.1.0"
dependencies = ["six==1.16.0"]
TOML
echo 'import six' > "$P/src/demo/__init__.py"
cat > "$P/berth.toml" <<TOML
name = "bench-cache"
[image]
from = "$REG/bench/bookworm:latest"
packages = ["python3-pip", "python3-venv"]
setup = ["python3 -m venv /opt/venv && /opt/venv/bin/pip install -q six==1.16.0"]
[[mounts]]
source = "."
target = "/work"
TOML
for h in a cold cache before; do
  on_exit "BERTH_HOME=$W/$h $BERTH -C $P -q destroy"
done

secs() { python3 -c 'import time; print(f"{time.time():.3f}")'; }
echo "== machine A: first up, building and pushing every step (--cache-to)" >&2
t0=$(secs)
BERTH_HOME=$W/a "$BERTH" -C "$P" up --cache-to "$REG/bench/cache" 2> "$W/a.log" >/dev/null
t1=$(secs)
A_SECS=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
BERTH_HOME=$W/a "$BERTH" -C "$P" -q destroy

echo "== fresh machines: cold up vs up --cache-from, interleaved, $RUNS runs" >&2
for h in cold cache before; do
  cat > "$W/fresh-$h.sh" <<SH
#!/bin/sh
BERTH_HOME=$W/$h $BERTH -C $P -q destroy >/dev/null 2>&1
rm -rf $W/$h
SH
  chmod +x "$W/fresh-$h.sh"
done
BEFORE_CMD=()
if [ -n "${BERTH_BEFORE:-}" ]; then
  BEFORE_CMD=("{\"name\": \"up --cache-from (before)\", \"prepare\": [\"$W/fresh-before.sh\"], \"cmd\": [\"env\", \"BERTH_HOME=$W/before\", \"$BERTH_BEFORE\", \"-C\", \"$P\", \"-q\", \"up\", \"--cache-from\", \"$REG/bench/cache\"]}")
fi
python3 "$(dirname "$0")/interleave.py" --runs "$RUNS" --warmup 0 --json "$W/cache.json" \
  "{\"name\": \"cold up\", \"prepare\": [\"$W/fresh-cold.sh\"], \"cmd\": [\"env\", \"BERTH_HOME=$W/cold\", \"$BERTH\", \"-C\", \"$P\", \"-q\", \"up\"]}" \
  "{\"name\": \"up --cache-from\", \"prepare\": [\"$W/fresh-cache.sh\"], \"cmd\": [\"env\", \"BERTH_HOME=$W/cache\", \"$BERTH\", \"-C\", \"$P\", \"-q\", \"up\", \"--cache-from\", \"$REG/bench/cache\"]}" \
  "${BEFORE_CMD[@]}"

# One more cached run on a fresh home, not timed, with its output: it runs no step, every
# step says where it came from.
"$W/fresh-cache.sh"
BERTH_HOME=$W/cache "$BERTH" -C "$P" up --cache-from "$REG/bench/cache" 2> "$W/cache.log" >/dev/null
PULLED=$(grep -c "pulled from the cache" "$W/cache.log" || true)
echo "steps pulled from the cache in a checked (untimed) run: $PULLED"
if [ "$PULLED" = 0 ] || grep -q " …$" "$W/cache.log"; then
  echo "bench: the cached up ran a step or pulled nothing:" >&2; cat "$W/cache.log" >&2; exit 1
fi

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$W/cache.json" "$A_SECS" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
cold, cache = r["cold up"]["median"], r["up --cache-from"]["median"]
print()
print("machine A: first up with --cache-to (build + push): %s s" % sys.argv[2])
print("fresh machine, first up (median of %d, interleaved):" % len(r["cold up"]["times"]))
print("  %-28s %7.1f s  (runs: %s)" % ("cold (builds every step)", cold, ", ".join("%.1f" % t for t in r["cold up"]["times"])))
print("  %-28s %7.1f s  (runs: %s)" % ("--cache-from (no step runs)", cache, ", ".join("%.1f" % t for t in r["up --cache-from"]["times"])))
print("  ratio cache/cold: %.2fx (target <= 0.2x)" % (cache / cold))
ct, kt = r["cold up"]["times"], r["up --cache-from"]["times"]
print("  per round: %s" % ", ".join("%.2fx" % (k / c) for c, k in zip(ct, kt)))
if "up --cache-from (before)" in r:
    b = r["up --cache-from (before)"]
    print("  %-28s %7.1f s  (runs: %s)" % ("--cache-from, BERTH_BEFORE", b["median"], ", ".join("%.1f" % t for t in b["times"])))
    print("  ratio before/cold: %.2fx; after/before: %.2fx" % (b["median"] / cold, cache / b["median"]))
PY

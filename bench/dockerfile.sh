#!/usr/bin/env bash
# Dockerfile builds (issue 20): berth's own builder (`berth image build`) vs `buildah bud`
# (Debian's, vfs storage, chroot isolation, --layers) on the same multi-stage Dockerfile in
# the same run, rounds interleaved (berth, buildah, berth, ...):
#  1. cold build: empty step cache (the base image already pulled by both);
#  2. rebuild after a one-line change of one source file (cache warm).
# The Dockerfile is shaped like a real project's (manifest first, dependency install with a
# cache mount, sources, build, a slim final stage with the artifacts) over a busybox base
# this script pushes to a loopback docker-registry. Targets (issue 20): cold <= 1.0x,
# rebuild <= 0.5x buildah. Reported, not asserted; the script fails only when a build fails
# or something is left behind.
# Needs root, buildah, docker-registry, umoci, skopeo, busybox-static, python3.
# Usage: bench/dockerfile.sh      ROUNDS=5, FILES=2000 (source files), BERTH=path (default:
#        a release build of this tree)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-5}
FILES=${FILES:-2000}
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
for t in buildah docker-registry umoci skopeo python3 busybox; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing (apt-get install $t)" >&2; exit 1; }
done
if [ -z "${BERTH:-}" ]; then
  (cd "$ROOT" && cargo build --release -p berth-cli) >&2
  BERTH=$ROOT/target/release/berth
fi
W=$(mktemp -d /var/tmp/berth-bench-dockerfile.XXXXXX)
chmod 755 "$W"
REG_PID=
cleanup() {
  local rc=$?
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
  for d in "$W"/buildah-*; do
    [ -d "$d" ] && buildah --root "$d/storage" --runroot "$d/run" --storage-driver vfs rm --all >/dev/null 2>&1 || true
  done
  if grep -q " $W" /proc/self/mountinfo; then
    echo "bench: mounts left under $W; not removing it" >&2
    rc=1
  else
    rm -rf "$W"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== setup: registry with a busybox base, a project of $FILES source files" >&2
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$W/reg.yml" <<YML
version: 0.1
storage: {filesystem: {rootdirectory: $W/registry}}
http: {addr: 127.0.0.1:$PORT}
YML
docker-registry serve "$W/reg.yml" >"$W/registry.log" 2>&1 &
REG_PID=$!
"$ROOT/scripts/make-busybox-rootfs" "$W/rootfs"
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' > "$W/rootfs/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' > "$W/rootfs/etc/group"
(cd "$W" && umoci init --layout oci && umoci new --image oci:base \
  && umoci insert --image oci:base rootfs / >/dev/null \
  && umoci config --image oci:base --config.env PATH=/bin --config.cmd /bin/sh) >&2
for i in $(seq 50); do
  skopeo copy -q --dest-tls-verify=false "oci:$W/oci:base" "docker://127.0.0.1:$PORT/base:1" 2>/dev/null && break
  sleep 0.1
done

P=$W/project
mkdir -p "$P/src" "$P/config"
printf '{"name": "app", "dependencies": {"left-pad": "1.3.0"}}\n' > "$P/package.json"
python3 - "$P/src" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = os.path.join(d, f"mod{i % 40}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i}.js"), "w") as f:
        f.write(f"export function f{i}(x) {{ return x + {i}; }}\n" * 20)
PY
echo "port=3000" > "$P/config/app.conf"
printf 'node_modules\n**/*.log\n' > "$P/.dockerignore"
cat > "$P/Dockerfile" <<DOCKERFILE
ARG REGISTRY=127.0.0.1:$PORT
FROM \${REGISTRY}/base:1 AS deps
WORKDIR /app
COPY package.json ./
RUN --mount=type=cache,target=/root/.cache \\
    mkdir -p node_modules/left-pad /root/.cache \\
 && cp package.json node_modules/left-pad/ \\
 && echo installed >> /root/.cache/log

FROM deps AS build
ENV NODE_ENV=production
COPY src ./src
RUN mkdir -p dist \\
 && find src -name '*.js' | sort | xargs cat > dist/bundle.js \\
 && gzip -k -9 dist/bundle.js \\
 && sha256sum dist/bundle.js > dist/SHA256SUMS

FROM \${REGISTRY}/base:1
WORKDIR /srv
COPY --chmod=640 config/app.conf /etc/app.conf
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build --chown=app:app /app/dist ./dist
USER app
CMD ["cat", "/srv/dist/SHA256SUMS"]
DOCKERFILE

now() { date +%s%N; }
berth_build() { BERTH_HOME=$1 "$BERTH" -q image build -t app "$P" >/dev/null; }
buildah_build() {
  buildah --root "$1/storage" --runroot "$1/run" --storage-driver vfs bud -q \
    --isolation chroot --tls-verify=false --layers -t app "$P" >/dev/null
}
# Pulls the base into a fresh store (not measured: both then start from a pulled base).
berth_fresh() { rm -rf "$1"; BERTH_HOME=$1 "$BERTH" -q image pull "127.0.0.1:$PORT/base:1" >/dev/null; }
buildah_fresh() {
  [ -d "$1" ] && buildah --root "$1/storage" --runroot "$1/run" --storage-driver vfs rm --all >/dev/null 2>&1
  rm -rf "$1"
  buildah --root "$1/storage" --runroot "$1/run" --storage-driver vfs pull -q --tls-verify=false "127.0.0.1:$PORT/base:1" >/dev/null
}
RESULTS=$W/results.txt
: > "$RESULTS"
edit_source() { printf '// edit %s\n' "$1" >> "$P/src/mod7/f7.js"; }

echo "== $ROUNDS interleaved rounds: cold build, then a one-line edit and rebuild" >&2
for r in $(seq "$ROUNDS"); do
  berth_fresh "$W/berth-home"
  t=$(now); berth_build "$W/berth-home"; echo "berth cold $(( ($(now) - t) / 1000000 ))" >> "$RESULTS"
  buildah_fresh "$W/buildah-1"
  t=$(now); buildah_build "$W/buildah-1"; echo "buildah cold $(( ($(now) - t) / 1000000 ))" >> "$RESULTS"
  edit_source "$r"
  t=$(now); berth_build "$W/berth-home"; echo "berth rebuild $(( ($(now) - t) / 1000000 ))" >> "$RESULTS"
  t=$(now); buildah_build "$W/buildah-1"; echo "buildah rebuild $(( ($(now) - t) / 1000000 ))" >> "$RESULTS"
  echo "  round $r done" >&2
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for tool, what, ms in rows:
    med.setdefault((tool, what), []).append(int(ms))
print(f"{'build':<10} {'berth ms':>10} {'buildah ms':>11} {'ratio':>7}  target")
for what, goal in (("cold", 1.0), ("rebuild", 0.5)):
    b = statistics.median(med[("berth", what)])
    h = statistics.median(med[("buildah", what)])
    ratio = b / h
    verdict = "met" if ratio <= goal else "MISSED"
    print(f"{what:<10} {b:>10.0f} {h:>11.0f} {ratio:>6.2f}x  <= {goal}x {verdict}")
PY

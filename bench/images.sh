#!/usr/bin/env bash
# Image-side benchmarks, each against a reference tool in the same run:
#  1. unpack: `berth image import layer.tar.gz` (hash + store the blob + safe unpack) vs
#     `tar -xzf` of the same ~200 MB gzip layer;
#  2. pull: `berth image pull` of a 4-layer image from a loopback docker-registry (download,
#     verify, unpack) vs `skopeo copy` of it to a local OCI dir (download only), and vs
#     `skopeo copy` + `umoci unpack` (download and unpack, like berth); then the pull's floor
#     (runtime/examples/pull_floor.rs: the CPU of the digests, gunzip and diff-ids alone);
#  3. push: `berth image push` of that pulled image (compressed layers, sent as they are) vs
#     `skopeo copy` of the same OCI layout, each to an empty second loopback registry;
#  4. push-built: `berth image push` of an image berth built (the same MB in one uncompressed
#     layer, as `setup` steps leave them: berth compresses it, gzip) vs `skopeo copy
#     --dest-compress` of the same image exported as an OCI layout (skopeo compresses too),
#     each to an empty registry, interleaved (bench/interleave.py) so load hits both alike.
# Needs: hyperfine, docker-registry, skopeo, umoci, python3. Run as root (tar keeps owners).
# Usage: bench/images.sh [MB]   (default 200; RUNS=5, BERTH_BIN=path to skip the release build,
#        SECTIONS="unpack pull push push-built" to run only some; PUSH_COMPRESSION=zstd
#        makes push-built compress with zstd (both tools); BERTH_BEFORE=path adds that binary's
#        push to the same interleaved push-built run, for a change's before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-200}
RUNS=${RUNS:-5}
SECTIONS=${SECTIONS:-unpack pull push push-built}
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }
# BERTH_BIN: a berth binary to measure instead of building the release one (a script check).
if [ -n "${BERTH_BIN:-}" ]; then
  BERTH=$BERTH_BIN
else
  cargo build --release -p berth-cli >&2
  BERTH=$PWD/target/release/berth
fi
W=$(mktemp -d /var/tmp/berth-bench.XXXXXX)
REG_PID=
cleanup() {
  # Each step may fail (a process already gone) without ending the cleanup (set -e).
  if [ -f "$W/push.pid" ]; then kill "$(cat "$W/push.pid")" 2>/dev/null || true; fi
  if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

echo "== corpus: $MB MB of files under 4 MB from /usr/share and /usr/lib/x86_64-linux-gnu (sorted)" >&2
find /usr/share /usr/lib/x86_64-linux-gnu -type f -printf '%s %p\n' 2>/dev/null | sort -k2 |
  awk -v max=$((MB * 1024 * 1024)) '$1 < 4000000 && s + $1 <= max { s += $1; print substr($0, index($0, " ") + 1) }' > "$W/files"
tar -czf "$W/layer.tar.gz" -T "$W/files" 2>/dev/null
RAW=$(tar -tvzf "$W/layer.tar.gz" | awk '{ s += $3 } END { print s }')
echo "layer: $(wc -l < "$W/files") files, $((RAW / 1000000)) MB content, $(( $(stat -c %s "$W/layer.tar.gz") / 1000000 )) MB gzip" >&2

if want unpack; then
hyperfine --runs "$RUNS" --export-json "$W/unpack.json" \
  --prepare "rm -rf $W/x $W/h; mkdir $W/x" \
  -n "tar -xzf" "tar -xzf $W/layer.tar.gz -C $W/x" \
  -n "berth image import" "BERTH_HOME=$W/h $BERTH -q image import $W/layer.tar.gz --name bench/layer"
fi

echo "== pull: 4 layers in a loopback docker-registry" >&2
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/reg.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/reg}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$PORT}
YML
docker-registry serve "$W/reg.yml" >/dev/null 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
split -n l/4 -d "$W/files" "$W/part."
(cd "$W" && umoci init --layout oci && umoci new --image oci:bench) >/dev/null
for p in "$W"/part.*; do
  rm -rf "$W/src" && mkdir "$W/src"
  tar -cf - -T "$p" 2>/dev/null | tar -xf - -C "$W/src"
  (cd "$W" && umoci insert --image oci:bench src /) >/dev/null
done
skopeo copy -q --dest-tls-verify=false "oci:$W/oci:bench" "docker://127.0.0.1:$PORT/bench:latest"
REF=127.0.0.1:$PORT/bench:latest
want pull && hyperfine --runs "$RUNS" --export-json "$W/pull.json" \
  --prepare "rm -rf $W/h $W/d $W/b" \
  -n "skopeo copy" "skopeo copy -q --src-tls-verify=false docker://$REF oci:$W/d:latest" \
  -n "skopeo copy + umoci unpack" "skopeo copy -q --src-tls-verify=false docker://$REF oci:$W/d:latest && umoci unpack --image $W/d:latest $W/b >/dev/null" \
  -n "berth image pull" "BERTH_HOME=$W/h $BERTH -q image pull $REF"
# The floor of a pull: the CPU of the work berth cannot leave out (digests, gunzip with
# berth's decoder, diff-ids) done alone on one thread over the same blobs.
if want pull; then
  cargo build -q --release -p berth-runtime --example pull_floor >&2
  target/release/examples/pull_floor "$W"/oci/blobs/sha256/* > "$W/floor.txt"
fi

echo "== push: the same image to an empty loopback registry (restarted empty before each run)" >&2
PPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/push-reg.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/push-reg}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$PPORT}
YML
cat > "$W/fresh-push-registry.sh" <<SH
#!/bin/sh
[ -f $W/push.pid ] && kill \$(cat $W/push.pid) 2>/dev/null && sleep 0.2
rm -rf $W/push-reg $W/hp/push
docker-registry serve $W/push-reg.yml >/dev/null 2>&1 &
echo \$! > $W/push.pid
for _ in \$(seq 100); do curl -fs http://127.0.0.1:$PPORT/v2/ >/dev/null && break; sleep 0.05; done
SH
chmod +x "$W/fresh-push-registry.sh"
BERTH_HOME=$W/hp $BERTH -q image pull "$REF" >/dev/null
want push && hyperfine --runs "$RUNS" --export-json "$W/push.json" \
  --prepare "$W/fresh-push-registry.sh" \
  -n "skopeo copy (push)" "skopeo copy -q --dest-tls-verify=false oci:$W/oci:bench docker://127.0.0.1:$PPORT/bench:latest" \
  -n "berth image push" "BERTH_HOME=$W/hp $BERTH -q image push 127.0.0.1:$PPORT/bench:latest $REF"

if want push-built; then
  echo "== push-built: one uncompressed $MB MB layer (as berth builds them), compressed by each tool" >&2
  rm -rf "$W/tree" && mkdir "$W/tree"
  tar -cf - -T "$W/files" 2>/dev/null | tar -xf - -C "$W/tree"
  BERTH_HOME=$W/hb $BERTH -q image import "$W/tree" --name bench/built
  BERTH_HOME=$W/hb $BERTH -q image export bench/built --oci -o "$W/oci-built"
  rm -rf "$W/tree"
  # An empty registry before each run, and berth's memo of compressed layers forgotten, so
  # both tools compress and send everything every time.
  sed -e "s|rm -rf $W/push-reg $W/hp/push|rm -rf $W/push-reg $W/hb/push|" \
    "$W/fresh-push-registry.sh" > "$W/fresh-push-built.sh"
  chmod +x "$W/fresh-push-built.sh"
  PC=${PUSH_COMPRESSION:-gzip}
  BEFORE_CMD=()
  if [ -n "${BERTH_BEFORE:-}" ]; then
    BEFORE_CMD=("{\"name\": \"berth image push (before)\", \"prepare\": [\"$W/fresh-push-built.sh\"], \"cmd\": [\"env\", \"BERTH_HOME=$W/hb\", \"$BERTH_BEFORE\", \"-q\", \"image\", \"push\", \"--compression\", \"$PC\", \"127.0.0.1:$PPORT/built:latest\", \"bench/built\"]}")
  fi
  python3 "$(dirname "$0")/interleave.py" --runs "$RUNS" --warmup 1 --json "$W/push-built.json" \
    "{\"name\": \"skopeo copy --dest-compress\", \"prepare\": [\"$W/fresh-push-built.sh\"], \"cmd\": [\"skopeo\", \"copy\", \"-q\", \"--dest-compress\", \"--dest-compress-format\", \"$PC\", \"--dest-tls-verify=false\", \"oci:$W/oci-built\", \"docker://127.0.0.1:$PPORT/built:latest\"]}" \
    "{\"name\": \"berth image push\", \"prepare\": [\"$W/fresh-push-built.sh\"], \"cmd\": [\"env\", \"BERTH_HOME=$W/hb\", \"$BERTH\", \"-q\", \"image\", \"push\", \"--compression\", \"$PC\", \"127.0.0.1:$PPORT/built:latest\", \"bench/built\"]}" \
    "${BEFORE_CMD[@]}"
fi

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$W" "$RAW" <<'PY'
import json, os, sys
w, raw = sys.argv[1], int(sys.argv[2])
def med(name):
    path = os.path.join(w, name)
    if not os.path.exists(path):
        return None
    return {r["command"]: r["median"] for r in json.load(open(path))["results"]}
u, p, s, b = med("unpack.json"), med("pull.json"), med("push.json"), med("push-built.json")
print()
if u:
    print("unpack of a %d MB layer (median):" % (raw // 1000000))
    for k, v in u.items():
        print("  %-28s %7.2f s  %6.0f MB/s" % (k, v, raw / v / 1e6))
    print("  ratio berth/tar: %.2fx (target <= 0.7x)" % (u["berth image import"] / u["tar -xzf"]))
if p:
    print("pull of a 4-layer image from loopback (median):")
    for k, v in p.items():
        print("  %-28s %7.2f s" % (k, v))
    print("  ratio berth/skopeo copy: %.2fx (target <= 0.9x; berth also unpacks)" % (p["berth image pull"] / p["skopeo copy"]))
    print("  ratio berth/(skopeo copy + umoci unpack): %.2fx" % (p["berth image pull"] / p["skopeo copy + umoci unpack"]))
    floor = os.path.join(w, "floor.txt")
    if os.path.exists(floor):
        text = open(floor).read()
        print("  " + text.rstrip().replace("\n", "\n  "))
        largest = float(text.split("largest layer alone:")[1].split()[0]) / 1000
        print("  largest layer's gunzip alone (serial) / skopeo copy: %.2fx" % (largest / p["skopeo copy"]))
if s:
    print("push of the 4-layer image (compressed layers) to an empty loopback registry (median):")
    for k, v in s.items():
        print("  %-28s %7.2f s" % (k, v))
    print("  ratio berth/skopeo copy: %.2fx (target <= 1.0x)" % (s["berth image push"] / s["skopeo copy (push)"]))
if b:
    print("push of a %d MB berth-built image (one uncompressed layer, compressed while pushing; median, interleaved):" % (raw // 1000000))
    for k, v in b.items():
        print("  %-28s %7.2f s" % (k, v))
    print("  ratio berth/skopeo copy --dest-compress: %.2fx (target <= 1.0x)" % (b["berth image push"] / b["skopeo copy --dest-compress"]))
PY

#!/usr/bin/env bash
# A real project's first `berth up` and its rebuild after a one-package change (issue 14),
# side by side with the same steps done by hand in a debootstrap + chroot (the floor), in
# the same run:
#  1. cold: `berth up` of a Python project on `debootstrap:bookworm` with
#     packages = python3-pip, python3-venv and a `setup` step that pip-installs the project's
#     dependency from PyPI into a venv — base build included — vs `debootstrap --variant=minbase`
#     + `chroot apt-get install` + `chroot pip install` of the same;
#  2. rebuild: `packages` gains `make`; `berth up` vs `chroot apt-get install make`.
# Needs root, debootstrap, the Debian mirror of the host's apt sources and PyPI (through the
# host's CA store). Prints seconds and ratios; asserts nothing.
# Usage: bench/real.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
need debootstrap python3
(cd "$BENCH_ROOT" && cargo build --release -p berth-cli) >&2
BERTH=$BENCH_ROOT/target/release/berth
W=$(mktemp -d /var/tmp/berth-bench.XXXXXX)
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$W"  # the environments' root must reach its state folder through it
export BERTH_HOME=$W/home
MIRROR=$(awk '/^deb / && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

P=$W/proj
mkdir -p "$P/src/demo"
cat > "$P/pyproject.toml" <<'EOF'
[project]
name = "demo"
version = "0.1.0"
dependencies = ["six==1.16.0"]
EOF
echo 'import six' > "$P/src/demo/__init__.py"
write_toml() { # packages
  cat > "$P/berth.toml" <<EOF
name = "bench-real"
[image]
from = "debootstrap:bookworm"
packages = [$1]
setup = ["python3 -m venv /opt/venv && /opt/venv/bin/pip install -q six==1.16.0"]
[[mounts]]
source = "."
target = "/work"
EOF
}
secs() { python3 -c 'import sys,time; print(f"{time.time():.3f}")'; }
elapsed() { python3 -c "print(f'{$2 - $1:.1f}')"; }

echo "== cold: berth up (debootstrap base + packages + pip setup)" >&2
write_toml '"python3-pip", "python3-venv"'
t0=$(secs); "$BERTH" -C "$P" -q up >&2; t1=$(secs)
BERTH_COLD=$(elapsed "$t0" "$t1")
"$BERTH" -C "$P" -q down >&2 || true

echo "== cold: by hand (debootstrap + chroot apt-get + pip)" >&2
R=$W/chroot
on_exit "umount -R $R/proc $R/dev 2>/dev/null"
t0=$(secs)
debootstrap --variant=minbase bookworm "$R" "$MIRROR" >/dev/null
cp /etc/resolv.conf "$R/etc/resolv.conf"
mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"
chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -c \
  'apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip python3-venv >/dev/null'
# What berth does for its environments, by hand: the host's CA bundle (it trusts this
# machine's TLS proxy) in place of the chroot's; a clean environment, as inside berth.
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
chroot "$R" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  sh -c 'python3 -m venv /opt/venv && /opt/venv/bin/pip install -q six==1.16.0'
t1=$(secs)
HAND_COLD=$(elapsed "$t0" "$t1")

echo "== rebuild after packages += make" >&2
write_toml '"python3-pip", "python3-venv", "make"'
t0=$(secs); "$BERTH" -C "$P" -q up >&2; t1=$(secs)
BERTH_RE=$(elapsed "$t0" "$t1")
"$BERTH" -C "$P" -q destroy >&2 || true
t0=$(secs)
chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make >/dev/null
t1=$(secs)
HAND_RE=$(elapsed "$t0" "$t1")
umount -R "$R/proc" "$R/dev"

printf '%-52s %8s %8s %7s\n' "measurement" "berth s" "hand s" "ratio"
printf '%-52s %8s %8s %7s\n' "cold first up (base build included)" "$BERTH_COLD" "$HAND_COLD" \
  "$(python3 -c "print(f'{$BERTH_COLD/$HAND_COLD:.2f}x')")"
printf '%-52s %8s %8s %7s\n' "rebuild after packages += make" "$BERTH_RE" "$HAND_RE" \
  "$(python3 -c "print(f'{$BERTH_RE/$HAND_RE:.2f}x')")"

#!/usr/bin/env bash
# SSH endpoint benchmarks (issue 18), timed interleaved in one run (bench/interleave.py), so
# load from other work on the machine hits every command alike and the ratios hold:
#  1. round trip: `ssh berth-NAME true` (OpenSSH's client through `berth ssh --stdio` as the
#     ProxyCommand, berth's built-in server, the command in a container) vs `berth exec -- true`
#     vs `ssh` to a local OpenSSH sshd (Debian's openssh-server, started by this script on a
#     loopback port with its own config, host key and client key in the scratch folder; the
#     command runs on the host);
#  2. throughput: `scp` of a 200 MB file into the environment vs `berth exec -- sh -c 'cat >
#     FILE'` with the file on stdin vs `scp` to the local sshd (each writes the file to disk:
#     the container's writable layer, the host's scratch folder).
# Both SSH paths use the same client, cipher negotiation and no connection sharing
# (ControlMaster no). Targets are reported, not asserted: the script fails only when something
# does not work.
# Needs root, openssh-client, openssh-server, busybox-static, crun, bwrap, jq, python3.
# Usage: bench/ssh.sh        RUNS=10 (rounds) SIZE_MB=200 BERTH=… (default: release build)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-10}
SIZE_MB=${SIZE_MB:-200}
need ssh scp ssh-keygen
[ -x /usr/sbin/sshd ] || { echo "bench: /usr/sbin/sshd is missing (apt-get install openssh-server)" >&2; exit 1; }
bench_setup

# The environment: busybox, root, network none (nothing of the network is measured).
P=$W/proj
project "$P" bench-ssh "[network]
mode = \"none\"
"
on_exit "$BERTH -C $P -q destroy -t 1"
"$BERTH" -C "$P" -q up
BCFG=$W/berth_ssh_config
"$BERTH" -C "$P" ssh-config > "$BCFG"
printf 'Host *\n  BatchMode yes\n  ControlMaster no\n  ControlPath none\n  LogLevel ERROR\n' >> "$BCFG"

# The peer: a local sshd on a free loopback port, everything in $W/sshd.
S=$W/sshd
mkdir -p "$S/peer"
ssh-keygen -q -t ed25519 -N "" -f "$S/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$S/client_key"
cp "$S/client_key.pub" "$S/authorized_keys"
chmod 600 "$S/authorized_keys"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$S/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $S/host_key
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
EOF
# sshd's privilege separation folder; made (and removed) here when the system has none.
if [ ! -d /run/sshd ]; then
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  on_exit "rmdir /run/sshd"
fi
/usr/sbin/sshd -f "$S/sshd_config" -D -e 2> "$S/sshd.log" &
SSHD_PID=$!
on_exit "kill $SSHD_PID"
cat > "$S/ssh_config" <<EOF
Host peer
  HostName 127.0.0.1
  Port $PORT
  User root
  IdentityFile $S/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $S/known_hosts
  StrictHostKeyChecking accept-new
  BatchMode yes
  ControlMaster no
  ControlPath none
  LogLevel ERROR
EOF
for i in $(seq 100); do
  ssh -F "$S/ssh_config" peer true 2>/dev/null && break
  kill -0 "$SSHD_PID" 2>/dev/null || { cat "$S/sshd.log" >&2; exit 1; }
  sleep 0.1
done
ssh -F "$S/ssh_config" peer true
ssh -F "$BCFG" berth-bench-ssh true

# spec_argv NAME ARGV…: one command for interleave.py, argv kept as given.
spec_argv() {
  python3 -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "ns": False, "prepare": None, "cmd": sys.argv[2:]}))' "$@"
}
# interleave.py's namespace for crun (unused here: every command runs on the host).
crun_ns_start

echo "== round trip of true ($RUNS interleaved rounds)" >&2
interleave "$W/rtt.json" \
  "$(spec_argv "berth exec -- true" "$BERTH" -C "$P" -q exec -- true)" \
  "$(spec_argv "ssh berth-NAME true" ssh -F "$BCFG" berth-bench-ssh true)" \
  "$(spec_argv "ssh to local sshd true" ssh -F "$S/ssh_config" peer true)"

FILE=$W/payload
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > "$FILE"
SUM=$(sha256sum < "$FILE" | cut -d' ' -f1)
echo "== copy of a $SIZE_MB MB file ($RUNS interleaved rounds)" >&2
INSIDE=/root/payload
"$BERTH" -C "$P" -q exec -- mkdir -p /root
interleave "$W/copy.json" \
  "$(spec_argv "berth exec -- cat > FILE" sh -c "exec \"\$0\" -C \"\$1\" -q exec -- sh -c 'cat > $INSIDE' < \"\$2\"" "$BERTH" "$P" "$FILE")" \
  "$(spec_argv "scp FILE berth-NAME:" scp -q -F "$BCFG" "$FILE" "berth-bench-ssh:$INSIDE")" \
  "$(spec_argv "scp FILE to local sshd" scp -q -F "$S/ssh_config" "$FILE" "peer:$S/peer/payload")"
# What arrived is the file.
[ "$("$BERTH" -C "$P" -q exec -- sha256sum "$INSIDE" | cut -d' ' -f1)" = "$SUM" ] || { echo "bench: the copy inside differs" >&2; exit 1; }
[ "$(sha256sum < "$S/peer/payload" | cut -d' ' -f1)" = "$SUM" ] || { echo "bench: the sshd copy differs" >&2; exit 1; }

python3 - "$W" "$RUNS" "$SIZE_MB" <<'PY' > "$W/table.txt"
import json, sys
w, runs, size = sys.argv[1], sys.argv[2], float(sys.argv[3])
def load(name):
    return {r["command"]: (r["median"] * 1000, r["stddev"] * 1000)
            for r in json.load(open(f"{w}/{name}.json"))["results"]}
rtt = load("rtt")
print(f"round trip of `true`: {runs} interleaved rounds; median (stddev), ms")
for k, (m, s) in rtt.items():
    print(f"  {k:36} {m:9.1f} ({s:7.1f})")
ssh_b, exec_b, ssh_o = rtt["ssh berth-NAME true"][0], rtt["berth exec -- true"][0], rtt["ssh to local sshd true"][0]
print(f"  ssh berth-NAME / berth exec:        {ssh_b / exec_b:.2f}x")
print(f"  ssh berth-NAME / ssh to local sshd: {ssh_b / ssh_o:.2f}x")
print()
cp = load("copy")
print(f"copy of a {size:.0f} MB file: {runs} interleaved rounds; median (stddev), ms, MB/s")
for k, (m, s) in cp.items():
    print(f"  {k:36} {m:9.1f} ({s:7.1f}) {size / (m / 1000):8.1f} MB/s")
scp_b, cat_b, scp_o = cp["scp FILE berth-NAME:"][0], cp["berth exec -- cat > FILE"][0], cp["scp FILE to local sshd"][0]
print(f"  scp to berth / berth exec cat:      {scp_b / cat_b:.2f}x the time")
print(f"  scp to berth / scp to local sshd:   {scp_b / scp_o:.2f}x the time")
PY
echo
echo "berth SSH endpoint benchmark ($("$BERTH" --version 2>/dev/null || echo berth); OpenSSH $(ssh -V 2>&1 | cut -d' ' -f1))"
host_report
echo
cat "$W/table.txt"

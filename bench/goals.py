"""Issue 17's goals, met or MISSED, from the logs bench/goals.sh wrote (one per benchmark).

usage: goals.py OUT   (the folder of run.log, container.log, net.log, sync.log, scale.log,
                       images.log; missing logs are reported as not run)

Every figure is read from the benchmark's own output lines, so a change of their wording fails
here loudly (a goal "not found") rather than silently.
"""
import os
import re
import statistics
import sys

LOAD_MAX = float(os.environ.get("LOAD_MAX", "3"))


def read(out, name):
    path = os.path.join(out, f"{name}.log")
    return open(path).read() if os.path.exists(path) else None


def loads(text):
    """The 1-minute load averages stamped at the start and end of a section."""
    return [float(m) for m in re.findall(r"^== \S+ [\d:]+ load ([\d.]+)", text, re.M)]


def find(text, pattern, what, flags=re.M):
    m = re.search(pattern, text, flags)
    if not m:
        raise LookupError(f"{what}: not found (pattern {pattern!r})")
    return m


def fmt(x, unit="x"):
    return f"{x:.2f}{unit}"


def main():
    out = sys.argv[1]
    rows = []  # (goal, figure, verdict)

    def goal(name, figure, ok):
        rows.append((name, figure, "met" if ok else "MISSED"))

    sections = {}
    for name in ("run", "container", "net", "sync", "scale", "images"):
        text = read(out, name)
        sections[name] = text
        if text is None:
            rows.append((f"({name}.log)", "not run", "-"))

    t = sections["run"]
    if t:
        for label, what in (("isolated network, only environment", "isolated"),
                            ("isolated network, bridge kept", "isolated, bridge kept by another"),
                            ("network none, as crun's spec", "network none")):
            m = find(t, rf"^\s*berth run / crun run \({re.escape(label)}\)\s+([\d.]+)x back to back,"
                        rf"\s+([\d.]+)x in a row,\s+([\d.]+)x alone", what)
            b2b, row, alone = float(m[1]), float(m[2]), float(m[3])
            goal(f"`berth run -- true` ≤ 1.0x `crun run`, {what}",
                 f"{fmt(b2b)} back to back, {fmt(row)} in a row, {fmt(alone)} alone",
                 b2b <= 1.0 and row <= 1.0 and alone <= 1.0)
        m = find(t, r"^\s*berth run / crun run \(network none, after a big run\)\s+([\d.]+)x", "after a big run")
        goal("`berth run -- true` ≤ 1.0x `crun run`, right after a run that wrote 20,000 files",
             fmt(float(m[1])), float(m[1]) <= 1.0)
        for label, what in (("berth-isolated", "isolated"), ("berth-none", "network none")):
            m = find(t, rf"^\s*{label} / crun, CPU time\s+([\d.]+)x", f"CPU {what}")
            goal(f"CPU of `berth run -- true` ≤ 1.0x `crun run`'s, {what}", fmt(float(m[1])), float(m[1]) <= 1.0)
        m = find(t, r"^\s*target: no growth \((met|MISSED)\)", "sequential runs")
        goal("sequential `berth run`s grow nothing", "RSS, mounts, cgroups, folders, disk"
             + (" flat" if m[1] == "met" else ": see run.log"), m[1] == "met")

    t = sections["container"]
    if t:
        def pair(label):
            m = find(t, rf"^\s*{re.escape(label)}\s+([\d.]+)x\s+([\d.]+)x", label)
            return float(m[1]), float(m[2])
        b2b, alone = pair("cold berth up + exec -- true + down / crun run")
        goal("cold `up` + `exec -- true` + `down` ≤ 1.0x `crun run`", f"{fmt(b2b)} back to back, {fmt(alone)} alone",
             b2b <= 1.0 and alone <= 1.0)
        b2b, alone = pair("cold berth up / crun run (both in a user ns)")
        goal("cold `up` ≤ 1.0x crun, both in a user namespace, back to back", f"{fmt(b2b)} ({fmt(alone)} alone)", b2b <= 1.0)
        b2b, alone = pair("cold berth up / crun run")
        goal("cold `up` of a built environment ≤ 1.0x `crun run`", f"{fmt(b2b)} back to back, {fmt(alone)} alone",
             b2b <= 1.0 and alone <= 1.0)
        b2b, alone = pair("berth exec / crun exec")
        goal("`exec` ≤ 0.8x `crun exec`", f"{fmt(b2b)} back to back, {fmt(alone)} alone", b2b <= 0.8 and alone <= 0.8)
        m = find(t, r"^\s*/bin/true\s+([\d.]+)", "/bin/true")
        floor = float(m[1])
        m = find(t, r"^\s*warm berth up \(no change\), ms\s+([\d.]+)ms", "warm up")
        warm = float(m[1])
        goal("warm `up` < 5 ms (the timer's own cost, `/bin/true`, taken off)",
             f"{warm:.2f} - {floor:.2f} = {warm - floor:.2f} ms", warm - floor < 5)
        m = find(t, r"memory per idle environment: ([\d.]+) MiB", "idle memory")
        goal("idle memory < 1 MiB per environment", f"{float(m[1]):.2f} MiB", float(m[1]) < 1)

    t = sections["net"]
    if t:
        for direction in ("upload", "download"):
            block = find(t, rf"^throughput, {direction}.*?(?=^throughput|^connection latency|\Z)", direction,
                         re.M | re.S)[0]
            m = find(block, r"^\s*kernel DNAT \(root\)\s+[\d.]+\s+ratio ([\d.]+)", f"{direction} DNAT")
            r = float(m[1])
            s = find(block, r"^\s*splice \(rootless\)\s+[\d.]+\s+ratio ([\d.]+)", f"{direction} splice")
            goal(f"forwarding {direction} ≥ 0.9x direct loopback (root: kernel DNAT)",
                 f"{fmt(r)} (rootless splice forwarder: {fmt(float(s[1]))})", r >= 0.9)
        m = find(t, r"^\s*kernel DNAT \(root\)\s+median.*?added \(median\)\s+\+([\d.]+), by round\s+\+([\d.]+)", "latency")
        goal("forwarding adds < 30 µs per connection (root)", f"+{float(m[1]):.1f} µs (by round +{float(m[2]):.1f})",
             float(m[1]) < 30)

    t = sections["sync"]
    if t:
        per_fs = {}
        for m in re.finditer(r"^round \d+ fs (\S+) .*berth/rsync = ([\d.]+); CPU berth (\d+) ms, rsync (\d+) ms", t, re.M):
            per_fs.setdefault(m[1], []).append((float(m[2]), int(m[3]) / max(int(m[4]), 1)))
        if not per_fs:
            raise LookupError("sync: no round found")
        for fs, label in (("ext4", "ext4 image"), ("tmpfs", "tmpfs"), ("root", "`/`")):
            rs = per_fs.get(fs, [])
            fast = sum(1 for r, _ in rs if r <= 0.8)
            cpu = statistics.median(c for _, c in rs) if rs else float("nan")
            goal(f"sync converge ≤ 0.8x rsync in 9 of 10, {label}",
                 f"{fast} of {len(rs)} (median {statistics.median(r for r, _ in rs):.2f}x)" if rs else "no round",
                 len(rs) > 0 and fast >= 0.9 * len(rs))
            goal(f"sync CPU ≤ 1.0x rsync's, {label}", f"median {fmt(cpu)}", rs and cpu <= 1.0)

    t = sections["scale"]
    if t:
        m = find(t, r"^goals at (\d+) environments:", "scale goals")
        n = m[1]
        for label, pat, unit in (
                ("warm `up` < 10 ms", r"warm berth up ([\d.]+) ms \(< 10 ms: (met|MISSED)\)", " ms"),
                ("`exec -- true` ≤ 1.1x of one environment's",
                 r"berth exec -- true ([\d.]+)x one environment's \(<= 1.1x: (met|MISSED)\)", "x"),
                ("`status` ≤ 1.1x of one environment's",
                 r"berth status ([\d.]+)x one environment's \(<= 1.1x: (met|MISSED)\)", "x"),
                ("`ls` < 100 ms", r"berth ls of \d+: ([\d.]+) ms \(< 100 ms: (met|MISSED)\)", " ms")):
            m = find(t, pat, label)
            goal(f"{label} with {n} environments", m[1] + unit, m[2] == "met")

    t = sections["images"]
    if t:
        m = find(t, r"ratio berth/tar: ([\d.]+)x", "unpack")
        goal("image unpack ≤ 0.7x `tar -xzf`", fmt(float(m[1])), float(m[1]) <= 0.7)
        m = find(t, r"ratio berth/skopeo copy: ([\d.]+)x \(target < 1.0x; berth also unpacks\)|ratio berth/skopeo copy: ([\d.]+)x \(target <= 0.9x", "pull")
        r = float(m[1] or m[2])
        goal("pull ≤ 0.9x `skopeo copy`", fmt(r), r <= 0.9)

    width = max(len(r[0]) for r in rows)
    print(f"issue 17's goals, from {out}")
    for name, text in sections.items():
        if text:
            ls = loads(text)
            note = "" if ls and max(ls) <= LOAD_MAX else f"  (above LOAD_MAX={LOAD_MAX}: not quiet)"
            print(f"  {name:9} load {', '.join(f'{x:.2f}' for x in ls)}{note}")
    print()
    for name, figure, verdict in sorted(rows, key=lambda r: r[2] == "-"):
        print(f"  {name:{width}}  {figure:40}  {verdict}")
    curve = read(out, "synccurve")
    if curve:
        print("\nsync curve (tmpfs; bench/sync.sh curve):")
        for line in curve.splitlines():
            if line.startswith("|"):
                print(f"  {line}")
    missed = sum(1 for r in rows if r[2] == "MISSED")
    print(f"\n{len(rows)} goals, {missed} missed")


if __name__ == "__main__":
    try:
        main()
    except LookupError as e:
        sys.exit(f"goals: {e}")

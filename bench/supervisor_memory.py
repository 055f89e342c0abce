"""Memory of a berth home's idle environments, for bench/container.sh and bench/scale.sh.

`measure(home)` finds the supervisors whose command line names `home` and returns their
count, RSS and PSS (KiB), and the memory cgroups they are in (v1 `memory` controller, or v2):
how many, their usage and their anonymous memory (KiB).
"""
import os


def kib(path, key):
    """The value of the `key` line of a /proc status-like file, in KiB (0 when absent)."""
    for line in open(path):
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def supervisors(home):
    """Pids of the berth supervisors of `home`."""
    sup = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"__supervisor" in cmd and any((home.rstrip("/") + "/").encode() in a for a in cmd):
            sup.append(pid)
    return sup


def measure(home):
    sup = supervisors(home)
    usage, anon, cgs = 0, 0, set()
    for p in sup:
        for line in open(f"/proc/{p}/cgroup"):
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                d = "/sys/fs/cgroup/memory" + path
            elif ctrls == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                d = "/sys/fs/cgroup" + path
            else:
                continue
            if d in cgs:
                continue
            cgs.add(d)
            for f in ("memory.usage_in_bytes", "memory.current"):
                if os.path.exists(f"{d}/{f}"):
                    usage += int(open(f"{d}/{f}").read())
            st = {l.split()[0]: int(l.split()[1]) for l in open(f"{d}/memory.stat")}
            anon += st.get("rss", st.get("anon", 0))
    return {
        "supervisors": len(sup),
        "rss_kib": sum(kib(f"/proc/{p}/status", "VmRSS:") for p in sup),
        "pss_kib": sum(kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in sup),
        "cgroups": len(cgs),
        "cg_usage_kib": usage // 1024,
        "cg_anon_kib": anon // 1024,
    }

#!/usr/bin/env python3
"""Times commands interleaved: round 1 runs every command once, round 2 again (starting one
command later), and so on, so that load from other work on a busy machine hits all of them
alike and their ratios stay meaningful. Prints nothing but progress; writes hyperfine-style JSON.

usage: interleave.py --runs N --warmup N --json OUT [--mntns PATH] [--pause S] [--in-a-row K] SPEC...
  SPEC is a JSON object: {"name": ..., "cmd": [argv], "prepare": [argv] (optional, untimed,
  before every run), "ns": true (optional: run in the mount namespace at --mntns, e.g. the
  one where crun works)}.

--pause sleeps between commands (after the prepare step too), so that one command's kernel
work (e.g. an RCU grace period a cgroup move waits for, which the next cgroup move could
then skip) does not flatter the next one: each start is measured as it happens alone.

The rotation keeps the order of the list, so a command mostly follows the same other one,
and whatever that one leaves running (a detached teardown, the kernel's cleanup of its
namespaces) falls on it. --in-a-row K runs each command K times in a row per round and times
the last K-1 only: each of those follows the same command, as in a loop of one tool (a test
loop of `berth run`, a CI job's runs).

Every command is started the same way (fork, optional setns, exec; wait), timed from before
the fork to after the wait. A command that fails aborts the benchmark.
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import time

CLONE_NEWNS = 0x00020000
libc = ctypes.CDLL(None, use_errno=True)


def spawn(argv, ns_fd):
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(os.devnull, os.O_RDWR)
            os.dup2(fd, 0)
            os.dup2(fd, 1)
            if ns_fd is not None and libc.setns(ns_fd, CLONE_NEWNS) != 0:
                os.write(2, b"interleave: setns failed\n")
                os._exit(127)
            os.execvp(argv[0], argv)
        except BaseException as e:  # noqa: BLE001 - report and leave the child
            os.write(2, f"interleave: cannot run {argv[0]}: {e}\n".encode())
        os._exit(127)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run(spec, ns_fd, pause, in_a_row=1):
    """The times of the last max(in_a_row - 1, 1) of in_a_row runs of spec, in seconds."""
    times = [run_once(spec, ns_fd, pause) for _ in range(in_a_row)]
    return times[1:] if in_a_row > 1 else times


def run_once(spec, ns_fd, pause):
    if spec.get("prepare"):
        code = spawn(spec["prepare"], ns_fd if spec.get("ns") else None)
        if code != 0:
            sys.exit(f"interleave: prepare of {spec['name']!r} failed with {code}")
    time.sleep(pause)
    t0 = time.perf_counter_ns()
    code = spawn(spec["cmd"], ns_fd if spec.get("ns") else None)
    t1 = time.perf_counter_ns()
    if code != 0:
        sys.exit(f"interleave: {spec['name']!r} failed with exit code {code}: {' '.join(spec['cmd'])}")
    return (t1 - t0) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", required=True)
    ap.add_argument("--mntns")
    ap.add_argument("--pause", type=float, default=0.0)
    ap.add_argument("--in-a-row", type=int, default=1)
    ap.add_argument("specs", nargs="+")
    a = ap.parse_args()
    specs = [json.loads(s) for s in a.specs]
    ns_fd = os.open(a.mntns, os.O_RDONLY) if a.mntns else None
    times = {s["name"]: [] for s in specs}
    for i in range(a.warmup + a.runs):
        # Each round starts one command later (see the module documentation).
        k = i % len(specs)
        for s in specs[k:] + specs[:k]:
            ts = run(s, ns_fd, a.pause, a.in_a_row)
            if i >= a.warmup:
                times[s["name"]].extend(ts)
        print(f"\r  round {i + 1}/{a.warmup + a.runs}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    results = []
    for s in specs:
        ts = times[s["name"]]
        results.append({
            "command": s["name"],
            "median": statistics.median(ts),
            "mean": statistics.fmean(ts),
            "stddev": statistics.stdev(ts) if len(ts) > 1 else 0.0,
            "min": min(ts),
            "max": max(ts),
            "times": ts,
        })
    with open(a.json, "w") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main()

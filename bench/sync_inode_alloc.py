#!/usr/bin/env python3
"""The file-system side of `sync_bench`'s converge, without berth: is a copy's cost on a disk
the copier's own, or where and when its files are created?

`sync_inode_alloc.py WORKDIR MODE` (WORKDIR must not exist; it is removed at the end) writes
a 10,000-file tree (100 folders x 100 files of ~210 bytes) into WORKDIR/host, mirrors it into
WORKDIR/env the way berth's engine writes (a temporary file in the target's folder, `O_EXCL`,
renamed over the target), and `rsync -a --delete --modify-window=-1` copies it into
WORKDIR/rsync after the write, as `sync_bench` does; then every host file is rewritten in place
and both copies are brought up to date again. MODE:

- `during`: each file is mirrored right after it is written (as the engine, which syncs while
  the tree is being written: its folders and inodes are made next to the host's);
- `after`: the mirror runs after the whole tree is written (as rsync does).

Prints the CPU time (user + system) of the mirror and of rsync, per phase, and the block
group (inode number / 8192) of each tree's first folder. Python's own work adds ~0.3 s to the
mirror's column. Run it on `/var/tmp` (ext4 without a journal) and on tmpfs to compare.
"""

import os
import resource
import shutil
import subprocess
import sys


def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def main():
    work, mode = sys.argv[1], sys.argv[2]
    if mode not in ("during", "after"):
        sys.exit("MODE is 'during' or 'after'")
    host, env, dst = (os.path.join(work, x) for x in ("host", "env", "rsync"))
    for d in (host, env, dst):
        os.makedirs(d)
    counter = [0]
    mirror_cpu = [0.0]

    def mirror(i, j, data):
        start = cpu(resource.RUSAGE_THREAD)
        d = os.path.join(env, "tree", "d%02d" % i)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, ".f%02d.txt.tmp-%d" % (j, counter[0]))
        counter[0] += 1
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        os.rename(tmp, os.path.join(d, "f%02d.txt" % j))
        mirror_cpu[0] += cpu(resource.RUSAGE_THREAD) - start

    def content(version, i, j):
        return b"%s %d %d\n" % (version, i, j) + b"x" * 200

    def write(version):
        for i in range(100):
            d = os.path.join(host, "tree", "d%02d" % i)
            os.makedirs(d, exist_ok=True)
            for j in range(100):
                with open(os.path.join(d, "f%02d.txt" % j), "wb") as f:
                    f.write(content(version, i, j))
                if mode == "during":
                    mirror(i, j, content(version, i, j))
        if mode == "after":
            for i in range(100):
                for j in range(100):
                    mirror(i, j, content(version, i, j))

    def rsync():
        start = cpu(resource.RUSAGE_CHILDREN)
        subprocess.run(
            ["rsync", "-a", "--delete", "--modify-window=-1", host + "/", dst + "/"],
            check=True,
        )
        return cpu(resource.RUSAGE_CHILDREN) - start

    def group(tree):
        return (os.stat(os.path.join(tree, "tree", "d00")).st_ino - 1) // 8192

    try:
        write(b"v1")
        initial = (mirror_cpu[0], rsync())
        mirror_cpu[0] = 0.0
        write(b"v2")
        change = (mirror_cpu[0], rsync())
        print(
            "%s: initial mirror %.2f s, rsync %.2f s | change mirror %.2f s, rsync %.2f s "
            "(%.2fx) | block group of d00: host %d, env %d, rsync %d"
            % (mode, *initial, *change, change[0] / change[1], group(host), group(env), group(dst))
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

# SPDX-License-Identifier: GPL-2.0
"""make run: boot a guest, load a balloon driver, drive the balloon from the
host over QMP, compact memory, deflate, unload, and print what happened."""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from guest import MiB, PAGE, Guest  # noqa: E402

MODULES = {"c": "virtio_balloon", "rust": "rust_virtio_balloon"}
KEYS = ("nr_balloon_pages", "balloon_inflate", "balloon_deflate", "balloon_migrate")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--driver", default="rust", choices=sorted(MODULES))
    ap.add_argument("--mem", default="2G")
    args = ap.parse_args()
    module = MODULES[args.driver]

    g = Guest("release", mem=args.mem, name="demo")
    print(f"==> booting the guest (console: {g.console.relative_to(Path.cwd())})")
    try:
        g.start()
        print(f"    up in {g.boot_time:.1f} s")
        print(f"==> insmod {module}.ko")
        g.sh(f"insmod /modules/{module}.ko")
        ram = g.ram_bytes()
        rows = []

        def row(what, target, secs):
            v = g.vmstat()
            rows.append((what, target // MiB if target else "", g.actual() // MiB,
                         f"{secs:.2f}" if secs is not None else "",
                         *(v[k] for k in KEYS)))

        row("loaded", None, None)
        for target in (ram // 2, ram // 4, ram * 3 // 4, ram // 8, ram):
            print(f"==> balloon to {target // MiB} MiB")
            g.balloon(target)
            _, secs = g.wait_actual(target, timeout=120, settle=10)
            row("target", target, secs)

        print("==> fragment memory, inflate into the holes, compact")
        avail = g.meminfo()["MemAvailable"] * 1024
        g.sh(f"fragment {avail * 6 // 10 // MiB} >/tmp/frag.out 2>&1 & "
             "echo $! >/tmp/frag.pid; while ! grep -q ready /tmp/frag.out; do sleep 0.1; done")
        size = (g.meminfo()["MemFree"] * 1024 - 128 * MiB) // MiB * MiB
        g.balloon(ram - size)
        _, secs = g.wait_actual(ram - size, timeout=120, settle=10)
        row("fill holes", ram - size, secs)
        g.sh("kill $(cat /tmp/frag.pid); while kill -0 $(cat /tmp/frag.pid) 2>/dev/null; do sleep 0.1; done")
        t0 = time.monotonic()
        g.sh("echo 1 > /proc/sys/vm/compact_memory", timeout=300)
        row("compact", None, time.monotonic() - t0)
        g.balloon(ram)
        _, secs = g.wait_actual(ram, timeout=120)
        row("target", ram, secs)
        print(f"==> rmmod {module}")
        g.sh(f"rmmod {module}")
        row("unloaded", None, None)
    finally:
        g.close()

    head = ("step", "target MiB", "actual MiB", "time s", "balloon pages",
            "inflated", "deflated", "migrated")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print()
    print(f"Balloon driver {module} on a {ram // MiB} MiB guest "
          f"(counters from /proc/vmstat, in {PAGE // 1024} KiB pages):")
    for r in (head, *rows):
        print("  " + "  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


if __name__ == "__main__":
    main()

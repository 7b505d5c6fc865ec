# SPDX-License-Identifier: GPL-2.0
"""Two NUMA nodes: the balloon core's per-node accounting (mm/balloon.c) under
both drivers. NR_BALLOON_PAGES is a node counter and a balloon page leaves its
zone's managed pages; compaction moves balloon pages, and each move must
leave every node's figures as they were. Needs a kernel with CONFIG_NUMA (the
arm64 lane's, .config.arm64.fragment); skipped on kernels without it."""

import re

import pytest

from conftest import FLAVOUR
from guest import MiB, PAGE, image_dir
from test_balloon import MOVE_TIMEOUT, balloon_counters, scatter_balloon

GUEST_MEM = "2G"
NODE_MEM = "1G"
QEMU_EXTRA = (
    "-object", f"memory-backend-ram,id=mem0,size={NODE_MEM}",
    "-object", f"memory-backend-ram,id=mem1,size={NODE_MEM}",
    "-numa", "node,nodeid=0,cpus=0,memdev=mem0",
    "-numa", "node,nodeid=1,cpus=1,memdev=mem1",
)
COMPACTIONS = 3


def _numa_kernel():
    try:
        return "CONFIG_NUMA=y\n" in (image_dir(FLAVOUR) / ".config").read_text()
    except FileNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not _numa_kernel(),
                                reason="the kernel has no CONFIG_NUMA (make check ARCH=arm64)")


def nodes(guest):
    """Per node: (pages in the balloon by its `Balloon:` line, managed pages
    of its zones), after the per-CPU counters are folded."""
    out = guest.sh("echo 1 > /proc/sys/vm/stat_refresh; "
                   "grep -H Balloon: /sys/devices/system/node/node*/meminfo; "
                   "grep -E '^Node|^ +managed' /proc/zoneinfo")
    balloon, managed, node = {}, {}, None
    for line in out.splitlines():
        if m := re.match(r".*/node(\d+)/meminfo:Node \d+ Balloon: +(\d+) kB", line):
            balloon[int(m[1])] = int(m[2]) * 1024 // PAGE
        elif m := re.match(r"Node (\d+), zone", line):
            node = int(m[1])
        elif m := re.match(r" +managed +(\d+)", line):
            managed[node] = managed.get(node, 0) + int(m[1])
    assert balloon.keys() == managed.keys(), out
    return {n: (balloon[n], managed[n]) for n in balloon}


def test_balloon_pages_counted_per_node_through_compaction(driver, guest):
    """A balloon with pages on both nodes, migrated by repeated compaction:
    the nodes' `Balloon:` lines add up to nr_balloon_pages and to the balloon's
    size, and on each node the zones' managed pages plus the node's balloon
    pages stay what the node managed before the balloon; a full deflate gives
    every node and MemTotal back."""
    ram = guest.ram_bytes()
    mem0 = guest.meminfo()["MemTotal"]
    base = nodes(guest)
    assert len(base) == 2 and all(b == 0 for b, _ in base.values()), base
    size = scatter_balloon(guest)
    migrated = 0
    for i in range(COMPACTIONS + 1):
        if i:
            before = balloon_counters(guest)["balloon_migrate"]
            guest.sh("echo 1 > /proc/sys/vm/compact_memory", timeout=600)
            migrated += balloon_counters(guest)["balloon_migrate"] - before
        now = nodes(guest)
        c = balloon_counters(guest)
        print(f"after {i} compactions: nodes {now}, vmstat {c}")
        assert sum(b for b, _ in now.values()) == c["nr_balloon_pages"] == size // PAGE
        for n, (b, m) in now.items():
            assert b + m == base[n][1], f"node {n}: {b} balloon + {m} managed, " \
                f"{base[n][1]} managed before"
        assert guest.actual() == ram - size
    assert all(b > 0 for b, _ in now.values()), f"the balloon missed a node: {now}"
    assert migrated > 0, "compaction moved no balloon page"
    print(f"balloon pages migrated: {migrated}")
    guest.balloon(ram)
    guest.wait_actual(ram, timeout=MOVE_TIMEOUT)
    assert nodes(guest) == base
    assert guest.meminfo()["MemTotal"] == mem0

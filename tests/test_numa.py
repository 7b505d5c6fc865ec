# SPDX-License-Identifier: GPL-2.0
"""Two NUMA nodes: the balloon core's per-node accounting (mm/balloon.c) under
both drivers. NR_BALLOON_PAGES is a node counter, and a balloon page leaves
its zone's managed pages. Each node's `Balloon:` line is held against the
pages of the node that really are in a balloon (PageOffline, read from
/proc/kpageflags over the node's zones), and against what its zones
stopped managing, before and after compactions that migrate balloon pages.

Compaction migrates a page within its zone, so within its node: these
migrations keep a node's count where the page is. A migration to another
node (memory offlining, alloc_contig_range) would leave NR_BALLOON_PAGES on
the old node, as balloon_page_migrate() never moves it; nothing in these
guests makes one. Needs CONFIG_NUMA: the arm64 lane's kernel has it
(.config.arm64.fragment), the x86_64 kernels do not."""

import re
import sys
import time

import pytest

from conftest import FLAVOUR, guest_mem
from guest import ARCH, PAGE, image_dir
from test_balloon import MOVE_TIMEOUT, balloon_counters, scatter_balloon

GUEST_MEM = "2G"
COMPACTIONS = 3
KPF_OFFLINE = 23  # include/uapi/linux/kernel-page-flags.h


def _node_mib():
    """Half the guest's RAM (RB_GUEST_MEM may change it), in MiB."""
    mem = guest_mem(sys.modules[__name__])
    n, unit = int(mem[:-1]), mem[-1].upper()
    return n * {"G": 1024, "M": 1}[unit] // 2


QEMU_EXTRA = (
    "-object", f"memory-backend-ram,id=mem0,size={_node_mib()}M",
    "-object", f"memory-backend-ram,id=mem1,size={_node_mib()}M",
    "-numa", "node,nodeid=0,cpus=0,memdev=mem0",
    "-numa", "node,nodeid=1,cpus=1,memdev=mem1",
)

pytestmark = pytest.mark.skipif(
    ARCH == "x86_64", reason="the x86_64 kernels have no CONFIG_NUMA (make check ARCH=arm64)")


def test_the_kernel_has_numa():
    assert "CONFIG_NUMA=y\n" in (image_dir(FLAVOUR) / ".config").read_text()


def nodes(guest):
    """Per node: (pages in the balloon by its `Balloon:` line, managed pages
    of its zones, PageOffline pages in its zones), after the per-CPU
    counters are folded."""
    out = guest.sh("echo 1 > /proc/sys/vm/stat_refresh; "
                   "grep -H Balloon: /sys/devices/system/node/node*/meminfo; "
                   "grep -E '^Node|^ +(managed|spanned|start_pfn:)' /proc/zoneinfo")
    balloon, managed, zones, node = {}, {}, [], None
    for line in out.splitlines():
        if m := re.match(r".*/node(\d+)/meminfo:Node \d+ Balloon: +(\d+) kB", line):
            balloon[int(m[1])] = int(m[2]) * 1024 // PAGE
        elif m := re.match(r"Node (\d+), zone", line):
            node = int(m[1])
            zones.append([node, 0, 0])
        elif m := re.match(r" +managed +(\d+)", line):
            managed[node] = managed.get(node, 0) + int(m[1])
        elif m := re.match(r" +spanned +(\d+)", line):
            zones[-1][2] = int(m[1])
        elif m := re.match(r" +start_pfn: +(\d+)", line):
            zones[-1][1] = int(m[1])
    assert balloon.keys() == managed.keys(), out
    offline = dict.fromkeys(balloon, 0)
    for n, start, spanned in zones:
        if spanned:
            offline[n] += int(guest.sh(
                f"od -An -v -t u8 -j {start * 8} -N {spanned * 8} /proc/kpageflags | "
                f"awk '{{for (i = 1; i <= NF; i++) if (int($i / {1 << KPF_OFFLINE}) % 2) n++}}"
                f" END {{print n + 0}}'", timeout=300))
    return {n: (balloon[n], managed[n], offline[n]) for n in balloon}


def settled_nodes(guest, timeout=30):
    """nodes(), once every node's `Balloon:` line equals its PageOffline
    count: a page being migrated is in a balloon twice for a moment (the new
    one inserted, the old one not yet freed), and kcompactd may be
    migrating while the test reads. A miscount stays; a migration ends."""
    deadline = time.monotonic() + timeout
    while True:
        now = nodes(guest)
        if all(b == o for b, _, o in now.values()) or time.monotonic() > deadline:
            return now
        time.sleep(1)


def test_balloon_pages_counted_per_node_through_compaction(driver, guest):
    """A balloon with pages on both nodes, migrated by repeated compaction:
    each node's `Balloon:` line is the number of its pages in the balloon,
    the lines add up to nr_balloon_pages and to the balloon's size, and on
    each node the zones' managed pages plus the node's balloon pages stay
    what the node managed before the balloon; a full deflate gives every
    node and MemTotal back."""
    ram = guest.ram_bytes()
    mem0 = guest.meminfo()["MemTotal"]
    base = nodes(guest)
    assert len(base) == 2 and all(b == 0 and o == 0 for b, _, o in base.values()), base
    size = scatter_balloon(guest)
    migrated = 0
    for i in range(COMPACTIONS + 1):
        if i:
            before = balloon_counters(guest)["balloon_migrate"]
            guest.sh("echo 1 > /proc/sys/vm/compact_memory", timeout=600)
            migrated += balloon_counters(guest)["balloon_migrate"] - before
        now = settled_nodes(guest)
        c = balloon_counters(guest)
        print(f"after {i} compactions: nodes {now}, vmstat {c}")
        assert sum(b for b, _, _ in now.values()) == c["nr_balloon_pages"] == size // PAGE
        for n, (b, m, o) in now.items():
            assert b == o, f"node {n}: Balloon: says {b} pages, {o} pages are in a balloon"
            assert b + m == base[n][1], f"node {n}: {b} balloon + {m} managed, " \
                f"{base[n][1]} managed before"
        assert guest.actual() == ram - size
    assert all(b > 0 for b, _, _ in now.values()), f"the balloon missed a node: {now}"
    assert migrated > 0, "compaction moved no balloon page"
    print(f"balloon pages migrated: {migrated}")
    guest.balloon(ram)
    guest.wait_actual(ram, timeout=MOVE_TIMEOUT)
    assert nodes(guest) == base
    assert guest.meminfo()["MemTotal"] == mem0

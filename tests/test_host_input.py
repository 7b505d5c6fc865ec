# SPDX-License-Identifier: GPL-2.0
"""Hostile or hurried input from the host, for every driver in
conftest.DRIVERS: a burst of target changes, statistics polled as often as
QEMU allows. The guest lives on, nothing is splatted, no page is lost."""

import time

from guest import MiB, PAGE


def test_hundred_targets_at_once(driver, guest):
    """100 targets sent back to back: the balloon ends at the last one, and
    back at full size every page is the guest's again."""
    ram = guest.ram_bytes()
    mem0 = guest.meminfo()["MemTotal"]
    targets = [ram - (i * 37 % 16 + 1) * 32 * MiB for i in range(100)]
    t0 = time.monotonic()
    for t in targets:
        guest.balloon(t)
    print(f"100 targets sent in {time.monotonic() - t0:.2f} s")
    guest.wait_actual(targets[-1], timeout=300)
    assert guest.vmstat()["nr_balloon_pages"] == (ram - targets[-1]) // PAGE
    assert guest.run("echo alive").out == "alive\n"
    guest.balloon(ram)
    guest.wait_actual(ram, timeout=300)
    assert guest.vmstat()["nr_balloon_pages"] == 0
    assert guest.meminfo()["MemTotal"] == mem0


def test_stats_polled_every_second_while_resizing(driver, guest):
    """With the smallest polling interval the host gets fresh statistics
    every poll, also while the balloon moves."""
    ram = guest.ram_bytes()
    guest.set_stats_interval(1)
    try:
        seen = set()
        deadline = time.monotonic() + 12
        size = 0
        while time.monotonic() < deadline:
            size = 256 * MiB if size == 0 else 0
            guest.balloon(ram - size)
            guest.wait_actual(ram - size, timeout=300)
            seen.add(guest.guest_stats()["last-update"])
            time.sleep(0.5)
        print(f"distinct statistics updates seen: {len(seen)}")
        assert len(seen) >= 4
    finally:
        guest.set_stats_interval(0)
    guest.balloon(ram)
    guest.wait_actual(ram, timeout=300)
    assert guest.run("echo alive").out == "alive\n"


def test_stats_match_the_guest_counters(driver, guest):
    """Every statistic QEMU shows agrees with the guest's own /proc/vmstat
    and /proc/meminfo, read right after the update."""
    guest.set_stats_interval(1)
    try:
        first = guest.guest_stats()["last-update"]
        deadline = time.monotonic() + 60
        while guest.guest_stats()["last-update"] <= first:
            assert time.monotonic() < deadline, "statistics never updated"
            time.sleep(0.2)
        st = guest.guest_stats()["stats"]
        v, m = guest.vmstat(), guest.meminfo()
    finally:
        guest.set_stats_interval(0)
    print({k: val for k, val in st.items()})
    # Event counters only grow: the host's value is at most the later one.
    assert st["stat-swap-in"] == v["pswpin"] * PAGE
    assert st["stat-swap-out"] == v["pswpout"] * PAGE
    assert 0 < st["stat-minor-faults"] <= v["pgfault"]
    assert st["stat-major-faults"] <= v["pgmajfault"]
    assert st["stat-total-memory"] == m["MemTotal"] * 1024
    caches = (m["Cached"] + m["Buffers"] + m["SwapCached"]) * 1024
    assert abs(st["stat-disk-caches"] - caches) < 64 * MiB
    for name, key in (("stat-htlb-pgalloc", "htlb_buddy_alloc_success"),
                      ("stat-htlb-pgfail", "htlb_buddy_alloc_fail")):
        if key in v:
            assert st[name] == v[key]

# SPDX-License-Identifier: GPL-2.0
"""Balloon behaviour, driven from the host over QMP and observed in the
guest. Parametrised over the drivers in conftest.DRIVERS: the C
virtio_balloon.ko is the reference every other driver must match."""

import time

import pytest

from guest import FRAME, MiB, PAGE, QMPError

# Generous: a KASAN guest under TCG inflates at about 300 MiB/s.
MOVE_TIMEOUT = 300


def balloon_counters(guest):
    v = guest.vmstat()
    return {k: v[k] for k in ("nr_balloon_pages", "balloon_inflate",
                              "balloon_deflate", "balloon_migrate",
                              "pgmigrate_success")}


def mib_floor(n):
    return n // MiB * MiB


def test_inflate_deflate_targets(driver, guest):
    """QMP `actual` reaches each target; the balloon counters and MemTotal
    move by exactly the balloon's change."""
    ram = guest.ram_bytes()
    avail = guest.meminfo()["MemAvailable"] * 1024
    mem0 = guest.meminfo()["MemTotal"]
    prev = balloon_counters(guest)
    assert prev["nr_balloon_pages"] == 0
    size_prev = 0
    for size in (mib_floor(avail // 4), mib_floor(avail // 2),
                 mib_floor(avail // 8), 0):
        target = ram - size
        guest.balloon(target)
        actual, secs = guest.wait_actual(target, timeout=MOVE_TIMEOUT)
        print(f"target {target // MiB} MiB reached in {secs:.2f} s")
        c = balloon_counters(guest)
        pages = size // PAGE
        assert c["nr_balloon_pages"] == pages
        grow = max(0, size - size_prev) // PAGE
        shrink = max(0, size_prev - size) // PAGE
        assert c["balloon_inflate"] - prev["balloon_inflate"] == grow
        assert c["balloon_deflate"] - prev["balloon_deflate"] == shrink
        # Without deflate-on-oom every balloon page leaves MemTotal.
        assert mem0 - guest.meminfo()["MemTotal"] == size // 1024
        prev, size_prev = c, size


def round_up(n, to):
    return -(-n // to) * to


def test_target_between_pages(driver, guest):
    """Targets that are not a whole number of pages (of 64 KiB on arm64, 16
    of the device's 4 KiB frames): the balloon is rounded up to whole pages,
    as C rounds it, on the way up and on the way down, and then stays put
    instead of inflating and deflating a page for ever."""
    ram = guest.ram_bytes()
    for size in (256 * MiB + 5 * FRAME, 64 * MiB + 9 * FRAME, 3 * FRAME):
        want = round_up(size, PAGE)
        guest.balloon(ram - size)
        actual, secs = guest.wait_actual(ram - want, timeout=MOVE_TIMEOUT)
        c = balloon_counters(guest)
        assert c["nr_balloon_pages"] * PAGE == want
        time.sleep(2)
        assert guest.actual() == ram - want
        # Not the migration counters: kcompactd may move balloon pages.
        moved = balloon_counters(guest)
        assert all(moved[k] == c[k] for k in
                   ("nr_balloon_pages", "balloon_inflate", "balloon_deflate")), \
            f"the balloon kept moving: {c} then {moved}"
        print(f"target {size // FRAME} frames: balloon {want // FRAME} frames "
              f"({want // PAGE} pages) in {secs:.2f} s")
    guest.balloon(ram)
    guest.wait_actual(ram, timeout=MOVE_TIMEOUT)
    assert balloon_counters(guest)["nr_balloon_pages"] == 0


def scatter_balloon(guest):
    """Inflates a balloon whose pages lie scattered between free pages, for
    compaction to migrate; returns its size in bytes. Held pages with a hole
    every third page; the balloon fills the holes, then the holder exits and
    leaves free pages between balloon pages."""
    ram = guest.ram_bytes()
    avail = guest.meminfo()["MemAvailable"] * 1024
    guest.sh(f"fragment {avail * 6 // 10 // MiB} >/tmp/frag.out 2>&1 & "
             "echo $! >/tmp/frag.pid; "
             "while ! grep -q ready /tmp/frag.out; do sleep 0.2; done",
             timeout=600)
    free = guest.meminfo()["MemFree"] * 1024
    size = mib_floor(free - 256 * MiB)
    guest.balloon(ram - size)
    guest.wait_actual(ram - size, timeout=MOVE_TIMEOUT)
    guest.sh("kill $(cat /tmp/frag.pid); "
             "while kill -0 $(cat /tmp/frag.pid) 2>/dev/null; do sleep 0.2; done")
    return size


def test_compaction_migrates_balloon_pages(driver, guest):
    """Balloon pages scattered between free pages are migrated by
    /proc/sys/vm/compact_memory; migration leaves the balloon's size alone."""
    ram = guest.ram_bytes()
    size = scatter_balloon(guest)
    before = balloon_counters(guest)
    guest.sh("echo 1 > /proc/sys/vm/compact_memory", timeout=600)
    after = balloon_counters(guest)
    migrated = after["balloon_migrate"] - before["balloon_migrate"]
    print(f"balloon pages migrated: {migrated}")
    assert migrated > 0
    assert after["pgmigrate_success"] - before["pgmigrate_success"] >= migrated
    assert after["nr_balloon_pages"] == before["nr_balloon_pages"] == size // PAGE
    assert after["balloon_inflate"] == before["balloon_inflate"]
    assert after["balloon_deflate"] == before["balloon_deflate"]
    assert guest.actual() == ram - size


def test_unload_returns_every_page(driver, guest):
    """rmmod with an inflated balloon gives every page back to the guest and
    tells the host."""
    ram = guest.ram_bytes()
    mem0 = guest.meminfo()["MemTotal"]
    free0 = guest.free_pages()
    size = mib_floor(guest.meminfo()["MemAvailable"] * 1024 // 3)
    guest.balloon(ram - size)
    guest.wait_actual(ram - size, timeout=MOVE_TIMEOUT)
    assert balloon_counters(guest)["nr_balloon_pages"] == size // PAGE
    driver.unload()
    assert balloon_counters(guest)["nr_balloon_pages"] == 0
    assert guest.meminfo()["MemTotal"] == mem0
    # Free pages back within 16 MiB (slab and page cache move a little). More
    # may be free than before: the inflated balloon's pressure can shrink
    # caches (once 32 MiB more, on the C driver's run), which loses nothing;
    # far more would be pages freed twice or never taken.
    lost = free0 - guest.free_pages()
    assert lost * PAGE < 16 * MiB, f"{lost} pages not back after unload"
    assert -lost * PAGE < 64 * MiB, f"{-lost} pages more free after unload than before"
    assert guest.actual() == ram
    guest.balloon(ram)


def test_target_above_ram(driver, guest):
    """A target above guest RAM is clamped by QEMU to RAM: the balloon
    deflates completely and the guest carries on."""
    ram = guest.ram_bytes()
    guest.balloon(ram - 512 * MiB)
    guest.wait_actual(ram - 512 * MiB, timeout=MOVE_TIMEOUT)
    guest.balloon(4 * ram)
    guest.wait_actual(ram, timeout=MOVE_TIMEOUT)
    assert balloon_counters(guest)["nr_balloon_pages"] == 0
    assert guest.run("echo alive").out == "alive\n"


def test_qmp_rejects_zero_target(guest):
    """QMP refuses a zero target before it reaches the guest."""
    with pytest.raises(QMPError, match="expects a size"):
        guest.balloon(0)
    assert guest.actual() == guest.ram_bytes()
    assert guest.run("echo alive").out == "alive\n"


def test_guest_stats(driver, guest):
    """The host polls the stats queue; the values match the guest's own
    /proc/meminfo (total exactly, free within what a moment's drift moves)."""
    guest.set_stats_interval(1)
    try:
        first = guest.guest_stats()["last-update"]
        deadline = time.monotonic() + 60
        while True:
            st = guest.guest_stats()
            if st["last-update"] > first and st["stats"]["stat-total-memory"] > 0:
                break
            assert time.monotonic() < deadline, f"stats never updated: {st}"
            time.sleep(0.5)
        m = guest.meminfo()
        stats = st["stats"]
        assert stats["stat-total-memory"] == m["MemTotal"] * 1024
        assert abs(stats["stat-free-memory"] - m["MemFree"] * 1024) < 64 * MiB
        assert abs(stats["stat-available-memory"] - m["MemAvailable"] * 1024) < 64 * MiB
    finally:
        guest.set_stats_interval(0)

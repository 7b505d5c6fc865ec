# SPDX-License-Identifier: GPL-2.0
"""Free page hinting (VIRTIO_BALLOON_F_FREE_PAGE_HINT), for every driver in
conftest.DRIVERS, exercised by precopy migrations into a sink that discards
the stream.

While QEMU migrates, it asks the guest for free memory it need not copy: the
driver takes every free 4 MiB block, hints it, and keeps it until QEMU is
done, or until reclaim takes it back through the driver's shrinker. Both
show in the shrinker's debugfs files, in MemFree, and in how many pages QEMU
sends."""

import time

import pytest

from guest import MiB

BALLOON_OPTS = "free-page-hint=on,iothread=iot0"
QEMU_EXTRA = ("-object", "iothread,id=iot0")
BLOCK = 1024          # pages per hinted block (order 10)
SINK = "exec:cat > /dev/null"
SHRINKER = "/sys/kernel/debug/shrinker/virtio-balloon-*"


def held(guest):
    """Pages the driver holds as hints, from its shrinker's count (which
    prints nothing when there are none)."""
    out = guest.sh(f"cat {SHRINKER}/count").split()
    return int(out[-1]) if out else 0


def migration(guest):
    return guest.qmp("query-migrate")


def migrate(guest, bandwidth):
    guest.qmp("migrate-set-parameters", **{"max-bandwidth": bandwidth})
    guest.qmp("migrate", uri=SINK)


def wait_status(guest, statuses, timeout=300):
    deadline = time.monotonic() + timeout
    while (st := migration(guest).get("status")) not in statuses:
        assert time.monotonic() < deadline, f"migration {st}, not {statuses}"
        time.sleep(0.5)
    return migration(guest)


def wait_held(guest, timeout=120):
    """The hint round's count, once it stopped growing."""
    deadline = time.monotonic() + timeout
    last, same = -1, 0
    while same < 3:
        n = held(guest)
        same = same + 1 if n == last and n > 0 else 0
        last = n
        assert time.monotonic() < deadline, f"no stable hint count (last {n})"
        time.sleep(1)
    return last


def wait_none_held(guest, timeout=120):
    deadline = time.monotonic() + timeout
    while (n := held(guest)) != 0:
        assert time.monotonic() < deadline, f"{n} hinted pages never given back"
        time.sleep(0.5)


def test_hints_are_held_until_the_host_is_done(driver, guest):
    assert guest.balloon_features()[3] == "1", "VIRTIO_BALLOON_F_FREE_PAGE_HINT not negotiated"
    assert held(guest) == 0
    free0 = guest.meminfo()["MemFree"]
    # A slow migration: the first pass outlasts the checks.
    migrate(guest, 1 * MiB)
    try:
        n = wait_held(guest)
        assert n % BLOCK == 0, n
        free = guest.meminfo()["MemFree"]
        assert free0 - free >= 0.9 * n * 4, (free0, free, n)
        # The shrinker counts pages, and frees whole blocks: 1025 pages are two.
        c1, c2 = map(int, guest.sh(
            f"d=$(echo {SHRINKER}); c1=$(cat $d/count); echo '0 0 1025' > $d/scan; "
            "c2=$(cat $d/count); echo ${c1##* } ${c2##* }").split())
        assert c1 - c2 >= 2 * BLOCK and (c1 - c2) % BLOCK == 0, (c1, c2)
        # Reclaim takes them all back.
        guest.sh("echo 2 > /proc/sys/vm/drop_caches")
        assert held(guest) == 0
    finally:
        guest.qmp("migrate_cancel")
        wait_status(guest, ("cancelled",))
    wait_none_held(guest)
    assert guest.meminfo()["MemFree"] >= free0 - 64 * MiB // 1024
    assert "Failed to send" not in guest.log()


def complete(guest):
    """Lets the migration run at full speed to completion; resumes the
    guest, which a completed migration leaves paused; returns the RAM
    figures."""
    guest.qmp("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
    done = wait_status(guest, ("completed", "failed", "cancelled"))
    if not guest.qmp("query-status")["running"]:
        guest.qmp("cont")
    assert done["status"] == "completed", done
    return done["ram"]


@pytest.fixture(scope="module")
def baseline(guest):
    """Normal (not zero) pages a migration sends with no driver bound, so no
    hints, after 1 GiB of dirty memory went free."""
    guest.sh("dirty 1024", timeout=300)
    migrate(guest, 1 << 30)
    return complete(guest)["normal"]


def test_hinted_pages_are_not_migrated(baseline, driver, guest):
    """The same migration with the driver: the dirty free memory it hinted
    stays behind."""
    guest.sh("dirty 1024", timeout=300)
    migrate(guest, 1 * MiB)
    try:
        n = wait_held(guest)
        ram = complete(guest)
    finally:
        if migration(guest).get("status") == "active":
            guest.qmp("migrate_cancel")
            wait_status(guest, ("cancelled", "failed", "completed"))
    print(f"hinted {n} pages; sent {ram['normal']} normal pages "
          f"({baseline} without hints) and {ram['duplicate']} zero pages")
    assert n >= (1024 * MiB // 4096) // 2, n
    assert ram["normal"] <= baseline - (1024 * MiB // 4096) // 2, (baseline, ram)
    wait_none_held(guest)


def test_unload_while_hinting_gives_the_blocks_back(driver, guest):
    free0 = guest.meminfo()["MemFree"]
    migrate(guest, 1 * MiB)
    try:
        assert wait_held(guest) > 0
        driver.unload()
        # The shrinker is gone with the driver; the blocks are free memory again.
        assert guest.sh(f"ls -d {SHRINKER} 2>/dev/null || true").strip() == ""
        assert guest.meminfo()["MemFree"] >= free0 - 64 * MiB // 1024
    finally:
        guest.qmp("migrate_cancel")
        wait_status(guest, ("cancelled",))
    driver.load()
    assert held(guest) == 0
    assert "Failed to send" not in guest.log()

# SPDX-License-Identifier: GPL-2.0
"""Power management with an inflated balloon, for both drivers.

- Suspend and resume (pm_test: devices are really frozen and restored, the
  machine does not sleep): everything is deflated on freeze and inflated
  again on restore (the 2012 S4 leak fix), and the statistics queue works
  again after resume.
- The wakeup source: with power/wakeup enabled, the device holds it while
  the balloon moves, and lets it go when the balloon is there.
- Shutdown (reboot -f): the device is quiesced without deflating, and the
  next kernel's driver inflates to the target the host kept."""

import time

from guest import MiB, PAGE

SIZE = 256 * MiB
REBOOT = True
# Deflate-on-OOM and free page reporting: shutdown must quiesce their
# notifier and reporting before the device goes.
BALLOON_OPTS = "deflate-on-oom=on,free-page-reporting=on"
# With deflate-on-oom the balloon's pages stay counted in MemTotal.
MEMTOTAL_DROP = 0


def suspend(guest):
    return guest.run("echo devices > /sys/power/pm_test && "
                     "echo freeze > /sys/power/state; rc=$?; "
                     "echo none > /sys/power/pm_test; exit $rc",
                     timeout=300, check=False)


def wait_stats_update(guest, timeout=120):
    first = guest.guest_stats()["last-update"]
    deadline = time.monotonic() + timeout
    while True:
        st = guest.guest_stats()
        if st["last-update"] > first:
            return st
        assert time.monotonic() < deadline, f"stats never updated: {st}"
        time.sleep(1)


def test_suspend_resume_keeps_the_balloon(driver, guest):
    ram = guest.ram_bytes()
    mem0 = guest.meminfo()["MemTotal"]
    guest.balloon(ram - SIZE)
    guest.wait_actual(ram - SIZE, timeout=300)
    guest.set_stats_interval(1)
    try:
        wait_stats_update(guest)
        v0 = guest.vmstat()
        r = suspend(guest)
        assert r.rc == 0, f"suspend failed ({r.rc}): {r.out}"
        guest.wait_actual(ram - SIZE, timeout=300)
        v = guest.vmstat()
        assert v["nr_balloon_pages"] == SIZE // PAGE
        assert v["balloon_deflate"] - v0["balloon_deflate"] == SIZE // PAGE
        assert v["balloon_inflate"] - v0["balloon_inflate"] == SIZE // PAGE
        assert mem0 - guest.meminfo()["MemTotal"] == MEMTOTAL_DROP
        # The statistics queue was created again and primed.
        st = wait_stats_update(guest)
        assert st["stats"]["stat-total-memory"] == guest.meminfo()["MemTotal"] * 1024
    finally:
        guest.set_stats_interval(0)
    assert guest.run("echo alive").out == "alive\n"
    guest.balloon(ram)
    guest.wait_actual(ram, timeout=300)
    assert guest.vmstat()["nr_balloon_pages"] == 0
    assert guest.meminfo()["MemTotal"] == mem0


def balloon_device(guest):
    """The sysfs directory of the balloon's virtio device."""
    devs = guest.balloon_devices()
    assert len(devs) == 1, devs
    return devs[0]


def wakeup(guest, dev):
    return {k: int(guest.sh(f"cat {dev}/power/wakeup_{k}"))
            for k in ("active_count", "active", "total_time_ms")}


def test_wakeup_source_is_held_while_the_balloon_moves(driver, guest):
    ram = guest.ram_bytes()
    dev = balloon_device(guest)
    assert guest.sh(f"cat {dev}/power/wakeup").strip() == "disabled"
    guest.sh(f"echo enabled > {dev}/power/wakeup")
    try:
        w0 = wakeup(guest, dev)
        guest.balloon(ram - SIZE)
        guest.wait_actual(ram - SIZE, timeout=300)
        guest.balloon(ram)
        guest.wait_actual(ram, timeout=300)
        deadline = time.monotonic() + 30
        while (w := wakeup(guest, dev))["active"]:
            assert time.monotonic() < deadline, f"wakeup source still held: {w}"
            time.sleep(0.5)
        # One activation per resize: held from the config change until the
        # balloon reached the target, not once per step.
        assert w["active_count"] - w0["active_count"] == 2, (w0, w)
        assert w["total_time_ms"] > w0["total_time_ms"], (w0, w)
    finally:
        guest.sh(f"echo disabled > {dev}/power/wakeup")


def test_shutdown_keeps_the_target_for_the_next_kernel(driver, guest):
    ram = guest.ram_bytes()
    guest.balloon(ram - SIZE)
    guest.wait_actual(ram - SIZE, timeout=300)
    # The console of the shutdown is checked for reports like any other.
    log = guest.reboot()
    assert "reboot: Restarting system" in log
    driver.loaded = False
    mem0 = guest.meminfo()["MemTotal"]
    driver.load()
    guest.wait_actual(ram - SIZE, timeout=300)
    assert guest.vmstat()["nr_balloon_pages"] == SIZE // PAGE
    assert mem0 - guest.meminfo()["MemTotal"] == MEMTOTAL_DROP

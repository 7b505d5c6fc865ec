# SPDX-License-Identifier: GPL-2.0
"""A 1 MiB target: the host asks for nearly all of the guest's memory.

With deflate-on-oom the driver gives pages back through the OOM notifier
whenever the guest runs out, so the guest lives on with no OOM kill. Without
it the C driver keeps taking every page that frees up (it retries every
200 ms) until the OOM killer has killed every process and the kernel panics:
that test is an expected failure for the C driver (known weakness R7 in
balloon-reference.md), kept so that the result is on record. The Rust
driver does better: it never inflates into the guest's last 1/128 of
memory (at least 32 MiB of MemAvailable), so the balloon stops short of the
target and the guest lives, with no OOM kill.
"""

import time

import pytest

from guest import MiB, GuestError

BALLOON_OPTS = "deflate-on-oom=on"


def test_1mib_target_with_deflate_on_oom(driver, guest):
    ram = guest.ram_bytes()
    v0 = guest.vmstat()
    mem0 = guest.meminfo()["MemTotal"]
    guest.balloon(MiB)
    actual, secs = guest.wait_actual(MiB, timeout=900, settle=20)
    print(f"actual settled at {actual // MiB} MiB after {secs:.1f} s")
    assert actual < ram // 2
    for _ in range(3):
        assert guest.run("echo alive", timeout=60).out == "alive\n"
    v = guest.vmstat()
    assert v["oom_kill"] == v0["oom_kill"]
    # With deflate-on-oom ballooned pages stay part of MemTotal.
    assert guest.meminfo()["MemTotal"] == mem0
    guest.balloon(ram)
    guest.wait_actual(ram, timeout=300)
    assert guest.vmstat()["nr_balloon_pages"] == 0


@pytest.mark.checks_splats
@pytest.mark.parametrize("which", [
    pytest.param("c", marks=pytest.mark.xfail(
        strict=True, reason="the C driver starves the guest until it panics")),
    "rust",
])
def test_1mib_target_without_deflate_on_oom(which):
    from conftest import DRIVERS, boot
    g = boot(f"absurd-{which}")
    try:
        start = g.log_size()
        g.sh(f"insmod /modules/{DRIVERS[which]}.ko")
        ram = g.ram_bytes()
        g.balloon(MiB)
        try:
            actual, secs = g.wait_actual(MiB, timeout=900, settle=20)
            print(f"actual settled at {actual // MiB} MiB after {secs:.1f} s")
            for _ in range(3):
                assert g.run("echo alive", timeout=60).out == "alive\n"
                time.sleep(2)
            assert g.vmstat()["oom_kill"] == 0
            g.balloon(ram)
            g.wait_actual(ram, timeout=300)
        except (GuestError, TimeoutError) as e:
            pytest.fail(f"guest did not survive: {e}")
        assert not g.splats(start)
    finally:
        g.close()

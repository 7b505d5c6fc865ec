# SPDX-License-Identifier: GPL-2.0
"""Free page reporting (VIRTIO_BALLOON_F_REPORTING), for every driver in
conftest.DRIVERS: memory the guest frees goes back to the host, which shows
as QEMU's resident set shrinking."""

import time

import pytest

from conftest import DRIVERS, boot
from guest import ARCH, PAGE, MiB

BALLOON_OPTS = "free-page-reporting=on"
HOG = 1024 * MiB


def qemu_rss(guest):
    with open(f"/proc/{guest.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for QEMU")


def test_freed_memory_goes_back_to_the_host(driver, guest):
    assert guest.balloon_features()[5] == "1", "VIRTIO_BALLOON_F_REPORTING not negotiated"
    # Touch 1 GiB (dd's buffer) and free it when dd exits.
    guest.sh(f"dd if=/dev/zero of=/dev/null bs={HOG // MiB}M count=1 2>/dev/null",
             timeout=300)
    peak = qemu_rss(guest)
    deadline = time.monotonic() + 180
    while qemu_rss(guest) > peak - HOG // 2:
        assert time.monotonic() < deadline, \
            f"QEMU RSS {qemu_rss(guest) // MiB} MiB, {peak // MiB} MiB after the hog"
        time.sleep(1)
    print(f"QEMU RSS {peak // MiB} MiB after the hog, {qemu_rss(guest) // MiB} MiB now")
    assert guest.run("echo alive").out == "alive\n"


# The order each driver registers with the page reporting core. The core
# keeps the first registration's order for good, so each driver gets a fresh
# guest. With 64 KiB pages C asks for order 5 (2 MiB), as a pageblock there is
# 512 MiB; with 4 KiB pages both drivers leave the choice to the core.
@pytest.mark.skipif(PAGE == 4096, reason="4 KiB pages: both drivers pass no order")
@pytest.mark.parametrize("drv", list(DRIVERS))
def test_reporting_order(drv):
    g = boot(f"reporting-order-{drv}", mem="1G", balloon=BALLOON_OPTS)
    try:
        param = "/sys/module/page_reporting/parameters/page_reporting_order"
        assert g.sh(f"cat {param}").strip() == "-1"
        g.sh(f"insmod /modules/{DRIVERS[drv]}.ko")
        order = int(g.sh(f"cat {param}"))
        print(f"{ARCH}, {PAGE // 1024} KiB pages: {drv} registers order {order}")
        assert order == 5
        assert g.balloon_features()[5] == "1"
        g.sh(f"rmmod {DRIVERS[drv]}")
    finally:
        g.close()

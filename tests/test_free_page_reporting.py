# SPDX-License-Identifier: GPL-2.0
"""Free page reporting (VIRTIO_BALLOON_F_REPORTING), for every driver in
conftest.DRIVERS: memory the guest frees goes back to the host, which shows
as QEMU's resident set shrinking."""

import time

from guest import MiB

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

# SPDX-License-Identifier: GPL-2.0
"""What tests/test_legacy_pci.py and tests/test_transitional_pci.py share:
test_balloon's targets, unload and statistics tests, run again on a guest
whose virtio-balloon-pci device has another transport, and a check that
both drivers negotiate the same feature bits there. A failure of an imported
test is reported at its line in test_balloon.py, under the importing module's
name."""

from conftest import DRIVERS
from guest import MiB, PAGE
# Collected again by each module that imports them, on its own guest.
from test_balloon import (  # noqa: F401
    test_guest_stats,
    test_inflate_deflate_targets,
    test_unload_returns_every_page,
)

VERSION_1 = 32


def check_features_match(guest, modern):
    """Load each driver in turn: both negotiate the same bits, and the
    device is driven through the interface the module says (VERSION_1 only
    through the modern one)."""
    ram = guest.ram_bytes()
    guest.balloon(ram)
    seen = {}
    for name, module in DRIVERS.items():
        guest.sh(f"insmod /modules/{module}.ko")
        try:
            seen[name] = guest.balloon_features()
            # The driver works on this transport, not only binds.
            guest.balloon(ram - 64 * MiB)
            guest.wait_actual(ram - 64 * MiB, timeout=300)
            assert guest.vmstat()["nr_balloon_pages"] == 64 * MiB // PAGE
            guest.balloon(ram)
            guest.wait_actual(ram, timeout=300)
        finally:
            guest.sh(f"rmmod {module}")
    print(seen)
    assert seen["rust"] == seen["c"]
    assert seen["c"][VERSION_1] == ("1" if modern else "0")

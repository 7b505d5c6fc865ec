# SPDX-License-Identifier: GPL-2.0
"""Fixtures shared by the guest tests.

Every test fails when a guest log shows a kernel warning or error report
during the test (see guest.SPLAT); the failure quotes the report.
"""

import os

import pytest

from guest import MiB, Guest, GuestError

# Balloon drivers under test: parameter id -> module name in /modules.
DRIVERS = {"c": "virtio_balloon", "rust": "rust_virtio_balloon"}

FLAVOUR = os.environ.get("RB_FLAVOUR", "debug")
# Guest RAM: KASAN's shadow (1/8 of it), boot, inflation and compaction all
# scale with it, and so does the suite's time. A module whose tests size
# everything from the guest's own figures sets GUEST_MEM = "1G"; RB_GUEST_MEM
# overrides both.
GUEST_MEM = os.environ.get("RB_GUEST_MEM", "2G")


def guest_mem(module=None):
    """The RAM of a guest booted for `module`."""
    return os.environ.get("RB_GUEST_MEM") or getattr(module, "GUEST_MEM", GUEST_MEM)


def _all_guests():
    return list(Guest.instances)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "checks_splats: the test asserts on kernel reports itself")


@pytest.fixture(autouse=True)
def no_splat(request):
    """Fail the test if any guest logged a kernel splat while it ran."""
    start = {g: g.log_size() for g in _all_guests()}
    yield
    if request.node.get_closest_marker("checks_splats"):
        return
    reports = []
    for g in _all_guests():
        if g.alive():
            try:
                g.sync_log()
            except (GuestError, TimeoutError):
                pass
        for hit in g.splats(start.get(g, 0)):
            reports.append(f"--- {g.name} ({g.console}):\n{hit}")
    if reports:
        pytest.fail("kernel report in the guest log:\n" + "\n".join(reports),
                    pytrace=False)


def boot(name, **kw):
    kw.setdefault("flavour", FLAVOUR)
    kw.setdefault("mem", GUEST_MEM)
    g = Guest(name=name, **kw)
    g.start()
    hits = g.splats()
    if hits:
        g.close()
        pytest.fail(f"kernel report while booting {name}:\n" + "\n".join(hits),
                    pytrace=False)
    return g


@pytest.fixture(scope="module")
def guest(request):
    """A booted debug guest with a virtio-balloon device, shared by a module.
    A module sets BALLOON_OPTS to give the device other properties, and
    REBOOT = True for a guest that restarts on reboot instead of exiting, and
    QEMU_EXTRA for more QEMU arguments (objects the device refers to)."""
    g = boot(request.module.__name__.removeprefix("test_"),
             mem=guest_mem(request.module),
             balloon=getattr(request.module, "BALLOON_OPTS", ""),
             reboot=getattr(request.module, "REBOOT", False),
             extra=getattr(request.module, "QEMU_EXTRA", ()))
    yield g
    g.close()


class Driver:
    """A balloon driver module loaded in a guest."""

    def __init__(self, guest, module):
        self.guest = guest
        self.module = module
        self.loaded = False

    def load(self):
        self.guest.sh(f"insmod /modules/{self.module}.ko")
        self.loaded = True

    def unload(self):
        self.guest.sh(f"rmmod {self.module}")
        self.loaded = False


@pytest.fixture(params=list(DRIVERS))
def driver(request, guest):
    """The balloon driver under test, loaded with the host target at full
    RAM; unloaded again (after a full deflate) at the end."""
    ram = guest.ram_bytes()
    guest.balloon(ram)
    d = Driver(guest, DRIVERS[request.param])
    d.load()
    yield d
    if d.loaded and guest.alive():
        guest.balloon(ram)
        guest.wait_actual(ram, timeout=300)
        d.unload()

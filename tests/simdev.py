# SPDX-License-Identifier: GPL-2.0
"""The simulated virtio-balloon device (drivers/vdpa/vdpa_sim/vdpa_sim_balloon.c)
as the tests drive it: created through the vDPA management interface by the
guest helper `vdpa`, bound through virtio_vdpa, controlled and read through
/sys/kernel/debug/vdpasim_balloon/NAME/{control,state}."""

import time

from guest import GuestError

F_MUST_TELL_HOST = 1 << 0
F_STATS_VQ = 1 << 1
F_DEFLATE_ON_OOM = 1 << 2
F_FREE_PAGE_HINT = 1 << 3
F_PAGE_POISON = 1 << 4
F_REPORTING = 1 << 5
F_ANY_LAYOUT = 1 << 27
F_VERSION_1 = 1 << 32
BASE = F_VERSION_1 | F_ANY_LAYOUT

FRAME = 4096
STAT_MEMTOT = 5

# In dependency order; those built in are not there and are skipped.
MODULES = ("iova", "vhost_iotlb", "vringh", "vdpa", "vdpa_sim",
           "vdpa_sim_balloon", "virtio_vdpa")


def load_modules(guest):
    guest.sh("for m in " + " ".join(MODULES) + "; do "
             "[ ! -f /modules/$m.ko ] || grep -q \"^$m \" /proc/modules || "
             "insmod /modules/$m.ko || exit 1; done")


class SimBalloon:
    """One simulated balloon device in a guest."""

    def __init__(self, guest, features, name="sb0", delay_us=0):
        self.guest = guest
        self.name = name
        self.dir = f"/sys/kernel/debug/vdpasim_balloon/{name}"
        load_modules(guest)
        guest.sh(f"vdpa add vdpasim_balloon {name} {features | BASE:#x}")
        self.exists = True
        if delay_us:
            self.ctl(f"delay_us {delay_us}")

    def ctl(self, cmd):
        self.guest.sh(f"echo '{cmd}' > {self.dir}/control")

    def state(self):
        out = self.guest.sh(f"cat {self.dir}/state")
        res = {}
        for line in out.splitlines():
            k, v = line.split(None, 1)
            try:
                res[k] = int(v, 0)
            except ValueError:
                res[k] = v
        return res

    def delete(self, timeout=120):
        self.guest.sh(f"vdpa del {self.name}", timeout=timeout)
        self.exists = False

    def target(self, frames):
        self.ctl(f"num_pages {frames}")

    def wait(self, cond, what, timeout=300):
        """Polls the state until cond(state) holds; returns that state."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state()
            if cond(st):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached within {timeout} s: {st}")
            if not self.guest.alive():
                raise GuestError(f"QEMU died while waiting for {what}")
            time.sleep(0.1)

    def wait_actual(self, frames, timeout=300):
        """Waits until the driver reports `frames` in the balloon."""
        t0 = time.monotonic()
        st = self.wait(lambda s: s["actual"] == frames and s["frames_held"] == frames,
                       f"actual {frames}", timeout)
        return st, time.monotonic() - t0

    def wait_settled(self, timeout=900, settle=20, stop=None):
        """Waits until `actual` has not moved for `settle` seconds, or until
        stop(state); returns the state then and the seconds it took."""
        t0 = time.monotonic()
        last, since = None, t0
        while True:
            st = self.state()
            now = time.monotonic()
            if stop and stop(st):
                return st, now - t0
            if st["actual"] != last:
                last, since = st["actual"], now
            elif now - since >= settle:
                return st, now - t0
            if now - t0 > timeout:
                raise TimeoutError(f"actual still moving after {timeout} s: {st}")
            if not self.guest.alive():
                raise GuestError("QEMU died while the balloon settled")
            time.sleep(0.5)

    def assert_clean(self, st=None):
        """The guest kept every promise: no protocol error, no frame written
        while in the balloon."""
        st = st or self.state()
        assert st["protocol_errors"] == 0, st
        assert st["pattern_violations"] == 0, st
        return st
